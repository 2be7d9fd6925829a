"""The gradient-guided token search: its loss is the scorer's, its swaps stay allowed, and on the
parity toy it climbs the train reward within its budget, deterministically."""

from __future__ import annotations

import random

import pytest
import torch

from rlprompt.calibration import calibrated
from rlprompt.errors import UserError
from rlprompt.methods import MethodContext
from rlprompt.methods import autoprompt
from rlprompt.scorer import CachedScorer
from rlprompt.tasks import Example
from tests.rl_helpers import ParityTaskLM
from tests.test_methods_discrete import toy_task

TEMPLATE = "Review: {sentence}\n{prompt}\nSentiment:"
VERBALIZERS = [" negative", " positive"]
EXAMPLES = [Example("a fine film", 1), Example("a dull, slow film", 0), Example("so so", 0),
            Example("loved every minute of it", 1)]


def test_slot_loss_is_the_scorers_cross_entropy(tiny_lm):
    model, tok = tiny_lm
    ids = tok("great movie overall", add_special_tokens=False).input_ids
    text = tok.decode(ids).strip()
    labels = torch.tensor([e.label for e in EXAMPLES])
    for mode in ("none", "batch"):
        scorer = calibrated(CachedScorer(model, tok, TEMPLATE, VERBALIZERS), mode, [e.text for e in EXAMPLES])
        logprobs = torch.log_softmax(scorer.score([text], [e.text for e in EXAMPLES])[0], -1)
        want = torch.nn.functional.nll_loss(logprobs, labels)
        gradient = autoprompt.SlotGradient(model, tok, TEMPLATE, VERBALIZERS, calibrate=mode == "batch")
        with torch.enable_grad():
            loss, grad = gradient.loss_and_grad(ids, EXAMPLES)
        assert abs(loss - float(want)) < 1e-4, mode
        assert grad.shape == (len(ids), model.get_input_embeddings().weight.shape[0])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_swaps_change_one_position_to_an_allowed_top_token(smol_tokenizer):
    vocab = len(smol_tokenizer)
    allowed = autoprompt.allowed_tokens(smol_tokenizer, vocab)
    newline = smol_tokenizer("\n", add_special_tokens=False).input_ids[0]
    assert not allowed[newline] and not allowed[smol_tokenizer.eos_token_id] and allowed.sum() > vocab // 2
    grad = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
    grad[:, newline] = -1e9  # the steepest token of all is not allowed
    ids = [100, 200, 300]
    out = autoprompt.swaps(ids, grad, allowed, top_k=8, n=16, rng=random.Random(0))
    assert len(out) == 16 and len({tuple(c) for c in out}) == 16
    top = (-grad).masked_fill(~allowed, float("-inf")).topk(8, -1).indices
    for cand in out:
        changed = [i for i in range(3) if cand[i] != ids[i]]
        assert len(changed) == 1 and cand[changed[0]] in top[changed[0]].tolist()


def test_autoprompt_climbs_the_toy_reward_within_its_budget(tiny_lm):
    model, tok = tiny_lm

    def ctx():
        task = toy_task()
        return MethodContext(task=task, task_model=model, task_tokenizer=tok,
                             scorer=ParityTaskLM(tok, task.train + task.dev + task.test, sharpness=4.0),
                             pair_budget=2000, seed=13,
                             options={"prompt_length": "4", "init": "the cat sat on", "candidates": "8", "top_k": "256",
                                      "grad_batch": "4"})  # 3 of its 4 token ids are odd

    result = autoprompt.run(ctx())
    rounds = result.extra["rounds"]
    assert result.pairs_scored <= 2000
    assert result.extra["stop_reason"] == "no higher train reward for 20 rounds"  # the toy's maximum was reached
    rewards = [r["train_reward"] for r in rounds]
    assert rewards == sorted(rewards) and rewards[-1] > rewards[0]  # a swap is kept only when it scores higher
    assert any(r["improved"] for r in rounds) and result.test_acc is not None
    assert result.prompt_tokens >= 1 and 0 <= result.dev_acc <= 1
    short = ctx()
    short.pair_budget = 300
    assert autoprompt.run(short).extra["stop_reason"] == "budget spent"
    again = autoprompt.run(ctx())
    assert (again.prompt, again.extra["rounds"]) == (result.prompt, rounds)


def test_autoprompt_needs_a_causal_task_lm(smol_tokenizer):
    task = toy_task()
    ctx = MethodContext(task=task, task_model=None, task_tokenizer=smol_tokenizer,
                        scorer=ParityTaskLM(smol_tokenizer, task.train + task.dev + task.test), pair_budget=500)
    with pytest.raises(UserError, match="causal task LM"):
        autoprompt.run(ctx)
