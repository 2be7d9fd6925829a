"""What the Trainer minimizes each step, given the sampled prompts and their rewards.

`Reinforce`: policy gradient on the z-scored reward, with an entropy bonus (fixed, or held at a target
by an adaptive coefficient as SAC tunes its temperature), KL to the initial policy, and an optional
elite term that raises the log-likelihood of the best prompts seen so far (cross-entropy method /
self-imitation). `SoftQ`: RLPrompt's own algorithm, soft Q-learning with the LM's logits as Q-values,
a Polyak-averaged target adaptor and replay of past prompts.

An objective has `loss(batch, rewards) -> (loss, metrics)`, `after_update()` (called after the
optimizer step) and `state_dict()` / `load_state_dict()` (saved in the checkpoint).
"""

from __future__ import annotations

import copy
import math

import torch

from rlprompt.config import TrainConfig
from rlprompt.rewards import normalize_rewards

MAX_ENTROPY_COEF = 100.0


class Elite:
    """The `size` best distinct prompts by train reward so far: their tokens and base hidden states."""

    def __init__(self, size: int):
        self.size = size
        self.rewards: list[float] = []
        self.tokens: list[torch.Tensor] = []
        self.hidden: list[torch.Tensor] = []

    def add(self, batch, rewards: torch.Tensor) -> None:
        """Offer a step's prompts: new ones with a finite reward enter, and only the best `size` stay."""
        seen = {tuple(t.tolist()) for t in self.tokens}
        for i in range(len(rewards)):
            key = tuple(batch.tokens[i].tolist())
            if key in seen or not math.isfinite(float(rewards[i])):
                continue
            seen.add(key)
            self.rewards.append(float(rewards[i]))
            self.tokens.append(batch.tokens[i].detach().cpu())
            self.hidden.append(batch.base_hidden[i].detach().cpu())
        keep = sorted(range(len(self.rewards)), key=lambda j: -self.rewards[j])[:self.size]
        self.rewards = [self.rewards[j] for j in keep]
        self.tokens = [self.tokens[j] for j in keep]
        self.hidden = [self.hidden[j] for j in keep]

    def state_dict(self) -> dict:
        return {"rewards": self.rewards, "tokens": self.tokens, "hidden": self.hidden}

    def load_state_dict(self, state: dict) -> None:
        self.rewards, self.tokens, self.hidden = state["rewards"], state["tokens"], state["hidden"]


def clip_covariance(log_probs: torch.Tensor, advantages: torch.Tensor, fraction: float):
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of RL for Reasoning LMs"): `log_probs` (N, T)
    with the gradient detached at the `fraction` of tokens whose centred (log π, A) product is largest
    and positive: likely tokens of above-average prompts and unlikely ones of below-average prompts,
    the policy-gradient terms that lower the entropy most. Returns (log_probs, clipped mask); the
    mean covariance over all tokens comes back with them (the driver of the entropy's change)."""
    logp = log_probs.detach()
    adv = advantages.detach()[:, None].expand_as(logp)
    cov = (adv - adv.mean()) * (logp - logp.mean())
    k = int(round(fraction * cov.numel()))
    clipped = torch.zeros_like(cov, dtype=torch.bool)
    if k > 0:
        clipped.view(-1)[cov.flatten().topk(k).indices] = True
        clipped &= cov > 0
    return torch.where(clipped, logp, log_probs), clipped, float(cov.mean())


class RunningScale:
    """Advantages over a running reward scale: A = scale × (r − mean of the step) / σ, with σ² an
    exponential moving average (decay `decay`, bias-corrected) of the steps' reward variances. Unlike a
    per-step z-score, A shrinks when a step's prompts score alike, so the policy stops being pushed at a
    fixed rate once its samples agree (PPO's running reward scaling, with the step's mean as baseline)."""

    def __init__(self, scale: float, decay: float, eps: float = 1e-6):
        self.scale, self.decay, self.eps = scale, decay, eps
        self.mean_var, self.weight = 0.0, 0.0  # weight: the EMA's bias correction

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        """(N,) rewards of one step -> (N,) advantages; non-finite variances leave the scale as it was."""
        var = float(rewards.var(unbiased=False)) if rewards.numel() > 1 else 0.0
        if math.isfinite(var):
            self.mean_var = self.decay * self.mean_var + (1 - self.decay) * var
            self.weight = self.decay * self.weight + (1 - self.decay)
        std = math.sqrt(self.mean_var / self.weight) if self.weight > 0 else 0.0
        if std < self.eps:
            return torch.zeros_like(rewards)
        return self.scale * (rewards - rewards.mean()) / std

    def state_dict(self) -> dict:
        return {"mean_var": self.mean_var, "weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        self.mean_var, self.weight = state["mean_var"], state["weight"]


class Reinforce:
    """REINFORCE: −Σ_t A·log π(a_t) with A the per-step z-scored reward × --reward-scale (or, with
    --advantage running, the reward minus the step's mean over a running scale: `RunningScale`), minus the
    entropy bonus, plus --kl-coef × KL(π ‖ π_init), minus --elite-coef × the mean log-likelihood of the
    --elite-size best prompts so far. With --cov-clip the most entropy-lowering tokens leave the
    policy-gradient term (`clip_covariance`). π is the adapted LM's full softmax, or with --logprobs masked
    the distribution over the tokens sampling may draw.

    With --entropy-target H > 0 the entropy coefficient c adapts after every update:
    log c += --entropy-coef-lr × (H − mean per-token entropy), kept between --entropy-coef and 100, so
    it rises as soon as sampling falls below H nats per token and the policy does not collapse onto
    one prompt (SAC tunes its temperature the same way).
    """

    def __init__(self, cfg: TrainConfig, policy):
        self.cfg = cfg
        self.policy = policy
        self.log_entropy_coef = self._log_floor
        self.elite = Elite(cfg.elite_size)
        self.running = RunningScale(cfg.reward_scale, cfg.advantage_decay)
        self._entropy = None

    @property
    def _log_floor(self) -> float:
        return math.log(max(self.cfg.entropy_coef, 1e-8))

    @property
    def entropy_coef(self) -> float:
        return math.exp(self.log_entropy_coef) if self.cfg.entropy_target > 0 else self.cfg.entropy_coef

    def loss(self, batch, rewards: torch.Tensor):
        """(loss to minimize, scalars to log) for one step's sampled prompts and their rewards."""
        cfg, policy = self.cfg, self.policy
        advantages = self.running(rewards) if cfg.advantage == "running" else \
            normalize_rewards(rewards, cfg.reward_scale)  # (N,)
        masked = cfg.logprobs == "masked"
        log_probs, entropy, kl = policy.evaluate_actions(batch.base_hidden, batch.tokens, masked)  # (N, T)
        pg_log_probs, clipped, token_cov = clip_covariance(log_probs, advantages, cfg.cov_clip)
        policy_loss = -(advantages[:, None] * pg_log_probs).sum(1).mean()
        loss = policy_loss - self.entropy_coef * entropy.mean() + cfg.kl_coef * kl.sum(1).mean()
        metrics = {"losses/policy_loss": float(policy_loss.detach()),
                   "losses/entropy": float(entropy.detach().mean()),
                   "losses/kl_to_init": float(kl.detach().sum(1).mean()),
                   "losses/entropy_coef": self.entropy_coef,
                   "losses/advantage_abs": float(advantages.abs().mean()),
                   "losses/token_cov": token_cov,
                   "losses/cov_clipped": float(clipped.float().mean())}
        if cfg.elite_coef > 0:
            self.elite.add(batch, rewards)
        if cfg.elite_coef > 0 and self.elite.tokens:  # empty while no step has scored
            hidden = torch.stack(self.elite.hidden).to(policy.device)
            tokens = torch.stack(self.elite.tokens).to(policy.device)
            elite_logp, _, _ = policy.evaluate_actions(hidden, tokens, masked)
            elite_loss = -elite_logp.sum(1).mean()
            loss = loss + cfg.elite_coef * elite_loss
            metrics["losses/elite_nll"] = float(elite_loss.detach())
            metrics["charts/elite_reward_min"] = min(self.elite.rewards)
        self._entropy = float(entropy.detach().mean())
        return loss, metrics

    def after_update(self) -> None:
        """With --entropy-target: move the entropy coefficient toward holding the target entropy."""
        if self.cfg.entropy_target > 0 and self._entropy is not None and math.isfinite(self._entropy):
            step = self.cfg.entropy_coef_lr * (self.cfg.entropy_target - self._entropy)
            low, high = self._log_floor, math.log(MAX_ENTROPY_COEF)
            self.log_entropy_coef = min(high, max(low, self.log_entropy_coef + step))

    def state_dict(self) -> dict:
        return {"log_entropy_coef": self.log_entropy_coef, "elite": self.elite.state_dict(),
                "running": self.running.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.log_entropy_coef = state["log_entropy_coef"]
        self.elite.load_state_dict(state["elite"])
        if "running" in state:  # checkpoints from before --advantage running
            self.running.load_state_dict(state["running"])


class Replay:
    """The last `size` sampled prompts (tokens, base hidden states, shaped rewards), drawn uniformly."""

    def __init__(self, size: int, seed: int):
        self.size = size
        self.tokens = self.hidden = self.rewards = None
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, tokens, hidden, rewards) -> None:
        """Append prompts (tokens, base hidden states, shaped rewards); the oldest beyond `size` drop out."""
        parts = (tokens.detach().cpu(), hidden.detach().cpu(), rewards.detach().cpu())
        if self.tokens is not None:
            parts = tuple(torch.cat([old, new])[-self.size:] for old, new in
                          zip((self.tokens, self.hidden, self.rewards), parts))
        self.tokens, self.hidden, self.rewards = parts

    def sample(self, n: int):
        """n stored prompts drawn uniformly with replacement: (tokens, hidden states, rewards)."""
        picks = torch.randint(len(self.tokens), (n,), generator=self.generator)
        return self.tokens[picks], self.hidden[picks], self.rewards[picks]

    def state_dict(self) -> dict:
        return {"tokens": self.tokens, "hidden": self.hidden, "rewards": self.rewards,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.tokens, self.hidden, self.rewards = state["tokens"], state["hidden"], state["rewards"]
        self.generator.set_state(state["generator"])


class SoftQ:
    """Soft Q-learning with sparse reward (RLPrompt, Deng et al. 2022; Guo et al. 2021): the adapted
    LM's masked logits are Q(s, a), V(s) = logsumexp_a Q(s, a), and sampling from softmax(Q) is the
    policy. The reward is the step's z-scored reward × --reward-scale, given at the last token.

    Loss = ½ (one-step + multi-step), both squared errors against a target adaptor (Polyak average,
    rate --sql-target-rate) on the step's prompts and as many replayed from the last --sql-replay:
      one-step:   Q(s_t, a_t) → V̄(s_{t+1}), and Q(s_T, a_T) → r
      multi-step: Σ_{k≥t} [Q(s_k, a_k) − V(s_k)] → r − V̄(s_t)   (path consistency)
    """

    def __init__(self, cfg: TrainConfig, policy):
        self.cfg = cfg
        self.policy = policy
        self.target = copy.deepcopy(policy.adaptor).requires_grad_(False)
        self.replay = Replay(cfg.sql_replay, cfg.random_seed)

    def _losses(self, hidden, tokens, rewards):
        q_all = self.policy.masked_logits(hidden, tokens)  # (N, T, V)
        with torch.no_grad():
            v_target = torch.logsumexp(self.policy.masked_logits(hidden, tokens, self.target), -1)  # (N, T)
        q = q_all.gather(-1, tokens[..., None]).squeeze(-1)
        v = torch.logsumexp(q_all, -1)
        next_value = torch.cat([v_target[:, 1:], rewards[:, None]], 1)
        one_step = ((q - next_value) ** 2).mean()
        advantage_to_go = (q - v).flip(1).cumsum(1).flip(1)
        multi_step = ((advantage_to_go - (rewards[:, None] - v_target)) ** 2).mean()
        return one_step, multi_step

    def loss(self, batch, rewards: torch.Tensor):
        """(loss to minimize, scalars to log): path consistency on the step's prompts and as many replayed."""
        shaped = normalize_rewards(rewards, self.cfg.reward_scale)
        tokens, hidden, shaped_all = batch.tokens, batch.base_hidden, shaped
        if self.replay.tokens is not None:
            old_tokens, old_hidden, old_rewards = self.replay.sample(len(shaped))
            device = self.policy.device
            tokens = torch.cat([tokens, old_tokens.to(device)])
            hidden = torch.cat([hidden, old_hidden.to(device)])
            shaped_all = torch.cat([shaped_all, old_rewards.to(device)])
        one_step, multi_step = self._losses(hidden, tokens, shaped_all)
        loss = 0.5 * (one_step + multi_step)
        if torch.isfinite(rewards).all():  # a step with a failed score is skipped, and not replayed
            self.replay.add(batch.tokens, batch.base_hidden, shaped)
        entropy = self.policy.evaluate_actions(batch.base_hidden, batch.tokens)[1].detach()
        return loss, {"losses/sql_one_step": float(one_step.detach()),
                      "losses/sql_multi_step": float(multi_step.detach()),
                      "losses/entropy": float(entropy.mean())}

    def after_update(self) -> None:
        """Polyak-average the target adaptor toward the online one (--sql-target-rate)."""
        rate = self.cfg.sql_target_rate
        with torch.no_grad():
            for target, online in zip(self.target.parameters(), self.policy.adaptor.parameters()):
                target.lerp_(online, rate)

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict(), "replay": self.replay.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.target.load_state_dict(state["target"])
        self.replay.load_state_dict(state["replay"])


def make_objective(cfg: TrainConfig, policy):
    """The objective of --trainer: SoftQ for sql, else Reinforce."""
    return SoftQ(cfg, policy) if cfg.trainer == "sql" else Reinforce(cfg, policy)
