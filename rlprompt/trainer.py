"""REINFORCE training of the prompt policy: sample prompts, step the batched env, update the adaptor."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from envs import step_through
from rlprompt.bookkeeping import Bookkeeper, repeated_token_rate
from rlprompt.config import TrainConfig
from rlprompt.distributed import broadcast_module_
from rlprompt.errors import UserError
from rlprompt.minibatch import TrainBatches
from rlprompt.objectives import make_objective


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The adaptor's optimizer of --optimizer at --lr."""
    return (torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam)(params, lr=cfg.lr)


class Trainer:
    """The training loop: sample prompts, score them in the env, minimize the objective of --trainer
    (`rlprompt.objectives`: REINFORCE with a running or z-scored reward scale, entropy and KL terms, or soft
    Q-learning).

    `train_env` is an `envs.PromptBatchEnv` of `cfg.prompts_per_step` prompts: each step the policy
    samples a batch of prompts (keeping the hidden states the update needs), the batch is played
    through the env one token column per env step, and the rewards come from the env's last step.
    `dev_env` scores prompt texts for the dev evaluation. Leaderboard, dev evaluation, early stop,
    logging and checkpoints are `self.book`'s (a `Bookkeeper`); `writer` is a TensorBoard
    SummaryWriter or None.
    """

    def __init__(self, cfg: TrainConfig, policy, train_env, dev_env, run_dir: Path, writer=None):
        if getattr(train_env, "num_envs", None) != cfg.prompts_per_step:
            raise UserError(f"the Trainer steps a batched env of {cfg.prompts_per_step} prompts (--prompts-per-step); "
                            f"got {type(train_env).__name__} with num_envs={getattr(train_env, 'num_envs', None)}")
        self.cfg = cfg
        self.policy = policy
        self.train_env = train_env
        self.optimizer = make_optimizer(cfg, policy.adaptor.parameters())
        self.generator = torch.Generator(device=policy.device).manual_seed(cfg.random_seed)
        self.book = Bookkeeper(cfg, policy, self.optimizer, self.generator, train_env, dev_env, run_dir, writer)
        self.train_batches = TrainBatches(train_env.examples, cfg.train_batch, cfg.random_seed)
        self.book.checkpointed["train_batches"] = self.train_batches
        self.objective = make_objective(cfg, policy)
        self.book.checkpointed["objective"] = self.objective
        self.init_tokens = policy.encode_prompt(cfg.init_prompt) if cfg.init_prompt else None

    def warm_start_bias(self) -> float:
        """Logit bonus toward --init-prompt's tokens: 8 at step 0, decaying to 0 at --init-steps."""
        if self.init_tokens is None or self.book.step >= self.cfg.init_steps:
            return 0.0
        return 8.0 * (1 - self.book.step / self.cfg.init_steps)

    def train_step(self) -> dict:
        """Sample prompts, step them through the env, update the adaptor; returns the step's metrics."""
        cfg, policy = self.cfg, self.policy
        t0 = time.perf_counter()
        batch = policy.sample(cfg.prompts_per_step, generator=self.generator,
                              bias_tokens=self.init_tokens, bias=self.warm_start_bias())
        t1 = time.perf_counter()
        if self.train_batches.sampled:
            self.train_env.set_examples(self.train_batches.next())
        rewards, infos = step_through(self.train_env, batch.tokens)
        accuracies, texts = infos["accuracy"], list(infos["prompt"])
        t2 = time.perf_counter()
        self.book.add_prompts(texts, rewards, accuracies)

        rewards_t = torch.as_tensor(rewards, dtype=torch.float32, device=policy.device)
        before = policy.log_policy(batch.base_hidden) if cfg.update_kl > 0 else None
        loss, loss_metrics = self.objective.loss(batch, rewards_t)
        skipped = not (torch.isfinite(loss) and torch.isfinite(rewards_t).all())
        grad_norm = float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:
            self.book.skipped_steps += 1
        else:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(policy.adaptor.parameters(), cfg.max_grad_norm))
            self.optimizer.step()
            self.objective.after_update()
            if before is not None:
                loss_metrics.update(self.adapt_step_size(before, policy.log_policy(batch.base_hidden)))
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
            "charts/prompts_seen": len(self.book.leaderboard.records),
            "charts/skipped_steps": self.book.skipped_steps,
            **loss_metrics,
            "losses/grad_norm": grad_norm,
            "time/sample_s": t1 - t0, "time/score_s": t2 - t1, "time/update_s": t3 - t2,
        }

    def adapt_step_size(self, before: torch.Tensor, after: torch.Tensor) -> dict:
        """--update-kl δ, a trust region on the step size: KL(π before ‖ π after the update), mean per
        token over the step's prompts; the learning rate halves when it is above 2δ and grows ×1.5 (up
        to --lr) when below δ/2, so no run of updates can collapse the policy in a few steps. The rate
        lives in the optimizer's state (checkpointed)."""
        kl = float((before.exp() * (before - after)).sum(-1).mean())
        group = self.optimizer.param_groups[0]
        if kl > 2 * self.cfg.update_kl:
            group["lr"] = group["lr"] / 2
        elif kl < self.cfg.update_kl / 2:
            group["lr"] = min(self.cfg.lr, group["lr"] * 1.5)
        return {"losses/update_kl": kl, "losses/lr": group["lr"]}

    def run(self, progress: bool = True) -> str:
        """Train until the step budget, early stop or a signal; returns why it stopped.

        SIGINT/SIGTERM finish the current step, write the checkpoint and return 'interrupted'.
        """
        book = self.book
        bar = book.progress_bar(progress, "train")
        with book.running():
            try:
                while book.step < self.cfg.steps and not book.should_stop:
                    metrics = self.train_step()
                    book.step += 1
                    book.end_step(metrics, bar)
                return book.finish()
            finally:
                bar.close()

    def state_dict(self) -> dict:
        """The checkpoint's contents (see Bookkeeper.state_dict)."""
        return self.book.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume from a checkpoint's contents."""
        self.book.load_state_dict(state)


class DataParallelTrainer(Trainer):
    """The REINFORCE Trainer under `accelerate launch`: scoring is sharded (give it envs built on a
    ShardedScorer), the update runs on every process, rank 0's adaptor is then copied to all, and only
    rank 0 writes the checkpoint (as the Bookkeeper does under torch.distributed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        broadcast_module_(self.policy.adaptor)  # the same starting policy everywhere

    def train_step(self) -> dict:
        metrics = super().train_step()
        broadcast_module_(self.policy.adaptor)
        return metrics
