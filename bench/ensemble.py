"""Can a run's candidates be used better than by picking one on 32 dev labels? On SST-2's GLUE dev set
(872 examples; never the test set), for the runs of a `bench/selection.py` label:

    python bench/ensemble.py --label abl-calib-running

Per seed, with the candidates bench/selection.py stored (the prompts the run scored on dev), everything
scored again here in one precision (`--task-dtype`, the machine's `auto` by default), batch-calibrated
as the run was:

- dev: the run's own pick (dev accuracy, ties by train reward), scored again;
- agree-64 / agree-pool: the candidate whose predictions agree most with the majority vote of all the
  candidates on unlabelled inputs (the run's 64 train+dev inputs; or --pool sentences from GLUE's SST-2
  train file, labels never read), ties by dev accuracy;
- dev+agree: dev accuracy, ties by agree-64 instead of train reward;
- ensemble-K: the top K candidates by the dev rule, their calibrated log-probs averaged (K prompts
  at inference, not one);
- the baselines on the same scores: no prompt, the six hand-written prompts (best on dev; best in
  hindsight) and their ensemble, batch-calibrated.

One JSON per seed goes to bench/results/ensemble/<label>/sst2__<seed>.json (a finished seed is not
redone); the means over seeds are printed and written to bench/results/ensemble/<label>/summary.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError

REPO = Path(__file__).resolve().parent.parent
FULL_DEV = "sst-2/full/dev.tsv"
FULL_TRAIN = "sst-2/full/train.tsv"
ENSEMBLE_SIZES = (3, 5)


def majority_agreement(preds):
    """(P, N) predicted labels -> (P,) share of inputs where each prompt's label is the majority's
    (the most frequent label over the P prompts; ties to the lowest label id)."""
    import torch

    votes = torch.nn.functional.one_hot(preds, int(preds.max()) + 1).sum(0)  # (N, C)
    return (preds == votes.argmax(-1)).float().mean(-1)


def ensemble_accuracy(logprobs, labels) -> float:
    """(K, E, V) calibrated log-probs of K prompts -> accuracy of the argmax of their mean."""
    import torch

    return float((logprobs.mean(0).argmax(-1) == torch.tensor(labels)).float().mean())


def dev_ranked(stored: dict) -> list[dict]:
    """The candidates a stored bench/selection.py run scored on dev, best first by the dev rule (dev
    accuracy, ties by logged train reward): the first is the run's own pick."""
    return sorted((r for r in stored["candidates"] if r["dev_scored"]),
                  key=lambda r: (r["logged_dev_acc"], r["logged_train_reward"]), reverse=True)


def unlabelled_pool(data_dir: Path, size: int) -> list[str]:
    """A fixed sample of `size` GLUE SST-2 train sentences (labels never read); [] for size 0."""
    from rlprompt.minibatch import fixed_sample
    from rlprompt.tasks import read_tsv

    return [e.text for e in fixed_sample(read_tsv(data_dir / FULL_TRAIN, 2), size, 0)] if size else []


def score_seed(raw_scorer, label_dir: Path, seed: int, pool: list[str], data_dir: Path, top: int) -> dict:
    """Every rule's pick and the ensembles of one seed's candidates, with the baselines, on the 872."""
    from rlprompt.baselines import Baselines, manual_candidates
    from rlprompt.calibration import calibrated, unlabeled_inputs
    from rlprompt.evaluation import accuracy, score_examples
    from rlprompt.tasks import find_spec

    stored = json.loads((label_dir / f"sst2__{seed}.json").read_text(encoding="utf-8"))
    task = find_spec("sst2").with_overrides(test=str(data_dir / FULL_DEV)).load(data_dir, seed)
    scorer = calibrated(raw_scorer, "batch", unlabeled_inputs(task.train))
    labels = [e.label for e in task.test]
    cands = dev_ranked(stored)
    texts = [r["prompt"] for r in cands]
    own_inputs = [e.text for e in task.train + task.dev]
    agree_64 = majority_agreement(scorer.score(texts, own_inputs).argmax(-1))
    agree_pool = majority_agreement(scorer.score(texts, pool).argmax(-1)) if pool else None
    dev_acc = [r["logged_dev_acc"] for r in cands]

    def best(key) -> int:
        return max(range(len(cands)), key=key)

    picks = {"dev": 0, "agree-64": best(lambda i: (float(agree_64[i]), dev_acc[i])),
             "dev+agree": best(lambda i: (dev_acc[i], float(agree_64[i])))}
    if agree_pool is not None:
        picks["agree-pool"] = best(lambda i: (float(agree_pool[i]), dev_acc[i]))
    eval_idx = sorted(set(range(min(top, len(cands)))) | set(picks.values()))  # the top `top` come first
    manual = manual_candidates(task)
    eval_texts = [texts[i] for i in eval_idx] + [""] + manual
    logprobs = score_examples(scorer, eval_texts, task.test, progress=False)
    accs = accuracy(logprobs, labels).tolist()
    acc_of = dict(zip(eval_texts, accs))
    rl = {rule: {"prompt": texts[i], "eval_acc": acc_of[texts[i]]} for rule, i in picks.items()}
    for k in ENSEMBLE_SIZES:
        if k <= len(cands):
            rl[f"ensemble-{k}"] = {"prompts": texts[:k], "eval_acc": ensemble_accuracy(logprobs[:k], labels)}
    m0 = len(eval_idx) + 1
    baselines = {"no prompt": acc_of[""],
                 "manual (best on dev)": acc_of[Baselines(raw_scorer, task, seed, k=0).manual_prompt("batch")],
                 "manual (best in hindsight)": max(accs[m0:]),
                 "manual ensemble": ensemble_accuracy(logprobs[m0:], labels)}
    return {"label": label_dir.name, "task": "sst2", "seed": seed, "eval_n": len(labels), "candidates": len(cands),
            "pool": len(pool), "rules": rl, "baselines": baselines,
            "candidate_eval_acc": {t: acc_of[t] for t in texts if t in acc_of},
            "agree_64": [round(float(a), 4) for a in agree_64],
            "agree_pool": None if agree_pool is None else [round(float(a), 4) for a in agree_pool]}


def summarize(results: list[dict]) -> dict:
    """Mean ± std (%) over seeds of every rule, ensemble and baseline."""
    def stats(values):
        values = [100 * v for v in values]
        return {"mean": round(statistics.fmean(values), 2),
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
                "per_seed": [round(v, 1) for v in values]}

    rules = sorted({k for r in results for k in r["rules"]})
    out = {"seeds": [r["seed"] for r in results]}
    out["rl"] = {k: stats([r["rules"][k]["eval_acc"] for r in results if k in r["rules"]]) for k in rules}
    out["baselines"] = {k: stats([r["baselines"][k] for r in results]) for k in results[0]["baselines"]}
    return out


def main(argv=None) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--label", required=True, help="a bench/selection.py label (its stored candidates are used)")
    p.add_argument("--seeds", default=None, help="comma-separated (default: every seed the label has)")
    p.add_argument("--top", type=int, default=max(ENSEMBLE_SIZES),
                   help=f"candidates scored on the 872 by dev rank (at least {max(ENSEMBLE_SIZES)})")
    p.add_argument("--pool", type=int, default=256, help="unlabelled SST-2 train sentences for agree-pool (0: none)")
    p.add_argument("--task-model", default=None, help="the runs' task LM (default: train.py's)")
    p.add_argument("--task-dtype", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--selection-results", default=str(REPO / "bench" / "results" / "selection"),
                   help="where bench/selection.py wrote the label's candidates")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "ensemble"))
    args = p.parse_args(argv)
    if args.top < max(ENSEMBLE_SIZES):
        raise UserError(f"--top {args.top}: the ensembles need the top {max(ENSEMBLE_SIZES)}")

    from rlprompt.runs import cached_json
    from rlprompt.tasks import find_spec, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    label_dir = Path(args.selection_results) / args.label
    if not label_dir.is_dir():
        raise UserError(f"{label_dir} not found: run bench/selection.py --labels {args.label} first")
    seeds = ([int(s) for s in args.seeds.split(",") if s] if args.seeds else
             sorted(int(f.stem.split("__")[1]) for f in label_dir.glob("sst2__*.json")))
    missing = [s for s in seeds if not (label_dir / f"sst2__{s}.json").is_file()]
    if missing or not seeds:
        raise UserError(f"{label_dir}: no SST-2 candidates for seed(s) {missing or 'any'}")
    out = Path(args.results) / args.label
    out.mkdir(parents=True, exist_ok=True)

    @functools.cache
    def scoring() -> tuple:
        """(raw scorer, its dtype, the unlabelled pool): loaded once, and only when a seed is not cached
        (a read-back run does not import transformers either)."""
        from rlprompt.config import TrainConfig
        from rlprompt.models import load_lm
        from rlprompt.scorer import build_scorer

        spec = find_spec("sst2")
        model, tok = load_lm(args.task_model or TrainConfig.task_model, None, args.task_dtype)
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        pool = unlabelled_pool(data_dir, args.pool)
        return build_scorer(model, tok, spec.template, spec.verbalizers), dtype, pool

    def make(seed: int) -> dict:
        raw_scorer, dtype, pool = scoring()
        return {**score_seed(raw_scorer, label_dir, seed, pool, data_dir, args.top), "task_dtype": dtype}

    results = []
    for seed in seeds:
        result, made = cached_json(out / f"sst2__{seed}.json", lambda: make(seed))
        if made:
            print(f"[{args.label}/sst2__{seed}] " + ", ".join(f"{k} {100 * v['eval_acc']:.1f}"
                                                              for k, v in result["rules"].items()), file=sys.stderr)
        results.append(result)
    summary = summarize(results)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
