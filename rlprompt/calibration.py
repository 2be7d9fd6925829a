"""Calibrated scoring: remove a prompt's bias toward some verbalizers before the argmax or the reward.

A calibrated score is `log_softmax(verbalizer log-probs) - vector`, with one vector (one float per
verbalizer) per prompt, estimated on inputs whose labels are never read:

  batch       the mean over the task's unlabeled train inputs of the prompt's verbalizer log-softmax
              (Zhou et al., 2023, "Batch Calibration")
  contextual  the mean over content-free inputs ("N/A", "", "[MASK]") rendered in the template with
              the prompt (Zhao et al., 2021, "Calibrate Before Use")
  none        no calibration (the vector is zero)

`CalibratedScorer` wraps any scorer and returns calibrated log-probs, so the environments' reward,
dev selection, evaluate.py and the method comparison all use it unchanged. A vector is saved with its
prompt in prompts.json (`{"mode": "batch", "vector": [...]}`) and given back to the scorer when the
prompt is scored again, so a prompt is always used with the calibration it was found with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlprompt.errors import UserError
from rlprompt.minibatch import fixed_sample

MODES = ("none", "batch", "contextual")
CONTENT_FREE = ("N/A", "", "[MASK]")
MAX_UNLABELED = 128  # batch calibration's estimation set: a fixed sample when the train split is larger


def check_mode(mode: str) -> str:
    """`mode` if it is a calibration mode, else a UserError naming the modes."""
    if mode not in MODES:
        raise UserError(f"unknown calibration {mode!r}; use {', '.join(MODES)}")
    return mode


def normalize(logprobs: torch.Tensor) -> torch.Tensor:
    """(..., V) verbalizer log-probs -> log-softmax over the verbalizers, fp32."""
    return torch.log_softmax(logprobs.float(), dim=-1)


def apply(logprobs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """(P, E, V) verbalizer log-probs and (P, V) vectors -> (P, E, V) calibrated log-probs."""
    return normalize(logprobs) - vectors.float()[:, None, :]


def unlabeled_inputs(examples: Sequence, limit: int = MAX_UNLABELED, seed: int = 0) -> list[str]:
    """Batch calibration's estimation inputs: the texts of `examples`, all of them in file order when
    there are at most `limit`, else a fixed seeded sample of `limit` kept in file order (each new
    prompt's vector costs `limit` scored pairs, whatever the size of the train file)."""
    return [e.text for e in fixed_sample(examples, limit, seed)]


def content_free_inputs(scorer) -> list[str]:
    """The content-free inputs of contextual calibration; a masked LM's own mask token is left out
    (its scorer needs exactly one mask, where the label is read)."""
    mask = getattr(getattr(raw(scorer), "tokenizer", None), "mask_token", None)
    return [text for text in CONTENT_FREE if not (mask and text == mask)]


def estimate(scorer, mode: str, prompts: Sequence[str], unlabeled: Sequence[str]) -> torch.Tensor:
    """(P, V) calibration vectors of `prompts`: `unlabeled` are the inputs of batch calibration."""
    check_mode(mode)
    prompts = list(prompts)
    if mode == "none" or not prompts:
        return torch.zeros(len(prompts), len(scorer.verbalizer_ids))
    inputs = list(unlabeled) if mode == "batch" else content_free_inputs(scorer)
    if not inputs:
        raise UserError("batch calibration needs unlabeled train inputs, and the task has no train examples")
    return normalize(scorer.score(prompts, inputs)).mean(1)


def raw(scorer):
    """The uncalibrated scorer under a CalibratedScorer (the scorer itself otherwise)."""
    return scorer.scorer if isinstance(scorer, CalibratedScorer) else scorer


def saved_vectors(rows: Sequence[dict], mode: str, num_verbalizers: int, where: str) -> dict[str, list[float]]:
    """Prompt -> vector from prompts.json rows calibrated with `mode`; a UserError when a row has no
    vector of that mode or one of the wrong length."""
    out = {}
    for row in rows:
        cal = row.get("calibration") or {"mode": "none"}
        if cal.get("mode") != mode or not isinstance(cal.get("vector"), list):
            raise UserError(f"{where}: prompt {row['prompt']!r} has no {mode} calibration vector (it was "
                            f"scored with calibration {cal.get('mode')!r}); drop --calibration to score the "
                            f"run's prompts as they were trained, or train with --calibration {mode}")
        if len(cal["vector"]) != num_verbalizers:
            raise UserError(f"{where}: the calibration vector of {row['prompt']!r} has {len(cal['vector'])} "
                            f"values for {num_verbalizers} verbalizers")
        out[row["prompt"]] = [float(v) for v in cal["vector"]]
    return out


class CalibratedScorer:
    """A scorer whose `score` returns calibrated log-probs; other attributes pass through.

    Args:
        scorer: the task-LM scorer (cached, naive, masked or sharded).
        mode: 'batch' or 'contextual' ('none' passes log-softmaxed scores through).
        unlabeled: the train inputs whose labels are never read (batch calibration's estimation set).
        vectors: prompt -> saved vector; those prompts use it instead of a new estimate.

    Example: with batch calibration a prompt under which every train input gets p(" great") = 0.9
    has vector ≈ (log 0.1, log 0.9), so an input at exactly that bias scores as a tie.
    """

    def __init__(self, scorer, mode: str, unlabeled: Sequence[str], vectors: dict[str, list[float]] | None = None,
                 per_call: bool = False):
        self.scorer = scorer
        self.mode = check_mode(mode)
        self.unlabeled = list(unlabeled)
        self.per_call = per_call and self.mode == "batch"
        self._vectors: dict[str, torch.Tensor] = {p: torch.tensor(v, dtype=torch.float32)
                                                  for p, v in (vectors or {}).items()}

    def __getattr__(self, name):  # pairs_scored, verbalizer_ids, encoder, score_cache, ...
        if name == "scorer":
            raise AttributeError(name)
        return getattr(self.scorer, name)

    @property
    def pairs_scored(self) -> int:
        """Pairs the wrapped scorer sent through its model (estimation pairs included)."""
        return self.scorer.pairs_scored

    @pairs_scored.setter
    def pairs_scored(self, value: int) -> None:  # a resume banks earlier pairs on the wrapped scorer, not here
        self.scorer.pairs_scored = value

    def around(self, scorer) -> "CalibratedScorer":
        """The same calibration (mode, unlabeled inputs, the vectors known so far) around another scorer."""
        other = CalibratedScorer(scorer, self.mode, self.unlabeled, per_call=self.per_call)
        other._vectors = dict(self._vectors)
        return other

    def per_call_view(self) -> "CalibratedScorer":
        """The same scorer calibrating each `score` call on that call's own inputs (batch mode: the mean
        over the inputs being scored, Batch Calibration as first proposed), at no extra pairs: the reward
        of a large train file, whose fresh mini-batch each step would otherwise need a vector per new
        prompt from the estimation sample. Its vectors are shared with this scorer but never written."""
        view = CalibratedScorer(self.scorer, self.mode, self.unlabeled, per_call=True)
        view._vectors = self._vectors
        return view

    def vectors(self, prompts: Sequence[str]) -> torch.Tensor:
        """(P, V) vectors of `prompts`, estimated once per prompt (or saved) and remembered."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._vectors))
        if missing:
            for p, v in zip(missing, estimate(self.scorer, self.mode, missing, self.unlabeled)):
                self._vectors[p] = v
        if not prompts:
            return torch.zeros(0, len(self.scorer.verbalizer_ids))
        return torch.stack([self._vectors[p] for p in prompts])

    def score(self, prompts: list[str], sentences: list[str]) -> torch.Tensor:
        """(P, E, V) calibrated log-probs."""
        prompts, sentences = list(prompts), list(sentences)
        logprobs = self.scorer.score(prompts, sentences)
        if self.per_call:
            return apply(logprobs, normalize(logprobs).mean(1))
        if self.mode == "batch" and sentences == self.unlabeled:  # the estimation set itself: no rescoring
            for p, v in zip(prompts, normalize(logprobs).mean(1)):
                self._vectors.setdefault(p, v)
        return apply(logprobs, self.vectors(prompts))

    def calibration(self, prompt: str) -> dict:
        """The prompts.json entry of a prompt: {"mode", "vector"} ({"mode": "none"} uncalibrated)."""
        if self.mode == "none":
            return {"mode": "none"}
        return {"mode": self.mode, "vector": [float(x) for x in self.vectors([prompt])[0]]}


def calibrated(scorer, mode: str, unlabeled: Sequence[str], vectors: dict[str, list[float]] | None = None):
    """`scorer` wrapped in a CalibratedScorer, or `scorer` itself for mode 'none'."""
    if check_mode(mode) == "none":
        return scorer
    return CalibratedScorer(scorer, mode, unlabeled, vectors)
