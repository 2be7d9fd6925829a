"""How far does a 5-seed row move when only the run's randomness does? Reads quality-bench labels that ran
one method on the same splits with different `--run-seed` values (a plain label, whose runs use the
split's seed, is one more draw), and their bench/learning.py JSONs where present:

    python bench/redraw.py --task sst2 --labels abl-calib-running,abl-runseed1,abl-runseed2

Prints one JSON document (also written to --out): per split, each draw's accuracy on the eval set of the
prompt the run chose (and of its final greedy prompt and its early best, with the learning verdict, where
bench/learning.py ran); per draw, the means over the splits and the learning count; and the noise: the
within-split standard deviation of each figure pooled over the splits (how far one run moves when re-drawn),
what it makes the standard deviation of a mean over the n splits (sigma / sqrt(n)) and of the difference of
two such means on the same splits (sigma * sqrt(2 / n), the paired comparison a lever gets), next to the
spread the draws' means showed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError
from quality import result_precision  # bench/ is the script's folder, first on sys.path

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("chosen", "final_greedy", "early_best")


def parse_args(argv=None):
    p = OneLineArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="comma-separated quality-bench labels: draws of one method")
    p.add_argument("--task", default="sst2", help="task whose results to read (default sst2)")
    p.add_argument("--results", default=str(REPO / "bench" / "results"), help="folder holding quality/ and learning/")
    p.add_argument("--out", help="also write the JSON document here")
    args = p.parse_args(argv)
    args.labels = [label for label in args.labels.split(",") if label]
    if len(args.labels) < 2:
        raise UserError("--labels: give at least two labels (draws) to compare")
    return args


def read_draw(results: Path, label: str, task: str) -> dict[int, dict]:
    """split seed -> the figures of that run under `label` (chosen always; the learning ones if measured)."""
    runs = {}
    for path in sorted((results / "quality" / label).glob(f"{task}__*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        row = {"chosen": result["rl"]["test_acc"], "eval_set": result["eval_set"],
               "machine": (result["hardware"].get("cpu"), result["hardware"].get("gpu"), result_precision(result)),
               "run_seed": run_seed(result), "method": method_without_seed(result)}
        learning = results / "learning" / label / path.name
        if learning.exists():
            figures = json.loads(learning.read_text(encoding="utf-8"))
            row.update(final_greedy=figures["final_greedy"]["eval_acc"], early_best=figures["early_best"]["eval_acc"],
                       learns=figures["learns"])
        runs[result["seed"]] = row
    if not runs:
        raise UserError(f"no {task} results under {results / 'quality' / label}")
    return runs


def run_seed(result: dict) -> int:
    """The --run-seed a quality-bench run was made with (its split's seed when not given)."""
    given = (result.get("method_config") or {}).get("run_seed")
    return result["seed"] if given is None else int(given)


def method_without_seed(result: dict) -> str | None:
    """The run's method settings apart from --run-seed, as a comparable string (None in results made before
    quality.py recorded them)."""
    config = result.get("method_config")
    return None if config is None else json.dumps({k: v for k, v in config.items() if k != "run_seed"}, sort_keys=True)


def pooled_std(groups: list[list[float]]) -> float | None:
    """sqrt of the mean of the groups' sample variances (groups with one value are left out)."""
    variances = [statistics.variance(g) for g in groups if len(g) > 1]
    return math.sqrt(statistics.fmean(variances)) if variances else None


def summarize(draws: dict[str, dict[int, dict]]) -> dict:
    """The JSON document (see the module docstring) from label -> split -> figures."""
    labels = list(draws)
    splits = sorted(set.intersection(*(set(runs) for runs in draws.values())))
    if not splits:
        raise UserError(f"the labels {', '.join(labels)} share no finished split")
    for key, what in (("eval_set", "eval sets"), ("machine", "machines (CPU model, GPU, device and precision)")):
        seen = {str(draws[label][s][key]) for label in labels for s in splits}
        if len(seen) > 1:
            raise UserError(f"the labels were scored on different {what}: {', '.join(sorted(seen))}; draws "
                            "must differ in their run seed only")
    methods = {draws[label][s]["method"] for label in labels for s in splits} - {None}
    if len(methods) > 1:
        raise UserError("the labels ran different methods (train.py settings other than --run-seed differ); "
                        "draws must differ in their run seed only")
    for s in splits:
        seeds = [draws[label][s]["run_seed"] for label in labels]
        if len(set(seeds)) < len(seeds):
            raise UserError(f"split {s}: two labels share run seed {seeds}; they are the same draw")
    figures = [f for f in FIGURES if all(f in draws[label][s] for label in labels for s in splits)]
    n = len(splits)
    per_draw = {}
    for label in labels:
        rows = [draws[label][s] for s in splits]
        per_draw[label] = {f"{f}_mean": statistics.fmean(r[f] for r in rows) for f in figures}
        if "learns" in rows[0]:
            per_draw[label]["learns"] = sum(bool(r.get("learns")) for r in rows)
    noise = {}
    for f in figures:
        sigma = pooled_std([[draws[label][s][f] for label in labels] for s in splits])
        means = [per_draw[label][f"{f}_mean"] for label in labels]
        noise[f] = {"within_split_std": sigma, "std_of_a_mean": sigma / math.sqrt(n),
                    "std_of_a_paired_difference": sigma * math.sqrt(2 / n),
                    "draw_means_min": min(means), "draw_means_max": max(means),
                    "draw_means_std": statistics.stdev(means)}
    return {"labels": labels, "splits": splits, "eval_set": draws[labels[0]][splits[0]]["eval_set"],
            "machine": draws[labels[0]][splits[0]]["machine"],
            "per_split": {s: {label: {k: v for k, v in draws[label][s].items() if k in (*figures, "learns", "run_seed")}
                              for label in labels} for s in splits},
            "per_draw": per_draw, "noise": noise}


def main(argv=None) -> int:
    args = parse_args(argv)
    results = Path(args.results)
    document = summarize({label: read_draw(results, label, args.task) for label in args.labels})
    text = json.dumps(document, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
