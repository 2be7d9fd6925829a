"""Accuracy of prompts on labelled examples, scored by a task-LM scorer in chunks (with a progress bar)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from rlprompt.tasks import Example


def accuracy(logprobs: torch.Tensor, labels) -> torch.Tensor:
    """(P, E, V) verbalizer log-probs and E labels -> (P,) accuracy of each prompt (argmax over V)."""
    labels = torch.as_tensor(labels, dtype=torch.long, device=logprobs.device)
    if logprobs.shape[1] != labels.numel():
        raise ValueError(f"{logprobs.shape[1]} examples scored but {labels.numel()} labels given")
    if labels.numel() == 0:
        return torch.full((logprobs.shape[0],), float("nan"))
    return (logprobs.argmax(-1) == labels).float().mean(-1)


def score_examples(scorer, prompts: Sequence[str], examples: Sequence[Example], chunk_size: int = 128,
                   progress: bool = True, desc: str | None = None) -> torch.Tensor:
    """(P, E, V) log-probs of every prompt on every example, through `scorer.score` in example chunks.

    Examples are scored shortest rendered input first, so each chunk pads to a similar length (test sets mix
    one-line and paragraph-long inputs), and the result is put back in the examples' order. The
    progress bar counts (prompt, example) pairs and advances after each chunk.
    """
    prompts, sentences = list(prompts), [ex.text for ex in examples]
    encoder = getattr(scorer, "encoder", None)
    length = (lambda s: len(encoder.encode_pair("", s))) if encoder is not None else len
    order = sorted(range(len(sentences)), key=lambda i: length(sentences[i]))
    parts = []
    with tqdm(total=len(prompts) * len(sentences), desc=desc, unit="pair", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for i in range(0, len(order), chunk_size):
            chunk = [sentences[j] for j in order[i:i + chunk_size]]
            parts.append(scorer.score(prompts, chunk))
            bar.update(len(prompts) * len(chunk))
    if not parts:
        return torch.zeros(len(prompts), 0, len(scorer.verbalizer_ids))
    scores = torch.empty_like(torch.cat(parts, dim=1))
    scores[:, order] = torch.cat(parts, dim=1)
    return scores


def evaluate_prompts(scorer, prompts: Sequence[str], examples: Sequence[Example], chunk_size: int = 128,
                     progress: bool = True, desc: str | None = None) -> list[dict]:
    """Accuracy of each prompt on `examples`: [{"prompt", "accuracy", "n"}] in the order of `prompts`."""
    logprobs = score_examples(scorer, prompts, examples, chunk_size, progress, desc)
    acc = accuracy(logprobs, [ex.label for ex in examples])
    return [{"prompt": p, "accuracy": float(a), "n": len(examples)} for p, a in zip(prompts, acc)]
