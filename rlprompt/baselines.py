"""The baselines a user would try before RL, scored on the same task LM, examples and verbalizers:

  no prompt        the template with an empty prompt
  manual prompt    the best on dev of the task's hand-written prompts (`manual_prompts` in the task file)
  4-shot           four train examples rendered through the template with their gold verbalizer, in
                   front of the input (balanced over classes, order fixed by the seed), no prompt
  ... (batch)      each of these with batch calibration (vectors from the unlabeled train inputs)

`Baselines(scorer, task, seed).rows({"dev": task.dev, "test": task.test})` scores them; `strongest`
names the one to beat.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rlprompt.calibration import apply, estimate, unlabeled_inputs
from rlprompt.errors import UserError
from rlprompt.evaluation import accuracy, score_examples
from rlprompt.scorer import PromptEncoder
from rlprompt.tasks import Example, Task

K_SHOT = 4
DEMO_SEPARATOR = "\n\n"


def calibration_modes(calibration: str) -> list[str]:
    """The calibrations the baselines are also shown with in a run calibrated with `calibration`: batch
    always, contextual too for a contextual run. Runs whose modes agree have the same baseline rows."""
    return ["batch"] + (["contextual"] if calibration == "contextual" else [])


def manual_candidates(task: Task) -> list[str]:
    """The task's hand-written prompts: `manual_prompt` first, then `manual_prompts`, duplicates dropped."""
    return list(dict.fromkeys(p for p in [task.manual_prompt, *getattr(task, "manual_prompts", [])] if p))


def pick_demos(examples: Sequence[Example], k: int, seed: int) -> list[Example]:
    """k examples balanced over the classes (round robin over a seeded shuffle of each class), in a
    seeded order. Texts with braces are skipped (the demos become part of a template)."""
    rng = random.Random(seed)
    pools = {}
    for ex in examples:
        if "{" not in ex.text and "}" not in ex.text:
            pools.setdefault(ex.label, []).append(ex)
    for label in sorted(pools):
        rng.shuffle(pools[label])
    demos, i = [], 0
    while len(demos) < k and any(i < len(pool) for pool in pools.values()):
        demos += [pools[label][i] for label in sorted(pools) if i < len(pools[label])]
        i += 1
    demos = demos[:k]
    rng.shuffle(demos)
    return demos


def demo_template(task: Task, demos: Sequence[Example]) -> str:
    """The task's template preceded by the demos, each rendered with an empty prompt and its gold verbalizer."""
    encoder = PromptEncoder(None, task.template)
    rendered = ["".join(encoder.texts("", ex.text)) + task.verbalizers[ex.label] for ex in demos]
    return DEMO_SEPARATOR.join(rendered + [task.template])


def distinct_prompts(rows) -> list[str]:
    """The rows' prompts, each once, in order of first appearance: what one scoring call gets."""
    return list(dict.fromkeys(row["prompt"] for row in rows))


def _same_kind(scorer, template: str, verbalizers: list[str]):
    """A scorer like `scorer` (same model, kind, sharding) for another template."""
    from rlprompt.distributed import ShardedScorer, unwrap_scorer
    from rlprompt.scorer import CachedScorer, MaskedScorer, NaiveScorer, build_scorer

    local = unwrap_scorer(scorer)
    kind = {CachedScorer: "cached", NaiveScorer: "naive", MaskedScorer: "masked"}.get(type(local), "auto")
    new = build_scorer(local.model, local.tokenizer, template, verbalizers, kind)
    return ShardedScorer(new) if isinstance(scorer, ShardedScorer) else new


class Baselines:
    """The baselines of one task and seed.

    Args:
        scorer: an uncalibrated scorer on the task's template and verbalizers.
        task: the task (its train inputs, unlabeled, estimate the calibration vectors; its dev set
            picks the manual prompt; its train set gives the demos).
        seed: orders the demos.
        modes: the calibrations each baseline is also shown with.
        k: demos of the k-shot baseline (0: no k-shot row).
    """

    def __init__(self, scorer, task: Task, seed: int, modes: Sequence[str] = ("batch",), k: int = K_SHOT,
                 progress: bool = False):
        self.scorer, self.task, self.seed, self.modes, self.progress = scorer, task, seed, list(modes), progress
        self.unlabeled = unlabeled_inputs(task.train)
        self.demos = pick_demos(task.train, k, seed) if k else []
        self._demo_scorer = None
        self._manual: dict[str, str] = {}

    def demo_scorer(self):
        """The scorer of the k-shot template (built once)."""
        if self._demo_scorer is None:
            self._demo_scorer = _same_kind(self.scorer, demo_template(self.task, self.demos), self.task.verbalizers)
        return self._demo_scorer

    def _logprobs(self, scorer, prompts, examples, mode: str):
        logprobs = score_examples(scorer, prompts, examples, progress=self.progress, desc="baselines")
        return logprobs if mode == "none" else apply(logprobs, estimate(scorer, mode, prompts, self.unlabeled))

    def manual_prompt(self, mode: str = "none") -> str:
        """The hand-written prompt with the best dev accuracy under `mode` (the first on ties, or
        without dev examples); '' when the task has none."""
        if mode not in self._manual:
            candidates = manual_candidates(self.task)
            best = candidates[0] if candidates else ""
            if len(candidates) > 1 and self.task.dev:
                acc = accuracy(self._logprobs(self.scorer, candidates, self.task.dev, mode),
                               [e.label for e in self.task.dev])
                best = candidates[int(acc.argmax())]
            self._manual[mode] = best
        return self._manual[mode]

    def entries(self) -> list[dict]:
        """[{"name", "prompt", "calibration", "demos"?}] of every baseline, uncalibrated ones first."""
        out = []
        for mode in ["none", *self.modes]:
            suffix = "" if mode == "none" else f" ({mode})"
            out.append({"name": "no prompt" + suffix, "prompt": "", "calibration": mode})
            manual = self.manual_prompt(mode)
            if manual:
                out.append({"name": "manual prompt" + suffix, "prompt": manual, "calibration": mode})
            if self.demos:
                out.append({"name": f"{len(self.demos)}-shot" + suffix, "prompt": "", "calibration": mode,
                            "demos": [{"text": d.text, "label": d.label} for d in self.demos]})
        return out

    def template_prompts(self) -> list[str]:
        """The distinct prompts of the baselines on the task's own template (all but k-shot), in the
        order `rows` scores them in one call per split."""
        return distinct_prompts(row for row in self.entries() if "demos" not in row)

    def rows(self, splits: dict[str, Sequence[Example]]) -> list[dict]:
        """Each baseline entry with `{split}_acc` (None for an empty split) for every split given.

        Per split, the distinct prompts of the entries that share a scorer are scored in one call (the
        examples' prefixes are encoded once for all of them); calibration is applied per entry."""
        rows = self.entries()
        for split, examples in splits.items():
            labels = [e.label for e in examples]
            for demos in (False, True):
                group = [row for row in rows if ("demos" in row) == demos]
                if not group:
                    continue
                if not examples:
                    for row in group:
                        row[f"{split}_acc"] = None
                    continue
                scorer = self.demo_scorer() if demos else self.scorer
                prompts = distinct_prompts(group)
                try:
                    logprobs = score_examples(scorer, prompts, examples, progress=self.progress, desc="baselines")
                    accs = []
                    for row in group:
                        own = logprobs[prompts.index(row["prompt"])][None]
                        if row["calibration"] != "none":  # the vector scores the train inputs: may not fit either
                            own = apply(own, estimate(scorer, row["calibration"], [row["prompt"]], self.unlabeled))
                        accs.append(float(accuracy(own, labels)[0]))
                except UserError as e:  # demos too long for the task LM's context: no k-shot figure
                    if not demos:
                        raise
                    for row in group:
                        row[f"{split}_acc"], row["skipped"] = None, str(e)
                    continue
                for row, acc in zip(group, accs):
                    row[f"{split}_acc"] = acc
        return rows


def strongest(rows: Sequence[dict]) -> dict | None:
    """The baseline to beat: best test accuracy where test was scored (the conservative comparison; ties
    by dev accuracy), else best dev accuracy; with `best_on_dev`, the one a user choosing on dev would
    take (ties go to the first, i.e. simplest, row: a user cannot break them with test labels)."""
    def pick(key, tie):
        scored = [r for r in rows if r.get(key) is not None]
        return max(scored, key=lambda r: (r[key], tie(r))) if scored else None

    by_test = pick("test_acc", lambda r: r.get("dev_acc") or 0.0)
    by_dev = pick("dev_acc", lambda r: 0)  # max keeps the first of equal keys
    best = by_test or by_dev
    if best is None:
        return None
    brief = lambda r: {"name": r["name"], "dev_acc": r.get("dev_acc"), "test_acc": r.get("test_acc")}  # noqa: E731
    return {**brief(best), "chosen_by": "test" if by_test else "dev", "best_on_dev": brief(by_dev) if by_dev else None}
