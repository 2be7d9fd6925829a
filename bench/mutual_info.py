"""Can unlabelled inputs pick a run's prompt better than 32 dev labels? The mutual-information rule of
Sorensen et al. (2022, "An Information-theoretic Approach to Prompt Engineering without Ground Truth
Labels"), on the candidates `bench/selection.py` stored for SST-2 runs of quality-bench labels:

    python bench/mutual_info.py --labels abl-calib-running,abl-default

Per seed, every candidate the run scored on dev is scored again on --pool sentences of GLUE's SST-2 train
file (labels never read); the rule picks the candidate with the highest mutual information between input
and predicted label, I = H(mean over inputs of p(y|x)) - mean over inputs of H(p(y|x)) (confident on each
input, not always the same label), over the verbalizers' raw distribution (`mi-raw`, the paper's rule)
or the batch-calibrated one (`mi-calibrated`, calibrated on the run's own unlabelled train inputs, as the
runs' reward was). Each pick is judged by the accuracy bench/selection.py stored for it on the run's eval
set (SST-2's 872 GLUE dev examples for `--eval-set full-dev` labels), beside the run's own dev pick and
the oracle among the same candidates; `spearman_*` is the rank correlation of each MI with that accuracy.

One JSON per label goes to bench/results/mutual_info/<label>.json (a finished label is not redone); the
means are printed as one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

from ensemble import dev_ranked, unlabelled_pool  # bench/ is the script's folder, first on sys.path
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError

REPO = Path(__file__).resolve().parent.parent
RULES = ("dev", "mi-raw", "mi-calibrated", "oracle")


def mutual_information(logprobs):
    """(P, N, V) verbalizer log-probs of P prompts on N inputs -> (P,) mutual information (nats) between
    input and predicted label: the entropy of the mean prediction minus the mean entropy of each."""
    import torch

    p = torch.softmax(logprobs.float(), dim=-1)  # over the verbalizers; calibrated scores renormalize too
    marginal = p.mean(1)
    h_marginal = -(marginal * marginal.clamp_min(1e-12).log()).sum(-1)
    h_each = -(p * p.clamp_min(1e-12).log()).sum(-1).mean(1)
    return h_marginal - h_each


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation (ties get their mean rank); None for fewer than 3 values or a constant side."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return statistics.correlation(ranks(x), ranks(y))


def score_seed(raw_scorer, stored: dict, pool: list[str], data_dir: Path) -> dict:
    """The MI of every dev-scored candidate of one stored run on `pool`, and each rule's pick."""
    from rlprompt.calibration import calibrated, unlabeled_inputs
    from rlprompt.tasks import find_spec

    task = find_spec(stored["task"]).load(data_dir, stored["seed"])
    cands = dev_ranked(stored)
    if not cands:
        raise UserError(f"{stored['run']}: no candidate was scored on dev")
    texts = [r["prompt"] for r in cands]
    acc = [r["eval_acc"] for r in cands]
    mi = {"mi-raw": mutual_information(raw_scorer.score(texts, pool)).tolist(),
          "mi-calibrated": mutual_information(
              calibrated(raw_scorer, "batch", unlabeled_inputs(task.train)).score(texts, pool)).tolist()}
    picks = {"dev": 0, "oracle": max(range(len(cands)), key=acc.__getitem__)}
    for rule, values in mi.items():
        picks[rule] = max(range(len(cands)), key=lambda i: (values[i], -i))  # ties to the better dev rank
    return {"seed": stored["seed"], "run": stored["run"], "eval_n": stored["eval_n"], "candidates": len(cands),
            "rules": {rule: {"prompt": texts[picks[rule]], "eval_acc": acc[picks[rule]]} for rule in RULES},
            "spearman_mi_raw": spearman(mi["mi-raw"], acc),
            "spearman_mi_calibrated": spearman(mi["mi-calibrated"], acc),
            "per_candidate": [{"prompt": t, "eval_acc": a, "mi_raw": round(r, 5), "mi_calibrated": round(c, 5)}
                              for t, a, r, c in zip(texts, acc, mi["mi-raw"], mi["mi-calibrated"])]}


def summarize(seeds: list[dict]) -> dict:
    """Mean ± std (%) over seeds of every rule, and the mean rank correlations."""
    out = {}
    for rule in RULES:
        values = [100 * s["rules"][rule]["eval_acc"] for s in seeds]
        out[rule] = {"mean": round(statistics.fmean(values), 2),
                     "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
                     "per_seed": [round(v, 1) for v in values]}
    for key in ("spearman_mi_raw", "spearman_mi_calibrated"):
        values = [s[key] for s in seeds if s[key] is not None]
        out[key] = round(statistics.fmean(values), 2) if values else None
    return out


def main(argv=None) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--labels", required=True, help="comma-separated bench/selection.py labels (SST-2 runs)")
    p.add_argument("--pool", type=int, default=256, help="unlabelled GLUE SST-2 train sentences (a fixed sample)")
    p.add_argument("--task-model", default=None, help="the runs' task LM (default: train.py's)")
    p.add_argument("--task-dtype", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--selection-results", default=str(REPO / "bench" / "results" / "selection"),
                   help="where bench/selection.py wrote the labels' candidates")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "mutual_info"))
    args = p.parse_args(argv)
    if args.pool < 2:
        raise UserError(f"--pool {args.pool}: mutual information needs at least 2 inputs")

    from rlprompt.runs import cached_json
    from rlprompt.tasks import resolve_data_dir

    labels = [label for label in args.labels.split(",") if label]
    stored = {}
    for label in labels:
        files = sorted((Path(args.selection_results) / label).glob("sst2__*.json"))
        if not files:
            raise UserError(f"no SST-2 candidates for label {label!r} in {args.selection_results}: "
                            f"run bench/selection.py --labels {label} first")
        stored[label] = sorted((json.loads(f.read_text(encoding="utf-8")) for f in files), key=lambda r: r["seed"])
    data_dir = resolve_data_dir(args.data_dir)

    @functools.cache
    def scoring() -> tuple:
        """(raw scorer, dtype, pool), loaded once and only when a label is not read back."""
        from rlprompt.config import TrainConfig
        from rlprompt.models import load_lm
        from rlprompt.scorer import build_scorer
        from rlprompt.tasks import find_spec

        spec = find_spec("sst2")
        model, tok = load_lm(args.task_model or TrainConfig.task_model, None, args.task_dtype)
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        return build_scorer(model, tok, spec.template, spec.verbalizers), dtype, unlabelled_pool(data_dir, args.pool)

    def make(label: str) -> dict:
        scorer, dtype, pool = scoring()
        seeds = [score_seed(scorer, run, pool, data_dir) for run in stored[label]]
        return {"label": label, "pool": len(pool), "task_dtype": dtype, "summary": summarize(seeds), "seeds": seeds}

    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for label in labels:
        result, _ = cached_json(out_dir / f"{label}.json", lambda: make(label))
        summaries[label] = result["summary"]
    print(json.dumps({"labels": summaries}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
