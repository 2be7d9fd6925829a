"""Shared fixtures: the real SmolLM2 tokenizer and model, a tiny random Llama, the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from rlprompt.errors import UserError


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared few-shot data folder ($RLPROMPT_DATA or ../shared/data).

    Without it the data tests are skipped, except under CI (CI=true), where that is a failure.
    """
    from rlprompt.tasks import resolve_data_dir

    try:
        return resolve_data_dir()
    except UserError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2-135M tokenizer (from the embedded model, dequantized once into the cache)."""
    from transformers import AutoTokenizer

    from rlprompt.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="session")
def tiny_lm(smol_tokenizer):
    """(model, tokenizer): a tiny random-weight Llama on the SmolLM2 vocabulary, frozen, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, vocab_size=len(smol_tokenizer),
                         max_position_embeddings=512, pad_token_id=smol_tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return model, smol_tokenizer


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer): the real embedded SmolLM2-135M in fp32 on the CPU."""
    from rlprompt.models import load_lm

    return load_lm("smollm2-135m", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer):
    """A folder holding a tiny random Llama and the SmolLM2 tokenizer, loadable by path."""
    from tests.rl_helpers import fresh_tiny_lm

    path = tmp_path_factory.mktemp("tiny-llama")
    fresh_tiny_lm(smol_tokenizer).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path
