"""Task LMs other than the policy's: a masked LM (tiny random BERT with a word-level tokenizer built
here) and the second embedded model, Gemma-3-270M."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlprompt.models import is_masked_lm, load_lm
from rlprompt.scorer import CachedScorer, MaskedScorer, NaiveScorer, build_scorer
from rlprompt.tasks import load_task

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "{sentence} {prompt} It was"
VERBALIZERS = [" terrible", " great"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, data_dir):
    """A tiny random BertForMaskedLM and a word-level tokenizer over SST-2's train words, saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    words = sorted({w for e in load_task("sst2", data_dir).train for w in e.text.lower().split()}
                   | {"terrible", "great", "it", "was", "."})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64,
                                       max_position_embeddings=128))
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def test_masked_lm_is_recognised_and_scored_at_the_mask(tiny_bert_dir, data_dir):
    assert is_masked_lm(str(tiny_bert_dir))
    model, tok = load_lm(str(tiny_bert_dir), device="cpu")
    scorer = build_scorer(model, tok, TEMPLATE, VERBALIZERS)
    assert isinstance(scorer, MaskedScorer)
    sentences = [e.text for e in load_task("sst2", data_dir).dev[14:18]]
    prompts = ["", "a great movie indeed", "it"]
    got = scorer.score(prompts, sentences)  # (P, E, V), padded batches
    assert got.shape == (3, 4, 2)
    verbalizer_ids = [tok(w, add_special_tokens=False).input_ids[0] for w in VERBALIZERS]
    for p, prompt in enumerate(prompts):  # reference: each pair alone, unpadded, read at the mask
        for e, sentence in enumerate(sentences):
            enc = tok(scorer.text(prompt, sentence), return_tensors="pt")
            mask_at = (enc.input_ids[0] == tok.mask_token_id).nonzero().item()
            logp = torch.log_softmax(model(**enc).logits[0, mask_at], -1)[verbalizer_ids]
            torch.testing.assert_close(got[p, e], logp, atol=1e-5, rtol=0)
    assert scorer.text("nice", "A film.").endswith("It was [MASK] .")
    scored = scorer.pairs_scored
    assert torch.equal(scorer.score(prompts[:2], sentences), got[:2])  # from the memo
    assert scorer.pairs_scored == scored


@pytest.mark.slow
def test_train_py_with_a_masked_task_model(tiny_bert_dir, tiny_model_dir, data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--task", "sst2", "--data-dir", str(data_dir),
                           "--policy-model", str(tiny_model_dir), "--task-model", str(tiny_bert_dir),
                           "--steps", "2", "--prompts-per-step", "2", "--eval-every", "2", "--skip-test",
                           "--out", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["pairs_scored"] >= 2 * 2 * 32


@pytest.fixture(scope="module")
def gemma():
    return load_lm("gemma3-270m", device="cpu", dtype="fp32")


@pytest.mark.slow
def test_gemma_task_lm_cached_equals_naive(gemma, data_dir):
    model, tok = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM"
    task = load_task("sst2", data_dir)
    sentences = [e.text for e in task.dev[14:18]]
    prompts = ["", task.manual_prompt, "Absolutely"]
    got = CachedScorer(model, tok, task.template, task.verbalizers).score(prompts, sentences)
    ref = NaiveScorer(model, tok, task.template, task.verbalizers).score(prompts, sentences)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_smollm2_policy_prompts_scored_by_gemma(gemma, smol_tokenizer, data_dir):
    """Policy LM ≠ task LM: prompts written in SmolLM2 tokens are decoded to text and scored by Gemma."""
    from envs import PromptClassificationEnv

    model, tok = gemma
    task = load_task("sst2", data_dir)
    scorer = CachedScorer(model, tok, task.template, task.verbalizers)
    decode = lambda ids: smol_tokenizer.decode(ids).strip()  # noqa: E731
    env = PromptClassificationEnv(scorer, task.dev[:8], decode, len(smol_tokenizer), 3)
    rows = [smol_tokenizer(" The film was", add_special_tokens=False).input_ids[:3],
            smol_tokenizer(" I loved it", add_special_tokens=False).input_ids[:3]]
    rewards, accuracies, texts = env.score_tokens(rows)
    assert texts == ["The film was", "I loved it"]
    direct = scorer.score(texts, [e.text for e in task.dev[:8]])
    assert direct.shape == (2, 8, 2) and torch.isfinite(direct).all()
    assert all(0 <= a <= 1 for a in accuracies) and len(set(rewards.tolist())) == 2
