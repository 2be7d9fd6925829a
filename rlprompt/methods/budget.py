"""The pair budget of the method comparison, and the bookkeeping shared by the discrete search methods.

A `PairLedger` counts (prompt, example) pairs against a budget. A `BudgetedScorer` wraps a task-LM
scorer and charges a ledger in one of two explicit counting modes (both kept so that published
comparison numbers do not change):

- `DISTINCT_PAIRS` (the discrete search methods, through `PromptSearch`): each distinct (prompt,
  example) pair is charged once; a pair scored again is free. This equals the CachedScorer's own
  `pairs_scored` as long as each split is scored whole, as the methods do (its memo is keyed by chunks
  of examples).
- `MODEL_PAIRS` (the soft and compression methods): the pairs the task LM actually ran, read from the
  wrapped scorer's `pairs_scored` (an estimate of prompts new to these sentences × sentences for a
  scorer without one).

Either way a call that could go past the budget raises `BudgetExhausted` before anything is scored.

`PromptSearch` is what a discrete method searches with. It scores prompts on train (RLPrompt's
classification reward, the quantity the search optimizes) and on dev (accuracy, used only to select),
keeps every scored prompt in the trainer's `Leaderboard`, and records the curve
(pairs so far, best dev accuracy so far) each time prompts are scored on dev. Both train and dev pairs
count against the budget; scoring the final prompt on test does not. A few dev scorings are held back
(`dev_reserve`) so that when the search runs out, the best prompts by train reward that were never
scored on dev still get their dev score before the final choice.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from rlprompt.bookkeeping import Leaderboard, PromptRecord
from rlprompt.errors import UserError
from rlprompt.evaluation import evaluate_prompts
from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult
from rlprompt.methods.options import option
from rlprompt.rewards import classification_reward
from rlprompt.scorer import chunk_key

DISTINCT_PAIRS = "distinct-pairs"  # each distinct (prompt, example) pair once
MODEL_PAIRS = "model-pairs"  # the pairs the task LM ran (the wrapped scorer's own count)
COUNTING_MODES = (DISTINCT_PAIRS, MODEL_PAIRS)


class PairLedger:
    """Counts scored (prompt, example) pairs against a budget; BudgetExhausted when it would overflow."""

    def __init__(self, budget: int):
        if budget < 1:
            raise UserError(f"pair budget must be at least 1, got {budget}")
        self.budget = budget
        self.used = 0

    @property
    def left(self) -> int:
        return self.budget - self.used

    def fits(self, n: int) -> bool:
        """True when n more pairs fit in the budget."""
        return n <= self.left

    def check(self, n: int) -> None:
        """Raise BudgetExhausted if n more pairs do not fit."""
        if not self.fits(n):
            raise BudgetExhausted(f"{n} more pairs do not fit: {self.used} of {self.budget} used")

    def charge(self, n: int) -> None:
        """Check, then count n pairs."""
        self.check(n)
        self.used += n


class BudgetedScorer:
    """A task-LM scorer that charges `ledger` for what it scores, counted as `count` says
    (DISTINCT_PAIRS or MODEL_PAIRS, see the module docstring); a call that could overflow the budget
    raises BudgetExhausted and scores nothing. Other attributes pass through to the wrapped scorer."""

    def __init__(self, scorer, ledger: PairLedger, count: str):
        if count not in COUNTING_MODES:
            raise ValueError(f"unknown counting mode {count!r}; use {' or '.join(COUNTING_MODES)}")
        self.scorer = scorer
        self.ledger = ledger
        self.count = count
        self._charged: set[tuple[str, str]] = set()  # DISTINCT_PAIRS: (prompt, sentence) pairs
        self._seen: set[tuple[str, str]] = set()  # MODEL_PAIRS: (prompt, chunk_key(sentences))

    def __getattr__(self, name):  # verbalizer_ids, score_cache, state_dict, ... of the wrapped scorer
        if name == "scorer":
            raise AttributeError(name)
        return getattr(self.scorer, name)

    def new_pairs(self, prompts, sentences) -> set[tuple[str, str]]:
        """The pairs of prompts × sentences not charged yet (what scoring them costs in DISTINCT_PAIRS)."""
        return {(p, s) for p in set(prompts) for s in set(sentences)} - self._charged

    def score(self, prompts: list[str], sentences: list[str]) -> torch.Tensor:
        """The wrapped scorer's (P, E, V) log-probs; BudgetExhausted (nothing scored) when over budget."""
        if self.count == DISTINCT_PAIRS:
            new = self.new_pairs(prompts, sentences)
            self.ledger.check(len(new))
            out = self.scorer.score(prompts, sentences)
            self._charged |= new
            self.ledger.used += len(new)
            return out
        key = chunk_key(sentences)
        new_prompts = [p for p in dict.fromkeys(prompts) if (p, key) not in self._seen]
        estimate = len(new_prompts) * len(sentences)  # every prompt not seen on these sentences
        self.ledger.check(estimate)
        before = getattr(self.scorer, "pairs_scored", None)
        out = self.scorer.score(prompts, sentences)
        self.ledger.used += estimate if before is None else self.scorer.pairs_scored - before
        self._seen.update((p, key) for p in new_prompts)
        return out


def prompt_tokens(tokenizer, prompt: str) -> int:
    """Length of a prompt in the task LM's tokens."""
    return len(tokenizer(prompt, add_special_tokens=False).input_ids) if prompt else 0


def score_test(ctx: MethodContext, prompt: str) -> float | None:
    """Test accuracy of one prompt, with the unbudgeted scorer; None with option skip_test=true (or
    test=false, the soft methods' spelling) or without a test set."""
    if option(ctx, "skip_test", False) or not option(ctx, "test", True) or not ctx.task.test:
        return None
    res = evaluate_prompts(ctx.scorer, [prompt], ctx.task.test, progress=bool(ctx.options.get("progress")),
                           desc="test")
    return res[0]["accuracy"]


class PromptSearch:
    """Budgeted train/dev scoring, a leaderboard of every scored prompt and the dev curve of one method."""

    def __init__(self, ctx: MethodContext, dev_reserve: int = 2, desc: str = "search", bar: bool = True):
        self.ctx = ctx
        self.task = ctx.task
        self.dev_reserve = dev_reserve
        reserve = dev_reserve * len(ctx.task.dev)
        if ctx.pair_budget <= reserve:
            raise UserError(f"pair budget {ctx.pair_budget} is too small: {reserve} pairs are held back "
                            f"to score {dev_reserve} final prompts on dev; give a larger --budget")
        self.ledger = PairLedger(ctx.pair_budget - reserve)
        self.scorer = BudgetedScorer(ctx.scorer, self.ledger, DISTINCT_PAIRS)
        self.leaderboard = Leaderboard()
        self.curve: list[tuple[int, float]] = []
        self.best_dev = -1.0
        self.round = 0  # the method's own iteration counter, stored with each record
        self.exhausted = False  # set by score_dev(partial=True) when some prompts did not fit
        self.start = time.perf_counter()
        self.bar = tqdm(total=ctx.pair_budget, desc=desc, unit="pair", leave=False, dynamic_ncols=True,
                        disable=not (bar and option(ctx, "progress", False)))

    def _fit(self, prompts: list[str], examples) -> list[str]:
        """The longest head of `prompts` whose new pairs fit in the budget left."""
        sentences = [e.text for e in examples]
        charged: set = set()
        for i, p in enumerate(prompts):
            charged |= self.scorer.new_pairs([p], sentences)
            if len(charged) > self.ledger.left:
                return prompts[:i]
        return prompts

    def _score(self, prompts, examples) -> tuple[list[str], torch.Tensor, torch.Tensor, bool]:
        prompts = list(dict.fromkeys(prompts))
        fitting = self._fit(prompts, examples)
        if not fitting:
            if prompts:
                raise BudgetExhausted("no budget left for one more prompt")
            return [], torch.zeros(0), torch.zeros(0), False
        before = self.ledger.used
        logprobs = self.scorer.score(fitting, [e.text for e in examples])
        self.bar.update(self.ledger.used - before)
        self.bar.set_postfix(best_dev=f"{self.best_dev:.3f}" if self.best_dev >= 0 else "-")
        reward, acc = classification_reward(logprobs, torch.tensor([e.label for e in examples]))
        return fitting, reward, acc, len(fitting) < len(prompts)

    def score_train(self, prompts: list[str]) -> list[PromptRecord]:
        """Train reward and accuracy of each prompt (memo hits free), added to the leaderboard.

        Scores as many prompts as the budget allows, then raises BudgetExhausted if some were left out.
        """
        done, reward, acc, cut = self._score(prompts, self.task.train)
        for p, r, a in zip(done, reward.tolist(), acc.tolist()):
            if p in self.leaderboard.records:
                continue
            self.leaderboard.records[p] = PromptRecord(p, r, a, self.round)
        if cut:
            raise BudgetExhausted("budget spent while scoring on train")
        return [self.leaderboard.records[p] for p in dict.fromkeys(prompts)]

    def score_dev(self, prompts: list[str], note: bool = True, partial: bool = False) -> list:
        """(dev accuracy, dev reward) of each prompt; dev accuracy is stored on its leaderboard record
        (a record without a train score gets train reward -inf). With `note`, the curve gets a point.

        Scores as many prompts as the budget allows, then raises BudgetExhausted if some were left out;
        with `partial`, returns None for those instead and sets `self.exhausted`.
        """
        done, reward, acc, _ = self._score(prompts, self.task.dev)
        out = {}
        for p, r, a in zip(done, reward.tolist(), acc.tolist()):
            rec = self.leaderboard.records.setdefault(p, PromptRecord(p, float("-inf"), float("nan"),
                                                                      self.round))
            rec.dev_acc = a
            out[p] = (a, r)
            self.best_dev = max(self.best_dev, a)
        if note and done:
            self.note(self.best_dev)
        if len(done) < len(dict.fromkeys(prompts)):
            if not partial:
                raise BudgetExhausted("budget spent while scoring on dev")
            self.exhausted = True
        return [out.get(p) for p in prompts]

    def note(self, dev_acc: float) -> None:
        """Add a curve point: (pairs scored so far, `dev_acc`)."""
        self.curve.append((self.ledger.used, float(dev_acc)))

    def top_by_train(self, k: int, without_dev: bool = False) -> list[PromptRecord]:
        """The k best records by train reward (only those not scored on dev, with `without_dev`)."""
        recs = [r for r in self.leaderboard.by_reward() if not (without_dev and r.dev_acc is not None)]
        return recs[:k]

    def finish(self, method: str, prompt: str | None = None, extra: dict | None = None) -> MethodResult:
        """Spend the dev reserve on the best unscored-on-dev prompts, pick the final prompt (best dev
        accuracy, ties by train reward, unless `prompt` is given) and score it on test."""
        self.ledger.budget += self.dev_reserve * len(self.task.dev)
        if prompt is None:
            pending = [r.prompt for r in self.top_by_train(self.dev_reserve, without_dev=True)]
            try:
                self.score_dev(pending)
            except BudgetExhausted:
                pass
            scored = [r for r in self.leaderboard.records.values() if r.dev_acc is not None]
            if not scored:
                raise UserError(f"{method}: the budget ran out before any prompt was scored on dev")
            prompt = self.leaderboard.best(1)[0].prompt
        record = self.leaderboard.records.get(prompt)
        if record is None or record.dev_acc is None:
            try:
                self.score_dev([prompt])
            except BudgetExhausted:
                raise UserError(f"{method}: pair budget {self.ctx.pair_budget} cannot score the prompt on dev "
                                f"({len(self.task.dev)} pairs); give a larger --budget") from None
            record = self.leaderboard.records[prompt]
        wall_s = time.perf_counter() - self.start
        self.bar.close()
        return MethodResult(
            method=method, prompt=prompt, prompt_tokens=prompt_tokens(self.ctx.task_tokenizer, prompt),
            dev_acc=float(record.dev_acc), test_acc=score_test(self.ctx, prompt),
            pairs_scored=self.ledger.used, wall_s=wall_s, curve=list(self.curve),
            extra={"prompts_scored": len(self.leaderboard.records),
                   "train_reward": record.train_reward if record.train_reward > float("-inf") else None,
                   **(extra or {})},
        )

