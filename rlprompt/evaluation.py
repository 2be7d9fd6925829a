"""Accuracy of prompts on labelled examples, scored by a task-LM scorer in chunks (with a progress bar)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from rlprompt.distributed import is_distributed, same_on_all_processes
from rlprompt.tasks import Example


def accuracy(logprobs: torch.Tensor, labels) -> torch.Tensor:
    """(P, E, V) verbalizer log-probs and E labels -> (P,) accuracy of each prompt (argmax over V)."""
    labels = torch.as_tensor(labels, dtype=torch.long, device=logprobs.device)
    if logprobs.shape[1] != labels.numel():
        raise ValueError(f"{logprobs.shape[1]} examples scored but {labels.numel()} labels given")
    if labels.numel() == 0:
        return torch.full((logprobs.shape[0],), float("nan"))
    return (logprobs.argmax(-1) == labels).float().mean(-1)


def _shortest_first(scorer, examples: Sequence[Example], chunk_size: int) -> tuple[list[int], list[list[str]]]:
    """(order, chunks): the examples' indices by rendered length, and their texts in chunks of that order."""
    sentences = [ex.text for ex in examples]
    encoder = getattr(scorer, "encoder", None)
    length = (lambda s: len(encoder.encode_pair("", s))) if encoder is not None else len
    order = sorted(range(len(sentences)), key=lambda i: length(sentences[i]))
    return order, [[sentences[j] for j in order[i:i + chunk_size]] for i in range(0, len(order), chunk_size)]


def score_examples(scorer, prompts: Sequence[str], examples: Sequence[Example], chunk_size: int = 128,
                   progress: bool = True, desc: str | None = None) -> torch.Tensor:
    """(P, E, V) log-probs of every prompt on every example, through `scorer.score` in example chunks.

    Examples are scored shortest rendered input first, so each chunk pads to a similar length (test sets mix
    one-line and paragraph-long inputs), and the result is put back in the examples' order. The
    progress bar counts (prompt, example) pairs and advances after each chunk.
    """
    prompts = list(prompts)
    order, chunks = _shortest_first(scorer, examples, chunk_size)
    parts = []
    with tqdm(total=len(prompts) * len(examples), desc=desc, unit="pair", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for chunk in chunks:
            parts.append(scorer.score(prompts, chunk))
            bar.update(len(prompts) * len(chunk))
    if not parts:
        return torch.zeros(len(prompts), 0, len(scorer.verbalizer_ids))
    scores = torch.empty_like(torch.cat(parts, dim=1))
    scores[:, order] = torch.cat(parts, dim=1)
    return scores


def prefill_score_memo(scorer, prompt_lists: Sequence[Sequence[str]], examples: Sequence[Example],
                       chunk_size: int = 128, progress: bool = True, desc: str | None = None) -> None:
    """Fill a prefix-caching scorer's memo with every list of prompts on `examples`, chunk by chunk in
    turn (each list on the first chunk, then each on the second, …), so each chunk's prefix keys and
    values, which the scorer keeps for a few chunks only, are computed once for all the lists.

    `score_examples` calls of the same lists in the same order afterwards read the memo: they return
    exactly what they would have without this call, since every `scorer.score` call saw the same
    prompts and examples. Does nothing where nothing would be saved or the memo could not keep it all:
    a scorer without a prefix cache, a template with the input after the prompt (its prefix is the same
    for every example), fewer than two lists, or more scores than half the memo's room.
    """
    from rlprompt.scorer import CachedScorer

    inner = scorer
    while not isinstance(inner, CachedScorer) and hasattr(inner, "scorer"):  # calibrated, sharded
        inner = inner.scorer
    lists = [list(p) for p in prompt_lists if p]
    if not isinstance(inner, CachedScorer) or inner.group_by_length or len(lists) < 2:
        return
    _, chunks = _shortest_first(scorer, examples, chunk_size)
    entries = sum(map(len, lists)) * sum(-(-len(c) // inner.example_chunk) for c in chunks)  # (prompt, sub-chunk)
    fits = len(inner.score_cache) + entries <= inner.score_cache_size // 2
    if is_distributed():
        fits = same_on_all_processes(fits)  # each process's memo is its own: all must make the same calls
    if not fits:
        return
    with tqdm(total=sum(map(len, lists)) * len(examples), desc=desc, unit="pair", disable=not progress,
              leave=False, dynamic_ncols=True) as bar:
        for chunk in chunks:
            for prompts in lists:
                scorer.score(prompts, chunk)
                bar.update(len(prompts) * len(chunk))


def evaluate_prompts(scorer, prompts: Sequence[str], examples: Sequence[Example], chunk_size: int = 128,
                     progress: bool = True, desc: str | None = None) -> list[dict]:
    """Accuracy of each prompt on `examples`: [{"prompt", "accuracy", "n"}] in the order of `prompts`."""
    if not prompts:  # e.g. evaluate.py with the baselines only
        return []
    logprobs = score_examples(scorer, prompts, examples, chunk_size, progress, desc)
    acc = accuracy(logprobs, [ex.label for ex in examples])
    return [{"prompt": p, "accuracy": float(a), "n": len(examples)} for p, a in zip(prompts, acc)]
