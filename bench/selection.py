"""Which rule should pick the final prompt? For each finished run of quality-bench labels, on the run's eval
set (SST-2's full/dev.tsv for `--eval-set full-dev` labels; never use it on a test-set label to choose a rule):

    python bench/selection.py --labels abl-default,abl-running

The candidates are the prompts the run scored on dev (the greedy prompt and the best sampled ones at each
dev check), plus the --pool best distinct prompts by logged train reward that it did not score on dev.
Each candidate is scored again on the run's train and dev examples (RLPrompt's reward and accuracy) and on
the eval set (accuracy); then every rule picks one prompt:

- dev: dev accuracy, ties by logged train reward (what train.py returns by default);
- dev-reward: dev reward (the margin, which is continuous: no ties, less noisy than accuracy on 32);
- train+dev: accuracy over train and dev together (--selection train+dev);
- train+dev-reward: mean reward over train and dev;
- last-greedy: the policy's argmax prompt at the last dev check;
- pool-train+dev-reward: train+dev reward over the dev-scored prompts and the pool;
- oracle: the best candidate on the eval set (an upper bound no rule can beat; pool included).

One JSON per run goes to bench/results/selection/<label>/<task>__<seed>.json (a finished one is not
redone, and one whose run folder is gone, e.g. made on a lent GPU, still counts); the mean eval accuracy of
each rule per label is printed as JSON and written to selection.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError
from rlprompt.runs import per_run_results

REPO = Path(__file__).resolve().parent.parent
RULES = ("dev", "dev-reward", "train+dev", "train+dev-reward", "last-greedy", "pool-train+dev-reward", "oracle")


def score_candidates(run_dir: Path, pool: int) -> dict:
    """Every candidate of one finished run with its train, dev and eval-set scores."""
    import torch

    from rlprompt.build import build_task_scorer
    from rlprompt.evaluation import accuracy, score_examples
    from rlprompt.rewards import classification_reward
    from rlprompt.runs import load_finished_run

    state, cfg, task = load_finished_run(run_dir)
    if not task.test:
        raise UserError(f"{run_dir}: the run has no eval set")
    records = state["leaderboard"]
    scored = [r for r in records if r["dev_acc"] is not None]
    extra = sorted((r for r in records if r["dev_acc"] is None), key=lambda r: -r["train_reward"])[:pool]
    greedy = next(h["greedy_prompt"] for h in reversed(state["history"]) if "greedy_prompt" in h)
    texts = [r["prompt"] for r in scored + extra]
    scorer = build_task_scorer(cfg, task)

    def measure(examples):
        logprobs = score_examples(scorer, texts, examples, progress=False)
        reward, acc = classification_reward(logprobs, torch.tensor([e.label for e in examples]))
        return reward.tolist(), acc.tolist()

    (train_r, train_a), (dev_r, dev_a) = measure(task.train), measure(task.dev)
    eval_a = accuracy(score_examples(scorer, texts, task.test, progress=False), [e.label for e in task.test]).tolist()
    rows = [{"prompt": r["prompt"], "step": r["step"], "dev_scored": r["dev_acc"] is not None,
             "logged_train_reward": r["train_reward"], "logged_dev_acc": r["dev_acc"],
             "train_reward": train_r[i], "train_acc": train_a[i], "dev_reward": dev_r[i], "dev_acc": dev_a[i],
             "eval_acc": eval_a[i]} for i, r in enumerate(scored + extra)]
    return {"run": str(run_dir), "task": task.name, "seed": cfg.seed, "eval_n": len(task.test),
            "n_train": len(task.train), "n_dev": len(task.dev), "last_greedy": greedy, "candidates": rows}


def pick(run: dict, rule: str) -> dict:
    """The candidate a rule picks in one run (see the module docstring)."""
    rows = run["candidates"]
    scored = [r for r in rows if r["dev_scored"]]
    w = run["n_train"] / (run["n_train"] + run["n_dev"])

    def mixed(key):
        return lambda r: w * r[f"train_{key}"] + (1 - w) * r[f"dev_{key}"]

    if rule == "dev":
        return max(scored, key=lambda r: (r["logged_dev_acc"], r["logged_train_reward"]))
    if rule == "dev-reward":
        return max(scored, key=lambda r: r["dev_reward"])
    if rule == "train+dev":
        return max(scored, key=lambda r: (mixed("acc")(r), r["logged_train_reward"]))
    if rule == "train+dev-reward":
        return max(scored, key=mixed("reward"))
    if rule == "last-greedy":
        return next(r for r in scored if r["prompt"] == run["last_greedy"])
    if rule == "pool-train+dev-reward":
        return max(rows, key=mixed("reward"))
    if rule == "oracle":
        return max(rows, key=lambda r: r["eval_acc"])
    raise ValueError(rule)


def summarize(runs: list[dict]) -> dict:
    """Mean ± std eval accuracy (%) of each rule's pick over runs, and the picks per run."""
    out = {}
    for rule in RULES:
        accs = [100 * pick(run, rule)["eval_acc"] for run in runs]
        out[rule] = {"mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "per_seed": {str(run["seed"]): round(a, 2) for run, a in zip(runs, accs)}}
    return out


def main(argv=None) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--labels", required=True, help="comma-separated quality-bench labels whose runs to analyse")
    p.add_argument("--runs-dir", default="runs/quality", help="where the labels' run folders are")
    p.add_argument("--pool", type=int, default=10,
                   help="also score this many best prompts by train reward that the run never scored on dev")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "selection"))
    args = p.parse_args(argv)
    doc = {"pool": args.pool, "labels": {}}
    for label in [x for x in args.labels.split(",") if x]:
        out = Path(args.results) / label
        out.mkdir(parents=True, exist_ok=True)
        runs = []
        for name, run, _, made in per_run_results(out, Path(args.runs_dir) / label,
                                                  lambda run_dir: score_candidates(run_dir, args.pool)):
            if made:
                print(f"[{label}/{name}] {len(run['candidates'])} candidates: "
                      + ", ".join(f"{rule} {100 * pick(run, rule)['eval_acc']:.1f}" for rule in RULES), file=sys.stderr)
            runs.append(run)
        doc["labels"][label] = {"runs": len(runs), "rules": summarize(runs)}
    Path(args.results).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.results) / "selection.json", json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
