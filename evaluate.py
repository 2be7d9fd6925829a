"""Score discrete prompts on a few-shot task's dev and test sets, next to the no-prompt and manual baselines.

    python evaluate.py --task sst2 --prompt "Absolutely fantastic movie review" --prompt "..."
    python evaluate.py --run runs/<name>              # the run's best prompts, on the run's task and model
    python evaluate.py --task sst2 --prompts-file prompts.txt --splits dev --limit 20
    python evaluate.py --run runs/<name> --sample 50  # sample 50 prompts from the trained policy, best first
    python evaluate.py --run runs/<name> --plot       # the run's curves as a PNG (and report.md)
    python evaluate.py --run runs/<name> --export prompt.json   # a prompt card for rlprompt.PromptClassifier
    python evaluate.py --train my.csv --test my_test.csv --labels bad,good --verbalizers " bad"," good" \\
        --template "Review: {sentence} {prompt} Verdict:" --prompt "..."   # a task of your own
    python evaluate.py --task sst2 --compare manual,rl,ape,evo,deletion --budget 4096   # methods side by side
    python evaluate.py --task sst2 --prompt "..." --calibration batch   # calibrated scoring (docs/calibration.md)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, quiet_transformers, run_cli
from rlprompt.errors import UserError
from rlprompt.baselines import strongest
from rlprompt.runs import read_prompts_json, read_run, read_text
from rlprompt.tasks import spec_from_flags

MODEL_DEFAULTS = {"task_model": "smollm2-135m", "dtype": "auto"}
TASK_FLAGS = ("task", "task_file", "train")  # any of these: score on that task instead of the run's


def build_parser() -> argparse.ArgumentParser:
    """evaluate.py's flags: what to score and how, plus the task flags train.py takes."""
    from rlprompt.config import TaskArgs, add_arguments

    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="a prompt to score (repeat the flag for more)")
    p.add_argument("--prompts-file", action="append", default=[], metavar="FILE",
                   help="a UTF-8 text file with one prompt per line (blank lines skipped)")
    p.add_argument("--run", metavar="DIR", help="a train.py run folder: score the best prompts of its "
                   "prompts.json on the run's task with the run's task model (unless flags say otherwise)")
    p.add_argument("--num-prompts", type=int, default=5, metavar="N",
                   help="with --run: how many of the run's best prompts to score (default 5)")
    p.add_argument("--sample", type=int, metavar="N", help="with --run: sample N distinct prompts from the "
                   "trained policy (greedy first), score them and list them best first")
    p.add_argument("--export", metavar="CARD.json", help="with --run: write the run's best prompt as a prompt "
                   "card (prompt, template, verbalizers, labels, task model, precision, calibration, its "
                   "dev/test accuracy) that rlprompt.PromptClassifier.from_card loads, then exit")
    p.add_argument("--plot", action="store_true", help="with --run: write the run's curves.png (and "
                   "report.md when the run finished), then exit")
    p.add_argument("--task-model", help="task LM: embedded name, local path or HF id (default smollm2-135m)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "fp16"],
                   help="task LM precision (default auto: bf16 where the hardware runs it fast, else fp32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default auto: CUDA if available)")
    p.add_argument("--splits", default="dev,test", help="comma-separated splits to score (default dev,test)")
    p.add_argument("--limit", type=int, help="score only the first N examples of each split, for quick checks "
                   "(the 16-shot files are sorted by label: a small N may hold one class only)")
    p.add_argument("--calibration", metavar="MODE", help="none, batch or contextual: calibrated scoring "
                   "(vectors from the task's unlabeled train inputs); with --run, default the run's own, "
                   "with the vectors saved in its prompts.json (default none)")
    p.add_argument("--out", help="results JSON (default: results.json in --run, else ./eval_results.json)")
    p.add_argument("--allow-download", action="store_true", help="allow fetching models or datasets from the HF hub")
    add_arguments(p.add_argument_group("task (default: the run's task, else sst2)"), TaskArgs)
    p.set_defaults(seed=None)
    g = p.add_argument_group("method comparison (rlprompt/compare.py)")
    g.add_argument("--compare", metavar="METHODS", help="comma-separated methods to run side by side under "
                   "one pair budget, e.g. manual,rl,ape,evo,deletion; --out is then a folder "
                   "(default runs/compare__<task>__<seed>) and --limit cuts the test set only")
    g.add_argument("--budget", type=int, default=4096, help="(prompt, example) pairs each method may "
                   "score on train and dev (default 4096)")
    g.add_argument("--method-option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method setting, e.g. ape.keep_frac=0.3 or rl.run=runs/<name> (repeat the flag)")
    g.add_argument("--policy-model", default="smollm2-135m",
                   help="LM that writes or rewrites prompts (APE, RL) (default smollm2-135m)")
    return p


def read_prompts_file(path: str) -> list[str]:
    """One prompt per line; blank lines skipped; a UserError when there is none."""
    lines = read_text(Path(path), "prompts file").splitlines()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {path} has no prompts (one per line)")
    return prompts


def collect_prompts(args, run_prompts: list[str], sampled: list[str] = ()) -> list[tuple[str, str]]:
    """(source, prompt) rows of the given prompts (the baselines are scored apart); duplicates dropped."""
    rows = [("prompt", p) for p in args.prompt]
    for f in args.prompts_file:
        rows += [(f"file {f}", p) for p in read_prompts_file(f)]
    rows += [(f"run #{i + 1}", p) for i, p in enumerate(run_prompts)]
    rows += [(f"sample #{i + 1}", p) for i, p in enumerate(sampled)]
    seen, out = set(), []
    for source, prompt in rows:
        if prompt not in seen:
            seen.add(prompt)
            out.append((source, prompt))
    return out


def print_table(rows: list[dict], splits: list[str], sizes: dict[str, int]) -> None:
    """One line per scored prompt or baseline: its accuracy on each split."""
    width = 56
    head = "".join(f"{f'{s} acc (n={sizes[s]})':>20}" for s in splits)
    print(f"{'prompt':<{width}}{head}")
    for r in rows:
        label = f"[{r['source']}] {r['prompt']}" if r.get("baseline") else json.dumps(r["prompt"], ensure_ascii=False)
        label = label if len(label) <= width - 2 else label[:width - 3] + "…"
        print(f"{label:<{width}}" + "".join(f"{100 * r[f'{s}_acc']:>19.1f}%" for s in splits))
    top = strongest([{**r, "name": r["source"]} for r in rows if r.get("baseline")])
    if top:
        print(f"strongest baseline (by {top['chosen_by']}): {top['name']}; best on dev: "
              f"{(top['best_on_dev'] or {}).get('name', '-')}")


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically (a temporary file, then a rename)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def run_task_spec(args, run_dir: str | None, run_config: dict):
    """The TaskSpec to score on: the flags' task when they name one, else the run's, else sst2.
    Field flags (template, verbalizers, dev, test, ...) override either."""
    from rlprompt.config import TaskArgs

    flags = {f: getattr(args, f) for f in TaskArgs.__dataclass_fields__ if f != "save_task"}
    if run_dir and not any(flags[f] for f in TASK_FLAGS):
        task_yaml = Path(run_dir) / "task.yaml"
        if task_yaml.is_file():
            fields = {k: v for k, v in flags.items() if k not in TASK_FLAGS + ("data_dir", "seed")}
            return spec_from_flags(task_file=str(task_yaml), **fields)
        # a run from before task.yaml existed: its config.json holds the task flags
        flags = {k: (flags[k] if flags[k] is not None else run_config.get(k)) for k in flags}
    return spec_from_flags(**{k: v for k, v in flags.items() if k not in ("data_dir", "seed")})


def pick_template(args, spec, task, model, tokenizer):
    """(spec, task) with the template and verbalizers train.py's search would pick for a task of the
    user's own data given without --template / --verbalizers (the same search on the same train+dev,
    so a prompt is scored as it was found); unchanged otherwise."""
    from types import SimpleNamespace

    from rlprompt.template_search import apply_search

    if args.run:
        return spec, task
    flags = SimpleNamespace(resume=None, train=args.train, task=args.task, task_file=args.task_file,
                            template=args.template, verbalizers=args.verbalizers,
                            auto_template=False, auto_verbalizers=False)
    searched_spec, searched = apply_search(flags, spec, task, model, tokenizer)
    for note in [n for n in searched.notes if n not in task.notes]:
        print(f"note: {note}")
    return searched_spec, searched


def plot_run(run_dir: str) -> int:
    """evaluate.py --run DIR --plot: the curves PNG (and report.md for a finished run)."""
    from rlprompt.report import CURVES_PNG, plot_run_curves, run_history, write_run_report

    root = Path(run_dir)
    history = run_history(root)
    if (root / "summary.json").is_file() and (root / "prompts.json").is_file():
        summary = json.loads(read_text(root / "summary.json", "summary.json of the run"))
        write_run_report(root, summary, read_prompts_json(root), history)
        print(f"wrote {root / CURVES_PNG} and {root / 'report.md'}")
    else:
        plot_run_curves(history, root / CURVES_PNG, title=f"{root.name} (unfinished)")
        print(f"wrote {root / CURVES_PNG}")
    return 0


def export_run_card(run_dir: str, path: str) -> int:
    """evaluate.py --run DIR --export CARD.json: the run's best prompt as a prompt card."""
    from rlprompt.classifier import export_card, write_card

    card = export_card(run_dir)
    write_card(path, card)
    dev, test = ("-" if card[k] is None else f"{100 * card[k]:.1f}%" for k in ("dev_acc", "test_acc"))
    print(f"wrote {path}: {card['prompt']!r} ({card['task']}, dev {dev}, test {test}); "
          f"load it with rlprompt.PromptClassifier.from_card({str(path)!r})")
    return 0


def run(argv=None) -> int:
    """The command: score prompts (given, from a run, or sampled from its policy) on the task's splits;
    or, with --plot, draw a run's curves; or, with --compare, run the method comparison."""
    args = build_parser().parse_args(argv)
    from rlprompt.config import NUMBER_RULES, check_numbers

    check_numbers(args, {k: NUMBER_RULES[k] for k in ("seed", "dev_fraction")} | {"budget": (1, None, "at least 1")})
    if args.num_prompts < 1:
        raise UserError(f"--num-prompts must be at least 1, got {args.num_prompts}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    if args.sample is not None and args.sample < 1:
        raise UserError(f"--sample must be at least 1, got {args.sample}")
    if (args.sample or args.plot or args.export) and not args.run:
        raise UserError("--sample, --plot and --export need --run DIR (a train.py run folder)")
    splits = list(dict.fromkeys(s.strip() for s in args.splits.split(",") if s.strip()))
    if not splits or any(s not in ("train", "dev", "test") for s in splits):
        raise UserError(f"--splits {args.splits!r}: use a comma-separated list of train, dev, test")
    if args.run and not Path(args.run).is_dir():
        raise UserError(f"run folder not found: {args.run}")
    if args.plot:
        return plot_run(args.run)
    if args.export:
        return export_run_card(args.run, args.export)

    run_prompts, run_config = read_run(args.run, args.num_prompts, need_prompts=not args.sample) \
        if args.run else ([], {})
    for flag, key in (("task_model", "task_model"), ("dtype", "task_dtype")):
        if getattr(args, flag) is None:  # explicit flag, else the run's setting, else the default
            setattr(args, flag, run_config.get(key, MODEL_DEFAULTS[flag]))
    args.seed = args.seed if args.seed is not None else run_config.get("seed", 13)
    from rlprompt.calibration import check_mode

    mode = check_mode(args.calibration or (run_config.get("calibration") or "none" if args.run else "none"))

    spec = run_task_spec(args, args.run, run_config)
    task = spec.load(args.data_dir, args.seed, args.allow_download)
    for note in task.notes:
        print(f"note: {note}")
    if args.compare is not None:
        from rlprompt.compare import compare_from_args

        return compare_from_args(args, task, sys.argv[1:] if argv is None else list(argv))
    missing = [s for s in splits if not task.split(s)]
    if missing:
        raise UserError(f"task {task.name!r} has no {missing[0]} examples; pass --{missing[0]} FILE or "
                        "choose --splits among the splits it has")

    quiet_transformers()
    from rlprompt.evaluation import evaluate_prompts, prefill_score_memo
    from rlprompt.models import dtype_name, load_lm
    from rlprompt.scorer import build_scorer

    sampled = []
    if args.sample:
        from rlprompt.generate import load_policy, sample_prompts

        policy = load_policy(args.run, args.device, args.allow_download)
        sampled = sample_prompts(policy, args.sample, seed=args.seed)
        del policy
        print(f"sampled {len(sampled)} distinct prompts from the policy of {args.run}")
    prompts = collect_prompts(args, run_prompts, sampled)
    data = {s: task.split(s)[:args.limit] for s in splits}
    vectors = {}
    if run_prompts and mode != "none":  # the run's prompts are scored with the vectors they were found with
        from rlprompt.calibration import saved_vectors

        vectors = saved_vectors(read_prompts_json(Path(args.run))[:args.num_prompts], mode, len(task.verbalizers),
                                str(Path(args.run) / "prompts.json"))

    model, tokenizer = load_lm(args.task_model, args.device, args.dtype, args.allow_download)
    spec, task = pick_template(args, spec, task, model, tokenizer)
    if args.save_task:
        spec.to_file(args.save_task)
        print(f"task saved to {args.save_task} (reuse it with --task-file {args.save_task})")
    scorer = build_scorer(model, tokenizer, task.template, task.verbalizers)
    param = next(model.parameters())
    device, args.dtype = str(param.device), dtype_name(param.dtype)
    print(f"{task.name} (seed {args.seed}) | task model {args.task_model} {args.dtype} on {device} | "
          f"template {task.template!r} | verbalizers {task.verbalizers}")

    from rlprompt.baselines import Baselines, calibration_modes
    from rlprompt.calibration import calibrated, unlabeled_inputs

    texts = [p for _, p in prompts]
    scorer.check_fits(texts + [""], [e.text for s in splits for e in data[s]])
    baselines = Baselines(scorer, task, args.seed, calibration_modes(mode), progress=True)
    for s in splits:  # each example's prefix once for the baselines and the prompts (the same scores)
        prefill_score_memo(scorer, [baselines.template_prompts(), texts], data[s], desc=f"{s}: baselines and prompts")
    rows = [{"source": b.pop("name"), "baseline": True, **b,
             **{f"{s}_n": len(data[s]) for s in splits}}
            for b in baselines.rows(data)]
    scoring = calibrated(scorer, mode, unlabeled_inputs(task.train), vectors)
    prompt_rows = [{"source": source, "prompt": p, "calibration": {"mode": "none"}} for source, p in prompts]
    for s in splits:
        for row, res in zip(prompt_rows, evaluate_prompts(scoring, texts, data[s], desc=s)):
            row[f"{s}_acc"], row[f"{s}_n"] = res["accuracy"], res["n"]
    if mode != "none":
        for row in prompt_rows:
            row["calibration"] = scoring.calibration(row["prompt"])
    rows += prompt_rows
    if sampled:  # the sampled prompts best first (by the first split scored), after the others
        ranked = sorted((r for r in rows if r["source"].startswith("sample")), key=lambda r: -r[f"{splits[0]}_acc"])
        rows = [r for r in rows if not r["source"].startswith("sample")] + ranked
    sizes = {s: len(data[s]) for s in splits}
    print_table(rows, splits, sizes)

    out = Path(args.out) if args.out else (Path(args.run) / "results.json" if args.run
                                           else Path("eval_results.json"))
    write_json(out, {
        "task": task.name, "seed": args.seed, "data_dir": args.data_dir, "task_model": args.task_model,
        "dtype": args.dtype, "device": device, "template": task.template, "verbalizers": task.verbalizers,
        "limit": args.limit, "splits": sizes, "run": args.run, "calibration": mode, "results": rows,
    })
    print(f"results written to {out}")
    return 0


def main(argv=None) -> int:
    """Entry point; a UserError prints one `error:` line to stderr and returns 2."""
    return run_cli(lambda: run(argv))


if __name__ == "__main__":
    sys.exit(main())
