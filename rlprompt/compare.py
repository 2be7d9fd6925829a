"""Run prompt-optimization methods side by side: one task LM, one data split, one pair budget each.

    python evaluate.py --task sst2 --compare manual,rl,ape,evo,deletion --budget 4096

Every module of the rlprompt.methods package is imported, so every registered method (discrete ones
here, soft ones wherever they are added) can be named. Each method gets a fresh scorer (`build_scorer`) on the
same task LM (no memo shared between methods) and the same seed. The results go to
comparison.json, comparison.md and comparison.png (best dev accuracy against pairs scored) in the
output folder, rewritten after every method so a long comparison leaves partial results.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import shlex
import time
from pathlib import Path

from rlprompt.errors import UserError
from rlprompt.methods import METHODS, MethodContext, MethodResult, get_method
from rlprompt.report import pct

_import_errors: dict[str, str] = {}


def load_methods() -> dict:
    """Import every module under rlprompt.methods (each registers its methods); return METHODS.

    A module that fails to import is remembered, and named only if an unknown method is asked for.
    """
    import rlprompt.methods as pkg

    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as e:
            _import_errors[info.name] = f"{type(e).__name__}: {e}"
    return METHODS


def resolve_methods(names: list[str]) -> list[str]:
    """Check every name is registered (a UserError otherwise, naming modules that failed to import)."""
    load_methods()
    if not names:
        raise UserError(f"--compare needs at least one method; known: {', '.join(sorted(METHODS))}")
    for name in names:
        if name not in METHODS:
            hint = "".join(f"; {m} failed to import ({err})" for m, err in _import_errors.items())
            raise UserError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}{hint}")
    return list(dict.fromkeys(names))


def parse_method_options(items: list[str]) -> dict[str, dict[str, str]]:
    """['ape.keep_frac=0.3', 'skip_test=1'] -> {'ape': {'keep_frac': '0.3'}, '*': {'skip_test': '1'}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--method-option {item!r}: expected METHOD.KEY=VALUE or KEY=VALUE")
        method, dot, name = key.strip().rpartition(".")
        out.setdefault(method if dot else "*", {})[name] = value
    return out


def run_comparison(task, task_model, task_tokenizer, methods: list[str], budget: int, seed: int = 13,
                   out_dir: Path | None = None, options: dict | None = None, policy_model: str = "smollm2-135m",
                   device: str = "auto", progress: bool = True, meta: dict | None = None,
                   calibration: str = "none") -> list[MethodResult]:
    """Run each method under `budget` pairs; write comparison.{json,md,png} to `out_dir` after each one.
    With a `calibration` mode every method scores calibrated log-probs (vectors from the unlabeled train
    inputs; their own pairs are not charged to the budget)."""
    from rlprompt.calibration import calibrated, unlabeled_inputs
    from rlprompt.scorer import build_scorer
    from rlprompt.checkpoint import seed_everything

    options = options or {}
    results = []
    for name in resolve_methods(methods):
        opts = {**options.get("*", {}), **options.get(name, {}), "progress": progress}
        if out_dir is not None:
            opts["out_dir"] = str(Path(out_dir) / name)
        scorer = calibrated(build_scorer(task_model, task_tokenizer, task.template, task.verbalizers),
                            calibration, unlabeled_inputs(task.train))
        ctx = MethodContext(task=task, task_model=task_model, task_tokenizer=task_tokenizer, scorer=scorer,
                            pair_budget=budget, seed=seed, policy_model=policy_model, device=device, options=opts)
        seed_everything(seed)
        if progress:
            print(f"[{name}] running (budget {budget} pairs)", flush=True)
        start = time.perf_counter()
        result = get_method(name)(ctx)
        result.extra["total_s"] = round(time.perf_counter() - start, 1)  # search + test scoring
        results.append(result)
        if progress:
            print(f"[{name}] {format_row(result)}", flush=True)
        if out_dir is not None:
            write_outputs(Path(out_dir), results, budget, meta or {})
    return results


def format_row(r: MethodResult) -> str:
    """One line: accuracies, length, pairs and time of a result."""
    return (f"test {pct(r.test_acc)} | dev {pct(r.dev_acc)} | {r.prompt_tokens} tokens | "
            f"{r.pairs_scored} pairs | {r.wall_s:.0f} s | prompt {r.prompt!r}")


def markdown_table(results: list[MethodResult]) -> str:
    """The comparison as a Markdown table, one row per method."""
    lines = ["| method | prompt | tokens | dev acc | test acc | pairs scored | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        prompt = "(soft prompt)" if r.prompt is None else f"`{r.prompt.replace('|', '/')}`" if r.prompt else "(empty)"
        lines.append(f"| {r.method} | {prompt} | {r.prompt_tokens} | {pct(r.dev_acc)} | {pct(r.test_acc)} | "
                     f"{r.pairs_scored} | {r.wall_s:.0f} |")
    return "\n".join(lines)


def plot_budget_curves(results: list[MethodResult], budget: int, path: Path, title: str = "") -> None:
    """PNG: best dev accuracy so far against pairs scored, one step line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", "-.", ":"]
    for i, r in enumerate(results):
        points = sorted(r.curve) or [(r.pairs_scored, r.dev_acc)]
        xs, ys = [p for p, _ in points], [100 * a for _, a in points]
        line, = ax.step(xs + [max(r.pairs_scored, xs[-1])], ys + [ys[-1]], where="post", label=r.method,
                        linestyle=styles[i % len(styles)], linewidth=1.6)
        ax.plot(xs, ys, ".", color=line.get_color())
        ax.plot([r.pairs_scored], [100 * r.dev_acc], "o", color=line.get_color())  # the final selection
    ax.axvline(budget, color="grey", linestyle=":", linewidth=1, label="budget")
    ax.set_xlabel("(prompt, example) pairs scored")
    ax.set_ylabel("best dev accuracy so far (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, results: list[MethodResult], budget: int, meta: dict) -> None:
    """comparison.json (everything), comparison.md (the table) and comparison.png (the curves)."""
    from rlprompt.atomic import atomic_write_text

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        data = {**meta, "budget": budget, "results": [dataclasses.asdict(r) for r in results]}
        atomic_write_text(out_dir / "comparison.json", json.dumps(data, indent=2, default=str) + "\n")
        head = [f"Task {meta.get('task', '?')} (split seed {meta.get('seed', '?')}), task LM "
                f"{meta.get('task_model', '?')} {meta.get('dtype', '')} on {meta.get('device', '?')}, "
                f"budget {budget} (prompt, example) pairs per method, calibration "
                f"{meta.get('calibration', 'none')}.", ""]
        if meta.get("command"):
            head += [f"Command: `{meta['command']}`", ""]
        atomic_write_text(out_dir / "comparison.md", "\n".join(head) + markdown_table(results) + "\n")
        plot_budget_curves(results, budget, out_dir / "comparison.png",
                    f"{meta.get('task', '')}: budget {budget} pairs per method")
    except OSError as e:
        raise UserError(f"cannot write the comparison to {out_dir}: {e.strerror or e}") from None


def compare_from_args(args, task, argv: list[str]) -> int:
    """evaluate.py --compare on a loaded task: load the task LM once, run the methods, print and write."""
    if args.prompt or args.prompts_file or args.run or args.sample:
        raise UserError("--compare does not take --prompt, --prompts-file, --run or --sample; load a "
                        "train.py run as the RL row with --method-option rl.run=DIR")
    if args.budget < 1:
        raise UserError(f"--budget must be at least 1 pair, got {args.budget}")
    from rlprompt.calibration import check_mode

    calibration = check_mode(getattr(args, "calibration", None) or "none")
    names = resolve_methods([m.strip() for m in args.compare.split(",") if m.strip()])
    options = parse_method_options(args.method_option)
    if not task.train or not task.dev:
        raise UserError(f"task {task.name!r} needs train and dev examples for --compare")

    from rlprompt.cli import quiet_transformers
    from rlprompt.models import dtype_name, load_lm

    if args.limit:
        task.test = task.test[:args.limit]
    quiet_transformers()
    model, tokenizer = load_lm(args.task_model, args.device, args.dtype, args.allow_download)
    param = next(model.parameters())
    device, dtype = str(param.device), dtype_name(param.dtype)
    out_dir = Path(args.out or f"runs/compare__{task.name}__{args.seed}")
    meta = {"task": task.name, "seed": args.seed, "task_model": args.task_model, "dtype": dtype,
            "device": device, "policy_model": args.policy_model, "template": task.template,
            "verbalizers": task.verbalizers, "examples": {"train": len(task.train), "dev": len(task.dev),
                                                          "test": len(task.test)},
            "methods": names, "calibration": calibration, "command": "python evaluate.py " + " ".join(shlex.quote(a) for a in argv)}
    print(f"{task.name} (seed {args.seed}) | task model {args.task_model} {dtype} on {device} | "
          f"budget {args.budget} pairs per method | methods {', '.join(names)}")
    results = run_comparison(task, model, tokenizer, names, args.budget, args.seed, out_dir, options,
                             args.policy_model, args.device, progress=True, meta=meta, calibration=calibration)
    print()
    print(markdown_table(results))
    print(f"comparison written to {out_dir}/comparison.{{json,md,png}}")
    return 0
