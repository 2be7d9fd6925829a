"""trl's GRPOTrainer on the adaptor policy: same sampling space, adaptor-free reference, learning, files."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from transformers import LogitsProcessorList

from envs import PromptBatchEnv
from rlprompt.config import TrainConfig
from rlprompt.errors import UserError
from rlprompt.policy import PromptPolicy
from rlprompt.trl_trainer import (BaseModelReference, GRPOPromptTrainer, PolicyMaskProcessor, masked_generation,
                                  trl_deprecations_quiet)
from tests.rl_helpers import TOY_EXAMPLES, ParityTaskLM, fresh_tiny_lm

REPO = pathlib.Path(__file__).resolve().parent.parent


def toy_grpo(tokenizer, run_dir, steps, seed=0, **overrides) -> GRPOPromptTrainer:
    """The toy parity task of tests/test_training.py, trained by trl's GRPO."""
    settings = dict(prompts_per_step=8, kl_coef=0.0, entropy_coef=0.0, eval_every=5, checkpoint_every=5)
    settings.update(overrides)
    cfg = TrainConfig(steps=steps, prompt_length=3, top_k=64, lr=3e-3, patience=0, adaptor_hidden=64,
                      seed=seed, trainer="trl-grpo", **settings)
    torch.manual_seed(seed)
    policy = PromptPolicy(fresh_tiny_lm(tokenizer, seed), tokenizer, cfg.prompt_length, cfg.top_k,
                          cfg.adaptor_hidden)
    decode = lambda ids: tokenizer.decode(ids).strip()  # noqa: E731
    env = PromptBatchEnv(ParityTaskLM(tokenizer), TOY_EXAMPLES, decode, len(tokenizer), cfg.prompt_length,
                         cfg.prompts_per_step)
    return GRPOPromptTrainer(cfg, policy, env, env, run_dir)


def perturb(adaptor, seed=1, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptor.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_trl_samples_from_the_policys_space(smol_tokenizer, tmp_path):
    trainer = toy_grpo(smol_tokenizer, tmp_path, steps=1)
    policy = trainer.policy
    perturb(policy.adaptor)
    trl = trainer.build_trl(1)
    # trl's own generation path: prompt_length tokens, never a banned or a repeated token
    with masked_generation(policy), trl_deprecations_quiet():
        completions, _ = trl._generate_single_turn([policy.start_ids] * 32, None, {}, 32)
    tokens = torch.tensor(completions)
    assert tokens.shape == (32, 3)
    assert not policy.banned[tokens].any()
    assert all(len(set(row.tolist())) == 3 for row in tokens)
    # and the distribution it samples from is PromptPolicy.sample's: the mask, then top-k
    start = torch.tensor([policy.start_ids] * 4)
    out = policy.model.generate(input_ids=start, attention_mask=torch.ones_like(start),
                                generation_config=trl.generation_config,
                                logits_processor=LogitsProcessorList([PolicyMaskProcessor(policy)]),
                                output_scores=True, return_dict_in_generate=True)
    seq = out.sequences
    logits = policy.model(seq).logits
    for t, scores in enumerate(out.scores):
        step = len(policy.start_ids) - 1 + t
        ours = policy._mask(logits[:, step], seq[:, len(policy.start_ids):step + 1])
        top = ours.topk(policy.top_k, dim=-1)
        ours_topk = torch.full_like(ours, float("-inf")).scatter(1, top.indices, top.values)
        assert torch.equal(torch.isfinite(scores), torch.isfinite(ours_topk))
        kept = torch.isfinite(scores)
        torch.testing.assert_close(scores[kept], ours_topk[kept], atol=1e-4, rtol=1e-4)


def test_reference_is_the_base_model_without_a_copy(smol_tokenizer, tmp_path):
    trainer = toy_grpo(smol_tokenizer, tmp_path, steps=1, kl_coef=0.2)
    trl = trainer.build_trl(1)
    assert isinstance(trl.ref_model, BaseModelReference) and trl.ref_model.policy.model is trl.model
    assert trl.beta == pytest.approx(0.2 / trainer.cfg.reward_scale)
    policy = trainer.policy
    perturb(policy.adaptor)
    seq = torch.tensor([policy.start_ids + [100, 200, 300]])
    ref = trl.ref_model(input_ids=seq, labels=seq, fused_lm_head=True).log_probs
    with policy.base_model_only():
        base = torch.log_softmax(policy.model(seq).logits[:, :-1].float(), -1)
    base = base.gather(-1, seq[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(ref[:, :base.shape[1]], base, atol=1e-4, rtol=1e-4)
    adapted = policy.model(input_ids=seq, labels=seq, fused_lm_head=True).log_probs
    assert not torch.allclose(adapted, ref, atol=1e-3)


@pytest.mark.slow
def test_trl_trains_only_the_adaptor_and_writes_the_default_trainers_files(smol_tokenizer, tmp_path):
    trainer = toy_grpo(smol_tokenizer, tmp_path, steps=3, kl_coef=0.2, entropy_coef=0.01, eval_every=3,
                       checkpoint_every=3)
    model = trainer.policy.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".adaptor." not in n}
    adaptor = {n: p.detach().clone() for n, p in trainer.policy.adaptor.named_parameters()}
    assert trainer.run(progress=False) == "step budget reached"
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, adaptor[n]) for n, p in trainer.policy.adaptor.named_parameters())

    assert [h["step"] for h in trainer.book.history] == [1, 2, 3]
    last = trainer.book.history[-1]
    for key in ("charts/reward_mean", "charts/train_acc", "charts/distinct_prompts", "losses/entropy",
                "losses/kl_to_init", "charts/dev_acc", "greedy_prompt"):
        assert key in last, key
    assert last["losses/kl_to_init"] >= 0 and last["charts/repeated_token_rate"] == 0
    assert len(trainer.book.leaderboard.records) >= 8
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["config"]["trainer"] == "trl-grpo" and state["step"] == 3
    for name, value in trainer.policy.adaptor.state_dict().items():
        assert torch.equal(state["adaptor"][name], value)


@pytest.mark.slow
def test_trl_reward_rises_on_a_learnable_toy_task(smol_tokenizer, tmp_path):
    # tests/test_training.py::test_reward_rises_on_a_learnable_toy_task, with trl's GRPO as the trainer
    trainer = toy_grpo(smol_tokenizer, tmp_path, steps=40, prompts_per_step=16)
    assert trainer.run(progress=False) == "step budget reached"
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 40, rewards


@pytest.mark.slow
def test_trl_resume_reproduces_the_uninterrupted_run(smol_tokenizer, tmp_path):
    full = toy_grpo(smol_tokenizer, tmp_path / "full", steps=4, checkpoint_every=2, eval_every=2)
    full.run(progress=False)
    first = toy_grpo(smol_tokenizer, tmp_path / "split", steps=2, checkpoint_every=2, eval_every=2)
    first.run(progress=False)
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    second = toy_grpo(smol_tokenizer, tmp_path / "split", steps=4, checkpoint_every=2, eval_every=2)
    second.load_state_dict(state)
    second.run(progress=False)
    rewards = lambda trainer: [h["charts/reward_mean"] for h in trainer.book.history]  # noqa: E731
    assert rewards(second) == rewards(full)
    assert list(second.book.leaderboard.records) == list(full.book.leaderboard.records)


def test_trl_refuses_what_it_cannot_do(smol_tokenizer, tmp_path):
    with pytest.raises(UserError, match="--init-prompt works with --trainer reinforce only"):
        toy_grpo(smol_tokenizer, tmp_path, steps=1, init_prompt="great movie")
    with pytest.raises(UserError, match="unknown --trainer 'ppo'"):
        TrainConfig(trainer="ppo")


@pytest.mark.slow
def test_train_py_trl_grpo_end_to_end(tiny_model_dir, tmp_path, data_dir):
    run = tmp_path / "run"
    args = ["--task", "sst2", "--data-dir", str(data_dir), "--policy-model", str(tiny_model_dir),
            "--task-model", str(tiny_model_dir), "--task-dtype", "fp32", "--prompts-per-step", "4",
            "--steps", "2", "--eval-every", "2", "--checkpoint-every", "2", "--skip-test",
            "--trainer", "trl-grpo", "--out", str(run)]
    proc = subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    prompts = json.loads((run / "prompts.json").read_text())
    assert prompts and prompts[0]["dev_acc"] is not None
    assert json.loads((run / "summary.json").read_text())["config"]["trainer"] == "trl-grpo"
    assert (run / "checkpoint.pt").exists() and list(run.glob("events.out.tfevents.*"))

    bad = subprocess.run([sys.executable, "train.py", "--trainer", "ppo"], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: unknown --trainer 'ppo'; use reinforce, sql, trl-grpo"
