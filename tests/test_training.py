"""The environment and the training loop on tiny models: check_env, learning, resume, train.py."""

import json
import subprocess
import sys

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs
from envs import PromptBatchEnv, PromptClassificationEnv, step_through
from rlprompt.config import TrainConfig
from rlprompt.errors import UserError
from rlprompt.policy import PromptPolicy
from rlprompt.rewards import classification_reward, normalize_rewards
from rlprompt.scorer import CachedScorer
from rlprompt.trainer import Trainer
from tests.rl_helpers import TOY_EXAMPLES, ParityTaskLM, fresh_tiny_lm


def test_reward_matches_rlprompt_definition():
    logprobs = torch.log(torch.tensor([[[0.2, 0.8], [0.9, 0.1]]]))
    reward, acc = classification_reward(logprobs, torch.tensor([1, 1]))
    assert acc.item() == 0.5
    assert reward.item() == pytest.approx((200 * 0.6 + 180 * -0.8) / 2, abs=1e-4)


def test_normalize_rewards_handles_equal_rewards():
    assert torch.equal(normalize_rewards(torch.full((4,), 3.0)), torch.zeros(4))
    z = normalize_rewards(torch.tensor([1.0, 2.0, 3.0]), scale=5.0)
    assert z.mean().abs() < 1e-6 and z.std(unbiased=False) == pytest.approx(5.0)


def make_env(tokenizer, model, examples=TOY_EXAMPLES, length=3):
    scorer = CachedScorer(model, tokenizer, "{sentence} {prompt} It was", [" terrible", " great"])
    decode = lambda ids: tokenizer.decode(ids).strip()  # noqa: E731
    return PromptClassificationEnv(scorer, examples, decode, len(tokenizer), length)


def test_env_passes_check_env_and_is_registered(smol_tokenizer, tiny_lm):
    made = make_env(smol_tokenizer, tiny_lm[0])
    env = gymnasium.make(envs.ENV_ID, scorer=made.scorer, examples=TOY_EXAMPLES, decode=made.decode,
                         vocab_size=made.vocab_size, prompt_length=3, disable_env_checker=True).unwrapped
    check_env(env)  # made through the registry: it has a spec, so every check runs
    obs, _ = env.reset(seed=0)
    assert (obs == env.vocab_size).all()
    for t in range(3):
        obs, reward, terminated, truncated, info = env.step(1000 + t)
    assert terminated and not truncated and "prompt" in info and 0 <= info["accuracy"] <= 1
    batch_rewards, _, texts = env.score_tokens([[1000, 1001, 1002]])
    assert batch_rewards[0] == pytest.approx(reward, abs=1e-5) and texts[0] == info["prompt"]
    assert envs.ENV_ID in gymnasium.registry


def test_batched_env_scores_the_whole_batch_in_one_call_and_matches_the_single_env(smol_tokenizer):
    """Gymnasium's vector API: batched spaces, one token column per step, one scorer call at the end,
    next-step autoreset; its rewards are the single-episode env's; made through the registry too."""
    scorer = ParityTaskLM(smol_tokenizer)
    calls = []
    score = scorer.score
    scorer.score = lambda prompts, sentences: calls.append(len(prompts)) or score(prompts, sentences)
    decode = lambda ids: smol_tokenizer.decode(ids).strip()  # noqa: E731
    vocab = len(smol_tokenizer)
    envs_ = gymnasium.make_vec(envs.ENV_ID, num_envs=4, vectorization_mode="vector_entry_point", scorer=scorer,
                               examples=TOY_EXAMPLES, decode=decode, vocab_size=vocab, prompt_length=3)
    assert isinstance(envs_, PromptBatchEnv) and isinstance(envs_, gymnasium.vector.VectorEnv)
    assert envs_.single_action_space == gymnasium.spaces.Discrete(vocab)
    assert envs_.action_space.shape == (4,) and envs_.observation_space.shape == (4, 3)
    tokens = np.array([[1000, 1001, 1002], [1002, 1004, 1006], [1001, 1003, 1005], [7, 8, 9]])
    obs, _ = envs_.reset(seed=0)
    assert (obs == vocab).all()
    for t in range(3):
        obs, rewards, terminated, truncated, infos = envs_.step(tokens[:, t])
        assert envs_.observation_space.contains(obs) and (obs[:, :t + 1] == tokens[:, :t + 1]).all()
        assert terminated.all() == (t == 2) and not truncated.any()
    assert calls == [4]  # the whole batch, one call, at the last step
    final = (rewards, list(infos["prompt"]))
    single = PromptClassificationEnv(scorer, TOY_EXAMPLES, decode, vocab, 3)
    for row, reward, text, acc in zip(tokens, rewards, infos["prompt"], infos["accuracy"]):
        single.reset()
        for token in row:
            _, r, done, _, info = single.step(int(token))
        assert (r, info["prompt"], info["accuracy"]) == pytest.approx((reward, text, acc))
    obs, rewards, terminated, _, infos = envs_.step(tokens[:, 0])  # next-step autoreset
    assert (obs == vocab).all() and not terminated.any() and not rewards.any() and infos == {}
    again_rewards, again_infos = step_through(envs_, torch.tensor(tokens))  # what the trainers call
    assert (list(again_rewards), list(again_infos["prompt"])) == (list(final[0]), final[1])
    envs_.reset()
    with pytest.raises(ValueError, match="token ids"):
        envs_.step(np.array([0, 1, 2, vocab]))


def toy_trainer(tokenizer, tmp_path, steps, seed=0, scorer=None, **overrides):
    for name, value in {"prompts_per_step": 8, "kl_coef": 0.0, "entropy_coef": 0.0, "lr": 3e-3}.items():
        overrides.setdefault(name, value)
    cfg = TrainConfig(steps=steps, prompt_length=3, top_k=64, eval_every=5, patience=0,
                      checkpoint_every=5, adaptor_hidden=64, seed=seed, **overrides)
    torch.manual_seed(seed)
    policy = PromptPolicy(fresh_tiny_lm(tokenizer, seed), tokenizer, cfg.prompt_length, cfg.top_k,
                          cfg.adaptor_hidden)
    scorer = scorer or ParityTaskLM(tokenizer)
    decode = lambda ids: tokenizer.decode(ids).strip()  # noqa: E731
    env = PromptBatchEnv(scorer, TOY_EXAMPLES, decode, len(tokenizer), cfg.prompt_length, cfg.prompts_per_step)
    return Trainer(cfg, policy, env, env, tmp_path)


@pytest.mark.slow
def test_reward_rises_on_a_learnable_toy_task(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=80, prompts_per_step=16)
    assert trainer.run(progress=False) == "step budget reached"
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 40, rewards
    assert (tmp_path / "checkpoint.pt").exists()


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(smol_tokenizer, tmp_path):
    full = toy_trainer(smol_tokenizer, tmp_path / "full", steps=10)
    full.run(progress=False)
    first = toy_trainer(smol_tokenizer, tmp_path / "split", steps=5)
    first.run(progress=False)
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    second = toy_trainer(smol_tokenizer, tmp_path / "split", steps=10, seed=0)
    second.load_state_dict(state)
    second.run(progress=False)
    rewards = lambda trainer: [h["charts/reward_mean"] for h in trainer.book.history]  # noqa: E731
    assert rewards(second) == rewards(full)
    assert list(second.book.leaderboard.records) == list(full.book.leaderboard.records)


def run_train(args, cwd):
    return subprocess.run([sys.executable, "train.py", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_train_py_end_to_end_and_resume(tiny_model_dir, tmp_path, data_dir):
    import pathlib

    repo = pathlib.Path(__file__).resolve().parent.parent
    common = ["--task", "sst2", "--data-dir", str(data_dir), "--policy-model", str(tiny_model_dir),
              "--task-model", str(tiny_model_dir), "--task-dtype", "fp32", "--prompts-per-step", "4",
              "--eval-every", "2", "--checkpoint-every", "2", "--skip-test"]
    full = run_train(common + ["--steps", "4", "--out", str(tmp_path / "full")], repo)
    assert full.returncode == 0, full.stderr[-2000:]
    part = run_train(common + ["--steps", "2", "--out", str(tmp_path / "part")], repo)
    assert part.returncode == 0, part.stderr[-2000:]
    resumed = run_train(["--resume", str(tmp_path / "part"), "--steps", "4"], repo)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "prompts.json").read_text())
    b = json.loads((tmp_path / "part" / "prompts.json").read_text())
    assert [r["prompt"] for r in a] == [r["prompt"] for r in b]
    assert list((tmp_path / "full").glob("events.out.tfevents.*"))

    bad = run_train(["--resume", str(tmp_path / "part"), "--task", "mr"], repo)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: cannot resume")
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_soft_q_learning_raises_the_reward_on_the_toy_task(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=80, prompts_per_step=16, trainer="sql",
                          sql_target_rate=0.05)
    assert trainer.run(progress=False) == "step budget reached"
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 40, rewards
    assert {"losses/sql_one_step", "losses/sql_multi_step"} <= set(trainer.book.history[-1])


def test_soft_q_learning_resumes_exactly(smol_tokenizer, tmp_path):
    settings = dict(trainer="sql", sql_replay=20)
    full = toy_trainer(smol_tokenizer, tmp_path / "full", steps=6, **settings)
    full.run(progress=False)
    first = toy_trainer(smol_tokenizer, tmp_path / "split", steps=3, **settings)
    first.run(progress=False)
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
    second = toy_trainer(smol_tokenizer, tmp_path / "split", steps=6, **settings)
    second.load_state_dict(state)
    second.run(progress=False)
    rewards = lambda trainer: [h["charts/reward_mean"] for h in trainer.book.history]  # noqa: E731
    assert rewards(second) == rewards(full)
    assert len(second.objective.replay.tokens) == 20  # the buffer keeps the last --sql-replay prompts


def test_entropy_target_raises_the_coefficient_when_entropy_is_low(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=5, entropy_target=20.0, entropy_coef=0.01)
    trainer.run(progress=False)
    coefs = [h["losses/entropy_coef"] for h in trainer.book.history]
    assert coefs[0] == pytest.approx(0.01) and all(b >= a for a, b in zip(coefs, coefs[1:])), coefs
    assert coefs[1] > coefs[0] and coefs[-1] == pytest.approx(100.0)  # rises, up to its cap
    above = toy_trainer(smol_tokenizer, tmp_path / "above", steps=3, entropy_target=0.01, entropy_coef=0.01)
    above.run(progress=False)  # entropy above the target: the coefficient stays at its floor
    assert [h["losses/entropy_coef"] for h in above.book.history] == pytest.approx([0.01] * 3)
    fixed = toy_trainer(smol_tokenizer, tmp_path / "fixed", steps=2, entropy_coef=0.01)
    fixed.run(progress=False)
    assert [h["losses/entropy_coef"] for h in fixed.book.history] == [0.01, 0.01]


def test_elite_term_keeps_the_best_prompts_by_reward(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=4, elite_coef=1.0, elite_size=3)
    trainer.run(progress=False)
    elite = trainer.objective.elite
    best3 = sorted((r.train_reward for r in trainer.book.leaderboard.records.values()), reverse=True)[:3]
    assert elite.rewards == pytest.approx(best3) and len(elite.tokens) == 3
    assert all(np.isfinite(h["losses/elite_nll"]) for h in trainer.book.history)


def test_train_plus_dev_selection_weighs_train_accuracy(smol_tokenizer, tmp_path):
    from rlprompt.bookkeeping import Leaderboard, PromptRecord

    board = Leaderboard(train_weight=0.5)
    board.records = {"a": PromptRecord("a", 1.0, train_acc=0.6, step=1, dev_acc=0.9),
                     "b": PromptRecord("b", 1.0, train_acc=0.9, step=1, dev_acc=0.8)}
    assert [r.prompt for r in board.best(2)] == ["b", "a"]
    board.train_weight = 0.0
    assert [r.prompt for r in board.best(2)] == ["a", "b"]
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=1, selection="train+dev")
    assert trainer.book.leaderboard.train_weight == pytest.approx(0.5)  # 8 train and the same 8 as dev


def test_update_kl_trust_region_shrinks_the_step_size_when_updates_move_the_policy_far(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=4, update_kl=1e-9)
    trainer.run(progress=False)
    rates = [h["losses/lr"] for h in trainer.book.history]
    assert rates == pytest.approx([3e-3 / 2 ** k for k in range(1, 5)])  # every update is "too far"
    assert all(h["losses/update_kl"] > 0 for h in trainer.book.history)
    loose = toy_trainer(smol_tokenizer, tmp_path / "loose", steps=2, update_kl=1e9)
    loose.run(progress=False)
    assert [h["losses/lr"] for h in loose.book.history] == [3e-3, 3e-3]  # never above --lr


def test_running_scale_advantages_shrink_when_a_steps_rewards_agree():
    from rlprompt.objectives import RunningScale

    running = RunningScale(scale=5.0, decay=0.9)
    wide = running(torch.tensor([0.0, 10.0, 20.0, 30.0]))
    assert torch.allclose(wide, normalize_rewards(torch.tensor([0.0, 10.0, 20.0, 30.0]), 5.0))  # first step: a z-score
    narrow = torch.tensor([14.0, 15.0, 15.0, 16.0])
    shrunk = running(narrow)
    assert shrunk.sum().abs() < 1e-5 and shrunk.abs().max() < 0.5 * normalize_rewards(narrow, 5.0).abs().max()
    copy = RunningScale(scale=5.0, decay=0.9)
    copy.load_state_dict(running.state_dict())  # the scale is checkpointed
    assert torch.equal(copy(narrow), running(narrow))
    assert torch.equal(RunningScale(5.0, 0.9)(torch.full((4,), 3.0)), torch.zeros(4))  # no spread yet: no push


def test_running_advantage_raises_the_reward_on_the_toy_task_and_resumes_exactly(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path / "learn", steps=40, prompts_per_step=16, advantage="running")
    trainer.run(progress=False)
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 20, rewards
    full = toy_trainer(smol_tokenizer, tmp_path / "full", steps=6, advantage="running")
    full.run(progress=False)
    first = toy_trainer(smol_tokenizer, tmp_path / "split", steps=3, advantage="running")
    first.run(progress=False)
    second = toy_trainer(smol_tokenizer, tmp_path / "split", steps=6, advantage="running")
    second.load_state_dict(torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False))
    second.run(progress=False)
    assert [h["charts/reward_mean"] for h in second.book.history] == [h["charts/reward_mean"] for h in full.book.history]
    with pytest.raises(UserError, match="unknown --advantage 'rank'"):
        TrainConfig(advantage="rank")


def test_sgd_optimizer_raises_the_reward_on_the_toy_task(smol_tokenizer, tmp_path):
    from rlprompt.trainer import make_optimizer

    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=40, prompts_per_step=16, optimizer="sgd", lr=0.5,
                          advantage="running")
    assert type(trainer.optimizer) is torch.optim.SGD and trainer.optimizer.defaults["lr"] == 0.5
    trainer.run(progress=False)
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 20, rewards
    assert type(make_optimizer(TrainConfig(), trainer.policy.adaptor.parameters())) is torch.optim.Adam  # the default
    with pytest.raises(UserError, match="unknown --optimizer 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")


def toy_sentiment(tiny_lm):
    """(Task, CachedScorer): two train and three dev sentences, scored by the tiny LM."""
    from rlprompt.tasks import Example, Task

    model, tok = tiny_lm
    task = Task(name="toy", label_names=["neg", "pos"], verbalizers=[" terrible", " great"],
                template="{sentence} {prompt} It was", train=[Example("good film", 1), Example("bad film", 0)],
                dev=[Example("great plot", 1), Example("dull plot", 0), Example("fine cast", 1)])
    return task, CachedScorer(model, tok, task.template, task.verbalizers)


def test_reward_on_train_plus_dev_scores_both_splits(tiny_lm, smol_tokenizer):
    from rlprompt.build import build_policy_and_envs, reward_examples
    from train import data_line

    tok = tiny_lm[1]
    task, scorer = toy_sentiment(tiny_lm)
    train, dev = task.train, task.dev
    both = TrainConfig(reward_on="train+dev", prompts_per_step=2, prompt_length=2, top_k=8, adaptor_hidden=8)
    _, train_env, dev_env = build_policy_and_envs(both, fresh_tiny_lm(tok), tok, scorer, task)
    assert train_env.examples == train + dev and dev_env.examples == dev
    assert reward_examples(TrainConfig(), task) == train
    line = data_line(both, task)
    assert line.startswith("data: 2 train, 3 dev") and "on all 5 train+dev examples" in line
    with pytest.raises(UserError, match="unknown --reward-on 'dev'"):
        TrainConfig(reward_on="dev")


def test_clip_cov_detaches_the_tokens_whose_log_prob_and_advantage_covary_most(smol_tokenizer, tmp_path):
    from rlprompt.objectives import clip_covariance

    log_probs = torch.tensor([[-0.1, -3.0], [-0.2, -2.0], [-4.0, -0.3]], requires_grad=True)
    advantages = torch.tensor([2.0, 0.0, -2.0])
    kept, clipped, cov = clip_covariance(log_probs, advantages, fraction=2 / 6)
    # centred products: (A - 0)(logp - mean(logp) = -1.6): token (0,0) +3.0 and (2,0) +4.8 are the top two
    assert clipped.tolist() == [[True, False], [False, False], [True, False]]
    (kept * advantages[:, None]).sum().backward()
    assert log_probs.grad.tolist() == [[0.0, 2.0], [0.0, 0.0], [0.0, -2.0]]
    assert cov == pytest.approx(float(((advantages[:, None]) * (log_probs.detach() + 1.6)).mean()))
    off, none, _ = clip_covariance(log_probs, advantages, fraction=0.0)
    assert not none.any() and torch.equal(off, log_probs)
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=3, cov_clip=0.25)
    trainer.run(progress=False)
    assert all(0 < h["losses/cov_clipped"] <= 0.25 for h in trainer.book.history)


def test_prompt_vocab_words_reaches_the_policy(tiny_lm, smol_tokenizer):
    from rlprompt.build import build_policy_and_envs

    tok = tiny_lm[1]
    task, scorer = toy_sentiment(tiny_lm)
    cfg = TrainConfig(prompt_vocab="words", prompts_per_step=4, prompt_length=3, top_k=32, adaptor_hidden=8)
    policy, _, _ = build_policy_and_envs(cfg, fresh_tiny_lm(tok), tok, scorer, task)
    texts = policy.sample(8, generator=torch.Generator().manual_seed(0)).texts
    assert policy.vocab == "words" and all(t.replace(" ", "").isalpha() for t in texts), texts


def test_masked_log_probs_raise_the_reward_on_the_toy_task(smol_tokenizer, tmp_path):
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=40, prompts_per_step=16, advantage="running",
                          logprobs="masked", entropy_coef=0.01, kl_coef=0.1)
    trainer.run(progress=False)
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 20, rewards
    with pytest.raises(UserError, match="unknown --logprobs 'top-k'"):
        TrainConfig(logprobs="top-k")
