"""The baselines (no prompt, best manual prompt, 4-shot) raw and calibrated, on a fixed validation set.

    PYTHONPATH=. python bench/baselines.py --task sst2 --eval-file "{data_dir}/sst-2/full/dev.tsv" \\
        --seeds 13,21,42,87,100 --variant preset \\
        --variant 'Review: {sentence}\\n{prompt}\\nSentiment:@" negative"," positive"'

For every variant (template@verbalizers; `preset` is the task's own) and seed, the task's 16-shot split
of that seed supplies the unlabeled train inputs (batch calibration), the dev set that picks the manual
prompt and the 4-shot demos; every baseline is scored on the --eval-file examples (not the test set).
Prints one JSON document (per seed and mean ± std per variant × baseline × calibration) and, with
--markdown, writes the table there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from rlprompt.baselines import Baselines
from rlprompt.cli import quiet_transformers, run_cli
from rlprompt.errors import UserError
from rlprompt.tasks import find_spec, parse_list, read_tsv, resolve_data_dir, split_dev

MODES = ("batch", "contextual")


def parse_variant(text: str, spec) -> tuple[str, list[str]]:
    """'preset' or 'TEMPLATE@VERBALIZERS' (a literal \\n in TEMPLATE is a newline) -> (template, verbalizers)."""
    if text == "preset":
        return spec.template, list(spec.verbalizers)
    template, sep, verbalizers = text.partition("@")
    if not sep:
        raise UserError(f"--variant {text!r}: expected preset or TEMPLATE@VERBALIZERS")
    return template.replace("\\n", "\n"), parse_list(verbalizers)


def aggregate(results: list[dict]) -> list[dict]:
    """Mean and std over seeds of each (template, verbalizers, baseline, calibration)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["template"], tuple(r["verbalizers"]), r["baseline"]), []).append(r)
    out = []
    for (template, verbalizers, baseline), rows in groups.items():
        accs = [r["acc"] for r in rows]
        out.append({"template": template, "verbalizers": list(verbalizers), "baseline": baseline,
                    "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "per_seed": {r["seed"]: r["acc"] for r in rows},
                    "prompts": sorted({r["prompt"] for r in rows})})
    return out


def markdown(agg: list[dict], n: int) -> str:
    """One table per variant: rows = baseline, columns = raw / batch / contextual (mean ± std, %)."""
    lines = []
    for template in dict.fromkeys((a["template"], tuple(a["verbalizers"])) for a in agg):
        rows = [a for a in agg if (a["template"], tuple(a["verbalizers"])) == template]
        lines += [f"`{template[0]!r}` with {list(template[1])} (n = {n})", "",
                  "| baseline | raw | batch | contextual |", "|---|---|---|---|"]
        names = dict.fromkeys(a["baseline"].split(" (")[0] for a in rows)
        for name in names:
            cells = []
            for suffix in ("", " (batch)", " (contextual)"):
                a = next((a for a in rows if a["baseline"] == name + suffix), None)
                cells.append("-" if a is None else f"{100 * a['mean']:.1f} ± {100 * a['std']:.1f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sst2", help="preset or task file (default sst2)")
    p.add_argument("--eval-file", required=True, help="labelled TSV scored for every baseline ({data_dir} allowed)")
    p.add_argument("--seeds", default="13,42", help="comma-separated 16-shot seeds (default 13,42)")
    p.add_argument("--variant", action="append", default=[], help="preset or TEMPLATE@VERBALIZERS (repeat)")
    p.add_argument("--task-model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir")
    p.add_argument("--sample", type=int, help="score a class-stratified random N of --eval-file (seed 0), "
                   "for a quick measurement on a CPU")
    p.add_argument("--markdown", help="also write the Markdown table to this file")
    args = p.parse_args(argv)

    quiet_transformers()
    from rlprompt.models import dtype_name, load_lm
    from rlprompt.scorer import build_scorer

    spec = find_spec(args.task)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v, spec) for v in (args.variant or ["preset"])]
    data_dir = resolve_data_dir(args.data_dir)
    examples = read_tsv(args.eval_file.replace("{data_dir}", str(data_dir)), len(spec.labels))
    if args.sample and args.sample < len(examples):
        _, examples = split_dev(examples, args.sample / len(examples), seed=0)  # the stratified share
    model, tokenizer = load_lm(args.task_model, args.device, args.dtype)
    start, results = time.perf_counter(), []
    for template, verbalizers in variants:
        scorer = build_scorer(model, tokenizer, template, verbalizers)  # one memo across seeds
        for seed in seeds:
            task = spec.with_overrides(template=template, verbalizers=verbalizers).load(data_dir, seed)
            for row in Baselines(scorer, task, seed, MODES).rows({"eval": examples}):
                results.append({"template": template, "verbalizers": verbalizers, "seed": seed,
                                "baseline": row["name"], "calibration": row["calibration"],
                                "prompt": row["prompt"], "acc": row["eval_acc"]})
                print(f"{template!r} seed {seed} {row['name']}: {100 * row['eval_acc']:.1f}", file=sys.stderr)
    agg = aggregate(results)
    doc = {"task": spec.name, "eval_file": args.eval_file, "sample": args.sample, "n": len(examples), "task_model": args.task_model,
           "dtype": dtype_name(next(model.parameters()).dtype), "device": str(next(model.parameters()).device),
           "seeds": seeds, "wall_s": round(time.perf_counter() - start, 1), "results": results, "aggregate": agg}
    print(json.dumps(doc, indent=2))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(markdown(agg, len(examples)))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
