"""A default run prints no warning: the forward passes use the installed transformers' argument names."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rlprompt.policy import PromptPolicy
from rlprompt.scorer import CachedScorer, cache_kwargs
from tests.rl_helpers import fresh_tiny_lm

REPO = Path(__file__).resolve().parent.parent
WARNING = re.compile(r"\w*Warning\b|^warning\b|\bwarn(ing)?:", re.IGNORECASE | re.MULTILINE)


def test_cache_keyword_is_the_one_the_model_takes(tiny_lm):
    import inspect

    model, _ = tiny_lm
    (name,) = cache_kwargs(model.base_model, None)
    assert name in inspect.signature(type(model.base_model).forward).parameters


def test_scoring_and_sampling_raise_no_warning(tiny_lm, smol_tokenizer):
    model, tok = tiny_lm
    policy = PromptPolicy(fresh_tiny_lm(smol_tokenizer), smol_tokenizer, prompt_length=3, top_k=16, adaptor_hidden=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CachedScorer(model, tok, "{sentence} {prompt} It was", [" terrible", " great"]).score(
            ["Overall", "In short, it was"], ["a fine film", "dull"])
        policy.sample(2)


@pytest.mark.slow
def test_train_py_prints_no_warning(tiny_model_dir, data_dir, tmp_path):
    """train.py with its defaults (task precision auto, test scoring included), tiny models, 2 steps."""
    proc = subprocess.run([sys.executable, "train.py", "--task", "sst2", "--data-dir", str(data_dir),
                           "--policy-model", str(tiny_model_dir), "--task-model", str(tiny_model_dir),
                           "--steps", "2", "--prompts-per-step", "2", "--eval-every", "1", "--out", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr.replace("\r", "\n")
    assert not WARNING.search(output), WARNING.search(output).string[:3000]
