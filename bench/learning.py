"""Does training beat early random sampling? For each finished run of a quality-bench label, on the run's
eval set (its --test file: SST-2's full/dev.tsv for `--eval-set full-dev` labels):

    python bench/learning.py --label abl-default            # the runs in runs/quality/abl-default/

- early best: every distinct prompt the run produced with fewer than --early-steps updates behind it
  (default 20: the samples of steps 1-20 and the greedy prompt of the dev check after step 10), scored on
  the run's dev set; the best on dev (ties: train reward) is what random sampling + dev selection gives;
- final greedy: the policy's argmax prompt at the end of training;
- chosen: the run's own final prompt (its --selection on the dev-scored prompts);
- train+dev pick: among the prompts the run scored on dev, the best by accuracy over train and dev.

"Learns" means final greedy >= early best on the eval set. One JSON per run goes to
bench/results/learning/<label>/<task>__<seed>.json (a finished one is not redone); the summary over
runs is printed as JSON. Runs whose folders are gone (e.g. made on a lent GPU) count through their JSONs.

--curves also scores the greedy prompt of every dev check (every --eval-every steps, from the run's
history) on the eval set, adds `greedy_curve` ([step, accuracy] pairs) to each run's JSON and draws
greedy_curves.png: what the policy itself would answer, over training, on examples it never saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError
from rlprompt.runs import per_run_results

REPO = Path(__file__).resolve().parent.parent


def run_scorer(state: dict, cfg, task):
    """The run's task-LM scorer holding the run's score memo: the train-input scores of every prompt it
    sampled (what each calibration vector is the mean of) and the dev scores of those it checked come from
    the run instead of being scored again."""
    from rlprompt.build import build_task_scorer

    scorer = build_task_scorer(cfg, task)
    scorer.load_state_dict(state.get("scorer", {}))
    return scorer


def analyse(run_dir: Path, early_steps: int) -> dict:
    """The learning figures of one finished run (see the module docstring)."""
    from rlprompt.bookkeeping import Leaderboard
    from rlprompt.evaluation import evaluate_prompts
    from rlprompt.runs import load_finished_run

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    state, cfg, task = load_finished_run(run_dir)
    if not task.test:
        raise UserError(f"{run_dir}: the run has no test/eval set")
    records = state["leaderboard"]
    early = [r for r in records if r["step"] < early_steps]
    todo = [r["prompt"] for r in early if r["dev_acc"] is None]
    scorer = run_scorer(state, cfg, task)
    dev = {row["prompt"]: row["accuracy"]
           for row in (evaluate_prompts(scorer, todo, task.dev, progress=False) if todo else [])}
    early_dev = {r["prompt"]: r["dev_acc"] if r["dev_acc"] is not None else dev[r["prompt"]] for r in early}
    early_best = max(early, key=lambda r: (early_dev[r["prompt"]], r["train_reward"]))
    greedy = next(h["greedy_prompt"] for h in reversed(state["history"]) if "greedy_prompt" in h)
    n_train, n_dev = min(len(task.train), cfg.train_batch), len(task.dev)
    board = Leaderboard(train_weight=n_train / (n_train + n_dev))  # the ranking of --selection train+dev
    board.load_state_dict([r for r in records if r["dev_acc"] is not None])
    mixed = vars(board.best(1)[0])
    chosen = summary["best_prompt"]
    texts = list(dict.fromkeys([early_best["prompt"], greedy, mixed["prompt"]]))
    acc = {row["prompt"]: row["accuracy"] for row in evaluate_prompts(scorer, texts, task.test, progress=False)}
    return {
        "run": str(run_dir), "task": summary["task"], "seed": summary["seed"], "eval_n": len(task.test),
        "steps": summary["steps"], "early_steps": early_steps, "early_prompts": len(early),
        "early_best": {"prompt": early_best["prompt"], "step": early_best["step"],
                       "dev_acc": early_dev[early_best["prompt"]], "eval_acc": acc[early_best["prompt"]]},
        "final_greedy": {"prompt": greedy, "eval_acc": acc[greedy]},
        "chosen": {"prompt": chosen["prompt"], "dev_acc": chosen["dev_acc"], "eval_acc": chosen["test_acc"]},
        "train_dev_pick": {"prompt": mixed["prompt"], "train_acc": mixed["train_acc"], "dev_acc": mixed["dev_acc"],
                           "eval_acc": acc[mixed["prompt"]]},
        "learns": acc[greedy] >= acc[early_best["prompt"]],
    }


def greedy_curve(run_dir: Path) -> list[list]:
    """[step, eval-set accuracy] of the greedy prompt logged at each of the run's dev checks."""
    from rlprompt.evaluation import evaluate_prompts
    from rlprompt.runs import load_finished_run

    state, cfg, task = load_finished_run(run_dir)
    logged = [(h["step"], h["greedy_prompt"]) for h in state["history"] if "greedy_prompt" in h]
    texts = list(dict.fromkeys(prompt for _, prompt in logged))
    acc = {row["prompt"]: row["accuracy"] for row in
           evaluate_prompts(run_scorer(state, cfg, task), texts, task.test, progress=False)}
    return [[step, acc[prompt]] for step, prompt in logged]


def plot_curves(rows: list[dict], path: Path, label: str) -> None:
    """One line per run: the greedy prompt's eval-set accuracy over training; × marks the early best."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, row in enumerate(sorted(rows, key=lambda r: r["seed"])):
        steps, accs = zip(*row["greedy_curve"])
        color = f"C{i}"
        ax.plot(steps, [100 * a for a in accs], marker="o", markersize=3, color=color, label=f"seed {row['seed']}")
        ax.plot([row["early_steps"]], [100 * row["early_best"]["eval_acc"]], marker="x", markersize=9, color=color)
    n = rows[0]["eval_n"]
    ax.set(xlabel="training step", ylabel=f"accuracy on the eval set (n={n}), %",
           title=f"{label}: the greedy prompt over training (× = best prompt of the first steps, chosen on dev)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--label", required=True, help="the quality-bench label whose runs to analyse")
    p.add_argument("--runs-dir", default="runs/quality", help="where the label's run folders are")
    p.add_argument("--early-steps", type=int, default=20, help="the early window, in steps (default 20)")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "learning"))
    p.add_argument("--curves", action="store_true",
                   help="also score each dev check's greedy prompt on the eval set and draw greedy_curves.png")
    args = p.parse_args(argv)
    out = Path(args.results) / args.label
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, row, run, made in per_run_results(out, Path(args.runs_dir) / args.label,
                                                lambda run: analyse(run, args.early_steps)):
        if made:
            print(f"[{name}] early best {100 * row['early_best']['eval_acc']:.1f}, final greedy "
                  f"{100 * row['final_greedy']['eval_acc']:.1f}, chosen {100 * row['chosen']['eval_acc']:.1f}, "
                  f"train+dev pick {100 * row['train_dev_pick']['eval_acc']:.1f}", file=sys.stderr)
        if args.curves and "greedy_curve" not in row:
            if run is None:
                raise UserError(f"--curves: {out / name}.json has no greedy curve and its run folder is gone")
            row["greedy_curve"] = greedy_curve(run)
            atomic_write_text(out / f"{name}.json", json.dumps(row, indent=2, ensure_ascii=False) + "\n")
        rows.append(row)

    def mean(key):
        return sum(r[key]["eval_acc"] for r in rows) / len(rows)

    doc = {"label": args.label, "runs": len(rows), "learns": sum(r["learns"] for r in rows),
           **{f"{k}_mean": mean(k) for k in ("early_best", "final_greedy", "chosen", "train_dev_pick")},
           "per_run": {Path(r["run"]).name: {k: r[k]["eval_acc"] for k in
                                             ("early_best", "final_greedy", "chosen", "train_dev_pick")}
                       for r in rows}}
    atomic_write_text(out / "learning.json", json.dumps(doc, indent=2) + "\n")
    if args.curves:
        plot_curves(rows, out / "greedy_curves.png", args.label)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
