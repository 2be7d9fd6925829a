"""Policy-gradient training of the prompt policy: one readable loop, checkpoints, early stopping."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlprompt.checkpoint import rng_state, save_checkpoint, set_rng_state
from rlprompt.config import TrainConfig
from rlprompt.errors import UserError
from rlprompt.rewards import normalize_rewards

EARLY_STOP = "early stop: dev accuracy did not improve"


@dataclass
class PromptRecord:
    """A distinct prompt seen in training, with its scores."""

    prompt: str
    train_reward: float
    train_acc: float
    step: int
    dev_acc: float | None = None
    test_acc: float | None = None


class Leaderboard:
    """The best distinct prompts seen: ranked by dev accuracy (when known), then train reward."""

    def __init__(self):
        self.records: dict[str, PromptRecord] = {}

    def add(self, texts, rewards, accuracies, step: int) -> None:
        for text, r, a in zip(texts, rewards, accuracies):
            if text not in self.records and math.isfinite(float(r)):
                self.records[text] = PromptRecord(text, float(r), float(a), step)

    def by_reward(self) -> list[PromptRecord]:
        return sorted(self.records.values(), key=lambda r: -r.train_reward)

    def best(self, k: int) -> list[PromptRecord]:
        """Top k: dev-scored prompts first (by dev accuracy, then reward), then the rest by reward."""
        key = lambda r: (r.dev_acc is not None, r.dev_acc or 0.0, r.train_reward)  # noqa: E731
        return sorted(self.records.values(), key=key, reverse=True)[:k]

    def state_dict(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.records.values()]

    def load_state_dict(self, rows: list[dict]) -> None:
        self.records = {r["prompt"]: PromptRecord(**r) for r in rows}


def repeated_token_rate(tokens: torch.Tensor) -> float:
    """Fraction of prompts (rows) in which some token occurs more than once."""
    return float(np.mean([len(set(row.tolist())) < len(row) for row in tokens]))


class Trainer:
    """REINFORCE with a per-step z-scored reward, entropy bonus and KL to the initial policy.

    `train_env` / `dev_env` are PromptClassificationEnv instances (their `score_batch` /
    `score_texts` give raw rewards and accuracies); `writer` is a TensorBoard SummaryWriter or None.
    """

    def __init__(self, cfg: TrainConfig, policy, train_env, dev_env, run_dir: Path, writer=None):
        self.cfg = cfg
        self.policy = policy
        self.train_env = train_env
        self.dev_env = dev_env
        self.run_dir = Path(run_dir)
        self.writer = writer
        self.optimizer = torch.optim.Adam(policy.adaptor.parameters(), lr=cfg.lr)
        self.generator = torch.Generator(device=policy.device).manual_seed(cfg.seed)
        self.leaderboard = Leaderboard()
        self.step = 0
        self.best_dev = -1.0
        self.evals_without_improvement = 0
        self.skipped_steps = 0
        self.history: list[dict] = []
        self.stop_reason: str | None = None
        self.train_s = 0.0  # wall time spent in run(), summed over resumes
        self._clock: float | None = None
        self._signal: int | None = None
        self.init_tokens = policy.encode_prompt(cfg.init_prompt) if cfg.init_prompt else None

    # ---- one step -------------------------------------------------------------------------
    def _warm_start_bias(self) -> float:
        if self.init_tokens is None or self.step >= self.cfg.init_steps:
            return 0.0
        return 8.0 * (1 - self.step / self.cfg.init_steps)

    def train_step(self) -> dict:
        """Sample prompts, score them, update the adaptor; returns the step's metrics."""
        cfg, policy = self.cfg, self.policy
        t0 = time.perf_counter()
        batch = policy.sample(cfg.prompts_per_step, generator=self.generator,
                              bias_tokens=self.init_tokens, bias=self._warm_start_bias())
        t1 = time.perf_counter()
        rewards, accuracies, texts = self.train_env.score_batch(batch.tokens.cpu())
        t2 = time.perf_counter()
        self.leaderboard.add(texts, rewards, accuracies, self.step)

        rewards_t = torch.as_tensor(rewards, dtype=torch.float32, device=policy.device)
        advantages = normalize_rewards(rewards_t, cfg.reward_scale)  # (N,)
        log_probs, entropy, kl = policy.evaluate_actions(batch.base_hidden, batch.tokens)  # (N, T)
        policy_loss = -(advantages[:, None] * log_probs).sum(1).mean()
        loss = policy_loss - cfg.entropy_coef * entropy.mean() + cfg.kl_coef * kl.sum(1).mean()
        skipped = not (torch.isfinite(loss) and torch.isfinite(rewards_t).all())
        grad_norm = float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_steps += 1
        else:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.adaptor.parameters(), cfg.max_grad_norm))
            self.optimizer.step()
        t3 = time.perf_counter()
        finite = rewards_t[torch.isfinite(rewards_t)]
        return {
            "charts/reward_mean": float(finite.mean()) if len(finite) else float("nan"),
            "charts/reward_max": float(finite.max()) if len(finite) else float("nan"),
            "charts/reward_std": float(finite.std()) if len(finite) > 1 else 0.0,
            "charts/train_acc": float(np.mean(accuracies)),
            "charts/train_acc_max": float(np.max(accuracies)),
            "charts/distinct_prompts": len(set(texts)) / len(texts),
            "charts/repeated_token_rate": repeated_token_rate(batch.tokens),
            "charts/prompts_seen": len(self.leaderboard.records),
            "charts/skipped_steps": self.skipped_steps,
            "losses/policy_loss": float(policy_loss.detach()),
            "losses/entropy": float(entropy.detach().mean()),
            "losses/kl_to_init": float(kl.detach().sum(1).mean()),
            "losses/grad_norm": grad_norm,
            "time/sample_s": t1 - t0, "time/score_s": t2 - t1, "time/update_s": t3 - t2,
        }

    # ---- evaluation ------------------------------------------------------------------------
    def greedy_prompt(self) -> str:
        """The policy's current argmax prompt."""
        return self.policy.sample(1, greedy=True).texts[0]

    def evaluate(self) -> dict:
        """Score the greedy prompt and the best not-yet-scored sampled prompts on dev."""
        greedy = self.greedy_prompt()
        todo = [greedy] + [r.prompt for r in self.leaderboard.by_reward()[:3] if r.dev_acc is None]
        todo = list(dict.fromkeys(todo))
        dev_rewards, dev_accs = self.dev_env.score_texts(todo)
        if greedy not in self.leaderboard.records:
            train_r, train_a = self.train_env.score_texts([greedy])
            self.leaderboard.add([greedy], train_r, train_a, self.step)
        for text, acc in zip(todo, dev_accs):
            self.leaderboard.records[text].dev_acc = float(acc)
        best = max(r.dev_acc for r in self.leaderboard.records.values() if r.dev_acc is not None)
        if best > self.best_dev + 1e-9:
            self.best_dev, self.evals_without_improvement = best, 0
        else:
            self.evals_without_improvement += 1
        return {"charts/dev_acc": float(dev_accs[0]), "charts/dev_reward": float(dev_rewards[0]),
                "charts/best_dev_acc": self.best_dev, "greedy_prompt": greedy}

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.cfg),
            "step": self.step,
            "adaptor": self.policy.adaptor.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_state(self.generator),
            "leaderboard": self.leaderboard.state_dict(),
            "best_dev": self.best_dev,
            "evals_without_improvement": self.evals_without_improvement,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "stop_reason": self.stop_reason,
            "train_s": self.train_s,
            "score_cache": dict(getattr(self.train_env.scorer, "score_cache", {})),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.policy.adaptor.load_state_dict(state["adaptor"])
        self.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], self.generator)
        self.leaderboard.load_state_dict(state["leaderboard"])
        self.best_dev = state["best_dev"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.skipped_steps = state["skipped_steps"]
        self.history = state["history"]
        self.train_s = state.get("train_s", 0.0)
        # An early-stopped run resumes straight into its results; one that used its step budget may
        # be resumed with a larger --steps and train on.
        self.stop_reason = state.get("stop_reason") if state.get("stop_reason") == EARLY_STOP else None
        cache = getattr(self.train_env.scorer, "score_cache", None)
        if cache is not None:
            cache.update(state.get("score_cache", {}))

    def _bank_time(self) -> None:
        if self._clock is not None:
            now = time.perf_counter()
            self.train_s, self._clock = self.train_s + now - self._clock, now

    def save(self) -> Path:
        """Write the checkpoint atomically."""
        self._bank_time()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            return save_checkpoint(self.run_dir, self.state_dict())
        except OSError as e:
            raise UserError(f"cannot write checkpoint in {self.run_dir}: {e.strerror or e}") from None

    # ---- the loop --------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._signal = signum

    @contextlib.contextmanager
    def running(self):
        """The training loop's block: SIGINT/SIGTERM only set a flag that the loop checks between
        steps, and the block's wall time is added to train_s (saved with the checkpoint)."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self._clock = time.perf_counter()
        try:
            yield
        finally:
            self._bank_time()
            self._clock = None
            for s, handler in previous.items():
                signal.signal(s, handler)

    def finish(self) -> str:
        """Write the checkpoint; returns 'interrupted' after a signal, else why training stopped."""
        if self._signal is None:
            self.stop_reason = self.stop_reason or "step budget reached"
        self.save()
        return "interrupted" if self._signal is not None else self.stop_reason

    def end_step(self, metrics: dict, bar) -> None:
        """After step `self.step`: dev evaluation when due (and the early-stop check), logging, the
        progress bar and the periodic checkpoint. Both training loops call it."""
        cfg = self.cfg
        if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
            metrics.update(self.evaluate())
            if cfg.patience and self.evals_without_improvement >= cfg.patience:
                self.stop_reason = EARLY_STOP
        self._log(metrics)
        bar.update(1)
        nan = float("nan")
        bar.set_postfix(reward=f"{metrics.get('charts/reward_mean', nan):.1f}",
                        acc=f"{metrics.get('charts/train_acc', nan):.2f}",
                        dev=f"{self.best_dev:.2f}" if self.best_dev >= 0 else "-",
                        H=f"{metrics.get('losses/entropy', nan):.2f}")
        if self.step % cfg.checkpoint_every == 0 and self._signal is None:
            self.save()

    def run(self, progress: bool = True) -> str:
        """Train until the step budget, early stop or a signal; returns why it stopped.

        SIGINT/SIGTERM finish the current step, write the checkpoint and return 'interrupted'.
        """
        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="train", unit="step")
        with self.running():
            try:
                while self.step < cfg.steps and self.stop_reason is None and self._signal is None:
                    metrics = self.train_step()
                    self.step += 1
                    self.end_step(metrics, bar)
                return self.finish()
            finally:
                bar.close()

    def _log(self, metrics: dict) -> None:
        row = {"step": self.step, **{k: v for k, v in metrics.items() if not isinstance(v, str)}}
        if "greedy_prompt" in metrics:
            row["greedy_prompt"] = metrics["greedy_prompt"]
        self.history.append(row)
        if self.writer is None:
            return
        for k, v in metrics.items():
            if not isinstance(v, str) and math.isfinite(v):
                self.writer.add_scalar(k, v, self.step)
        if "greedy_prompt" in metrics:
            table = "| prompt | dev acc | train reward |\n|---|---|---|\n" + "\n".join(
                f"| {r.prompt} | {r.dev_acc if r.dev_acc is not None else ''} | {r.train_reward:.1f} |"
                for r in self.leaderboard.best(self.cfg.top_prompts))
            self.writer.add_text("prompts/best", table, self.step)
            self.writer.add_text("prompts/greedy", metrics["greedy_prompt"], self.step)
