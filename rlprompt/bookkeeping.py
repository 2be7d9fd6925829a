"""What a training run keeps besides the policy update, whichever loop trains it: the leaderboard of
prompts, the dev evaluation and early stop, the history and TensorBoard logging, training time,
signals, and the checkpoint. Trainers own a `Bookkeeper` and call its public methods (trl's
callbacks are the model: behaviour is shared by calling, not by overriding)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from rlprompt.checkpoint import rng_state, save_checkpoint, set_rng_state
from rlprompt.config import TrainConfig
from rlprompt.distributed import is_distributed, pairs_scored_by_all, same_on_all_processes
from rlprompt.errors import UserError

EARLY_STOP = "early stop: dev accuracy did not improve"


@dataclass
class PromptRecord:
    """A distinct prompt seen in training, with its scores. `step` counts the policy updates made before
    the prompt was first produced: 0 for the samples of the first step, 10 for the greedy prompt of the
    dev check after step 10."""

    prompt: str
    train_reward: float
    train_acc: float
    step: int
    dev_acc: float | None = None
    test_acc: float | None = None


class Leaderboard:
    """The best distinct prompts seen: ranked by dev accuracy (when known), then train reward.

    With `train_weight` w > 0 the rank of a dev-scored prompt is (1 − w)·dev accuracy + w·train
    accuracy instead (--selection train+dev: w is the train examples' share of train + dev).
    """

    def __init__(self, train_weight: float = 0.0):
        self.records: dict[str, PromptRecord] = {}
        self.train_weight = train_weight

    def add(self, texts, rewards, accuracies, step: int) -> None:
        """Record each prompt the first time it is seen with a finite reward (its train accuracy, step)."""
        for text, r, a in zip(texts, rewards, accuracies):
            if text not in self.records and math.isfinite(float(r)):
                self.records[text] = PromptRecord(text, float(r), float(a), step)

    def by_reward(self) -> list[PromptRecord]:
        """Every recorded prompt, highest train reward first."""
        return sorted(self.records.values(), key=lambda r: -r.train_reward)

    def best(self, k: int) -> list[PromptRecord]:
        """Top k: dev-scored prompts first (by dev accuracy, or the train+dev mix; then reward), then the
        rest by reward."""
        w = self.train_weight
        key = lambda r: (r.dev_acc is not None, (1 - w) * (r.dev_acc or 0.0) + w * r.train_acc,  # noqa: E731
                         r.train_reward)
        return sorted(self.records.values(), key=key, reverse=True)[:k]

    def state_dict(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self.records.values()]

    def load_state_dict(self, rows: list[dict]) -> None:
        self.records = {r["prompt"]: PromptRecord(**r) for r in rows}


def repeated_token_rate(tokens: torch.Tensor) -> float:
    """Fraction of prompts (rows) in which some token occurs more than once."""
    return float(np.mean([len(set(row.tolist())) < len(row) for row in tokens]))


def _agreed(flag: bool) -> bool:
    """Rank 0's `flag` on every process under torch.distributed (a collective), else `flag`: decisions
    that lead into collectives (stop, save) must not follow each process's own clock or signals."""
    if not is_distributed():
        return flag
    return bool(same_on_all_processes(flag))


class Bookkeeper:
    """The run's state and records around a trainer's updates.

    `policy`, `optimizer` and `generator` (the sampling RNG) are the trainer's; they are read only to
    write and restore checkpoints, as is every object in `checkpointed` (name -> anything with
    `state_dict()`/`load_state_dict()`, saved under its name: the adaptor and the optimizer to start
    with, a trainer may add its own). `train_env` / `dev_env` score prompt texts (`score_texts`) for
    the dev evaluation. Functions in `on_dev_evaluation` are called with the metrics of every dev
    evaluation (e.g. to draw a budget curve). Under torch.distributed only rank 0 writes.
    """

    def __init__(self, cfg: TrainConfig, policy, optimizer, generator, train_env, dev_env, run_dir: Path,
                 writer=None):
        self.cfg = cfg
        self.policy = policy
        self.optimizer = optimizer
        self.generator = generator
        self.train_env = train_env
        self.dev_env = dev_env
        self.run_dir = Path(run_dir)
        self.writer = writer
        n_train, n_dev = min(len(train_env.examples), cfg.train_batch), len(dev_env.examples)
        self.leaderboard = Leaderboard(n_train / (n_train + n_dev) if cfg.selection == "train+dev" else 0.0)
        self.step = 0
        self.best_dev = -1.0
        self.evals_without_improvement = 0
        self.skipped_steps = 0
        self.history: list[dict] = []
        self.stop_reason: str | None = None
        self.train_s = 0.0  # wall time spent training, summed over resumes
        self.on_dev_evaluation: list[Callable[[dict], None]] = []
        self.checkpointed = {"adaptor": policy.adaptor, "optimizer": optimizer}
        self._clock: float | None = None
        self._signal: int | None = None
        self._saved_at = time.monotonic()  # when the last checkpoint was written (or training began)

    @property
    def interrupted(self) -> bool:
        """True once SIGINT/SIGTERM arrived inside `running()`."""
        return self._signal is not None

    @property
    def should_stop(self) -> bool:
        """True after an early stop (or another stop reason) or a signal (rank 0's answer on every process)."""
        return _agreed(self.stop_reason is not None or self.interrupted)

    def add_prompts(self, texts, rewards, accuracies) -> None:
        """Put the step's scored prompts on the leaderboard (first sighting wins, non-finite skipped)."""
        self.leaderboard.add(texts, rewards, accuracies, self.step)

    # ---- dev evaluation -------------------------------------------------------------------
    def greedy_prompt(self) -> str:
        """The policy's current argmax prompt."""
        return self.policy.sample(1, greedy=True).texts[0]

    def evaluate_on_dev(self) -> dict:
        """Score the greedy prompt and the best not-yet-scored sampled prompts on dev; update the best
        dev accuracy and the early-stop count; returns the metrics (and tells `on_dev_evaluation`)."""
        greedy = self.greedy_prompt()
        todo = [greedy] + [r.prompt for r in self.leaderboard.by_reward()[:3] if r.dev_acc is None]
        todo = list(dict.fromkeys(todo))
        dev_rewards, dev_accs = self.dev_env.score_texts(todo)
        if greedy not in self.leaderboard.records:
            train_r, train_a = self.train_env.score_texts([greedy])
            self.leaderboard.add([greedy], train_r, train_a, self.step)
        for text, acc in zip(todo, dev_accs):
            if text in self.leaderboard.records:  # a greedy prompt whose train score failed is no candidate
                self.leaderboard.records[text].dev_acc = float(acc)
        best = max((r.dev_acc for r in self.leaderboard.records.values() if r.dev_acc is not None),
                   default=self.best_dev)
        if best > self.best_dev + 1e-9:
            self.best_dev, self.evals_without_improvement = best, 0
        else:
            self.evals_without_improvement += 1
        metrics = {"charts/dev_acc": float(dev_accs[0]), "charts/dev_reward": float(dev_rewards[0]),
                   "charts/best_dev_acc": self.best_dev, "greedy_prompt": greedy}
        for callback in self.on_dev_evaluation:
            callback(metrics)
        return metrics

    # ---- after each step ------------------------------------------------------------------
    def progress_bar(self, progress: bool, desc: str = "train"):
        """The run's progress bar, from the current step to cfg.steps."""
        return tqdm(total=self.cfg.steps, initial=self.step, disable=not progress, desc=desc, unit="step")

    def end_step(self, metrics: dict, bar) -> None:
        """After step `self.step`: dev evaluation when due (and the early-stop check), logging, the
        progress bar and the periodic checkpoint. Every training loop calls it."""
        cfg = self.cfg
        if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
            metrics.update(self.evaluate_on_dev())
            if cfg.patience and self.evals_without_improvement >= cfg.patience:
                self.stop_reason = EARLY_STOP
        self.log(metrics)
        bar.update(1)
        nan = float("nan")
        bar.set_postfix(reward=f"{metrics.get('charts/reward_mean', nan):.1f}",
                        acc=f"{metrics.get('charts/train_acc', nan):.2f}",
                        dev=f"{self.best_dev:.2f}" if self.best_dev >= 0 else "-",
                        H=f"{metrics.get('losses/entropy', nan):.2f}")
        if _agreed(not self.interrupted and self.checkpoint_due()):  # rank 0's clock decides for all
            self.save()

    def checkpoint_due(self) -> bool:
        """After step 1, then every --checkpoint-every steps or --checkpoint-every-s seconds, whichever
        comes first: a hard kill (SIGKILL, OOM, power loss) loses at most that much training."""
        return (self.step == 1 or self.step % self.cfg.checkpoint_every == 0
                or time.monotonic() - self._saved_at >= self.cfg.checkpoint_every_s)

    def log(self, metrics: dict) -> None:
        """Append the step's metrics to the history; scalars (and the best prompts) to TensorBoard."""
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

    # ---- checkpoint -----------------------------------------------------------------------
    def state_dict(self, pairs_scored: int | None = None) -> dict:
        """Everything a resume needs: config, step, adaptor, optimizer, RNG, records and the score memo.
        `pairs_scored`: the pairs of all processes (`save` gathers them); the scorer's own count if None."""
        scorer = self.train_env.scorer
        return {
            "config": dataclasses.asdict(self.cfg),
            "step": self.step,
            **{name: part.state_dict() for name, part in self.checkpointed.items()},
            "rng": rng_state(self.generator),
            "leaderboard": self.leaderboard.state_dict(),
            "best_dev": self.best_dev,
            "evals_without_improvement": self.evals_without_improvement,
            "skipped_steps": self.skipped_steps,
            "history": self.history,
            "stop_reason": self.stop_reason,
            "train_s": self.train_s,
            "scorer": scorer.state_dict() if hasattr(scorer, "state_dict") else {},
            "pairs_scored": getattr(scorer, "pairs_scored", 0) if pairs_scored is None else pairs_scored,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (checkpoints from before "scorer" keep their "score_cache")."""
        self.step = state["step"]
        for name, part in self.checkpointed.items():
            if name in state:  # checkpoints from before a part existed (e.g. train_batches) start it fresh
                part.load_state_dict(state[name])
        set_rng_state(state["rng"], self.generator)
        for group in self.optimizer.param_groups:  # a --lr given with --resume applies (the ceiling under --update-kl)
            group["lr"] = min(group["lr"], self.cfg.lr) if self.cfg.update_kl > 0 else self.cfg.lr
        self.leaderboard.load_state_dict(state["leaderboard"])
        self.best_dev = state["best_dev"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.skipped_steps = state["skipped_steps"]
        self.history = state["history"]
        self.train_s = state.get("train_s", 0.0)
        # An early-stopped run resumes straight into its results; one that used its step budget may
        # be resumed with a larger --steps and train on.
        self.stop_reason = state.get("stop_reason") if state.get("stop_reason") == EARLY_STOP else None
        scorer = self.train_env.scorer
        if hasattr(scorer, "load_state_dict"):
            scorer.load_state_dict(state.get("scorer", {"score_cache": state.get("score_cache", {})}))
        # Summed over resumes, as train_s is. The count saved is all processes' (see `save`): rank 0 banks it.
        if hasattr(scorer, "pairs_scored") and (not is_distributed() or torch.distributed.get_rank() == 0):
            scorer.pairs_scored += state.get("pairs_scored", 0)

    def _bank_time(self) -> None:
        if self._clock is not None:
            now = time.perf_counter()
            self.train_s, self._clock = self.train_s + now - self._clock, now

    def save(self) -> Path | None:
        """Write the checkpoint atomically (rank 0 only; the other processes wait for it, and stop with
        the same UserError when it could not be written)."""
        self._bank_time()
        path, error = None, None
        pairs = pairs_scored_by_all(self.train_env.scorer)  # collective: every process, before rank 0 writes
        if not is_distributed() or torch.distributed.get_rank() == 0:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                path = save_checkpoint(self.run_dir, self.state_dict(pairs))
            except OSError as e:
                error = f"cannot write checkpoint in {self.run_dir}: {e.strerror or e}"
        if is_distributed():  # rank 0's outcome, sent once the file is written: the others wait for it here
            error = same_on_all_processes(error)
        if error:
            raise UserError(error)
        self._saved_at = time.monotonic()
        return path

    # ---- the training block ---------------------------------------------------------------
    def _on_signal(self, signum, frame):
        self._signal = signum

    @contextlib.contextmanager
    def running(self):
        """The training loop's block: SIGINT/SIGTERM only set a flag that the loop checks between
        steps (`should_stop`), and the block's wall time is added to train_s."""
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
        if not self.interrupted:
            self.stop_reason = self.stop_reason or "step budget reached"
        self.save()
        self._clock = None  # training time ends with the checkpoint, so a resume reports the same train_s
        return "interrupted" if self.interrupted else self.stop_reason
