"""RLPrompt's classification reward, a distillation reward (match a teacher prompt's predictions),
and the per-step normalization used as the advantage."""

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


def verbalizer_kl(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) per example over the verbalizer distribution (renormalized over V).

    Args:
        teacher_logprobs: (E, V) verbalizer log-probs under the teacher (full-vocabulary or not).
        student_logprobs: (..., E, V) the same under one or more students.
    Returns:
        (..., E) KL in nats, >= 0.
    """
    t = torch.log_softmax(teacher_logprobs.float(), dim=-1)
    s = torch.log_softmax(student_logprobs.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1).clamp_min(0.0)


class DistillationReward:
    """Reward for matching a teacher prompt's predictions: −KL(teacher ‖ prompt) over the verbalizers,
    averaged over examples. A callable with the signature of `classification_reward`.

    Args:
        teacher_logprobs: (E, V) verbalizer log-probs of the teacher (e.g. a long instruction) on the
            same E examples, in the same order, as the log-probs the reward will be called with.
    Returns (from a call with (P, E, V) log-probs; labels are ignored):
        (reward (P,), agreement (P,)): −mean KL, and the share of examples whose argmax label equals
        the teacher's.

    Example: teacher p = (0.2, 0.8) on one example; a prompt giving the same distribution gets
    reward 0 and agreement 1.
    """

    def __init__(self, teacher_logprobs: torch.Tensor):
        self.teacher_logprobs = teacher_logprobs.float()
        self.teacher_labels = self.teacher_logprobs.argmax(-1)

    def __call__(self, logprobs: torch.Tensor, labels: torch.Tensor | None = None):
        if logprobs.shape[-2:] != self.teacher_logprobs.shape:
            raise ValueError(f"log-probs of shape {tuple(logprobs.shape)} do not match the teacher's "
                             f"{tuple(self.teacher_logprobs.shape)} (examples, verbalizers)")
        kl = verbalizer_kl(self.teacher_logprobs, logprobs)  # (P, E)
        agreement = (logprobs.argmax(-1) == self.teacher_labels).float().mean(-1)
        return -kl.mean(-1), agreement


def normalize_rewards(rewards: torch.Tensor, scale: float = 5.0, eps: float = 1e-6) -> torch.Tensor:
    """Z-score across the prompts of one step, times `scale`; all-equal rewards give zeros."""
    std = rewards.std(unbiased=False) if rewards.numel() > 1 else rewards.new_tensor(0.0)
    if not torch.isfinite(std) or std < eps:
        return torch.zeros_like(rewards)
    return scale * (rewards - rewards.mean()) / std
