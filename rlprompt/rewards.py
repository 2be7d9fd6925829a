"""RLPrompt's classification reward, and the per-step normalization used as the advantage."""

from __future__ import annotations

import torch


def classification_reward(logprobs: torch.Tensor, labels: torch.Tensor,
                          correct_coef: float = 200.0, incorrect_coef: float = 180.0):
    """Per-prompt reward and accuracy from verbalizer log-probs.

    Args:
        logprobs: (P, E, V) log-probs of the V verbalizer tokens for P prompts on E examples.
        labels: (E,) gold label ids.
    Returns:
        (reward (P,), accuracy (P,)): the mean over examples of gap = p(gold) − max p(other),
        probabilities renormalized over the verbalizers, ×correct_coef when the gold label wins
        and ×incorrect_coef when it loses; and the fraction of examples whose argmax is gold.

    Example: one prompt, one example, p = (0.2, 0.8), label 1 -> gap 0.6 -> reward 120, acc 1.
    """
    probs = torch.softmax(logprobs.float(), dim=-1)  # renormalize over the verbalizers only
    gold = probs.gather(-1, labels.view(1, -1, 1).expand(probs.shape[0], -1, 1)).squeeze(-1)
    others = probs.scatter(-1, labels.view(1, -1, 1).expand(probs.shape[0], -1, 1), float("-inf"))
    gap = gold - others.max(-1).values  # (P, E)
    correct = gap > 0
    reward = torch.where(correct, correct_coef * gap, incorrect_coef * gap).mean(-1)
    return reward, correct.float().mean(-1)


def normalize_rewards(rewards: torch.Tensor, scale: float = 5.0, eps: float = 1e-6) -> torch.Tensor:
    """Z-score across the prompts of one step, times `scale`; all-equal rewards give zeros."""
    std = rewards.std(unbiased=False) if rewards.numel() > 1 else rewards.new_tensor(0.0)
    if not torch.isfinite(std) or std < eps:
        return torch.zeros_like(rewards)
    return scale * (rewards - rewards.mean()) / std
