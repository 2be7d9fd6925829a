"""Quality benchmark: a method on several tasks x the 5 few-shot seeds, the RL prompt next to every baseline.

    python bench/quality.py --label mine                                     # train.py, today's default flags
    python bench/quality.py --label calib --tasks sst2 -- --steps 40 --calibration batch   # flags after --
    python bench/quality.py --label abl --tasks sst2 --eval-set full-dev -- --steps 40     # ablation: not test
    python bench/quality.py --label abl-x --tasks sst2 --eval-set full-dev --baselines-from abl-default -- --lr 1e-4
    python bench/quality.py --label mine --command "python my.py --task {task} --seed {seed} --out {out}"

Each (task, seed) is one run of the method (default `train.py --task T --seed S --out RUN` plus the
flags after `--`), one after another on a CPU and `--jobs` at a time on a GPU (several GPUs: round
robin). The run's summary.json gives the RL prompt's and every baseline's accuracy on the eval set; a
small result JSON per (task, seed) goes to `<results>/<label>/<task>__<seed>.json` (meant to be
committed), and a finished (task, seed) is not run again (the tables cover every finished seed of the
label, so `--seeds 13`, then `--seeds 21`, … add up, and tasks a run does not name keep their rows); a
label's results made with other flags, or with the same flags under other defaults (each result keeps
the settings that define the method, `method_config`; older ones their calibration), are refused; one
killed mid-run is continued from its checkpoint (`train.py --resume`), and a finished run folder whose
result JSON is missing is read instead of run again (refused if made with other flags). At the end it
prints one JSON document and a Markdown table (per-seed and mean ± std accuracy of the RL prompt and of
every baseline found, the strongest baseline and the RL margin over it, the baseline picked on dev as a
user without test labels would and the margin over that, wall time, pairs scored), also written next to
the results as quality.json and quality.md.

`--baselines-from LABEL` runs train.py with `--no-baselines` and takes each (task, seed)'s baselines
from that label's result, which must have the same eval set, template and verbalizers, and a calibration
that gives the same baseline rows (none and batch do; contextual adds rows): ablations that change only
the RL method then cost only its training and the RL prompts' scoring. A failed run stops the bench
before the next one starts.

One table compares runs scored in one precision on one kind of device: the same prompts move by up to
1.6 points between fp32 and bf16, and calibrated baselines between a CPU and a GPU in bf16. So a label
whose finished seeds, or whose `--baselines-from` label, were scored on another (device, precision)
than this machine would use (e.g. bf16 on an AVX512-BF16 CPU, here an AVX2-only CPU's fp32) is refused
before anything runs: continue a label where it was made, and borrow baselines made in the precision
this machine uses (`--task-dtype` after `--` can match theirs) or score them anew under a new label.

`--eval-set full-dev` scores SST-2's `full/dev.tsv` (872 examples) instead of the test set, passed
to train.py as `--test`, so ablations leave the test set alone; each result file says which set it holds.
`--learning` (full-dev only) runs `bench/learning.py` on the label after each run, so its per-run JSON
(final greedy prompt against the best of the early steps) is made while the run folder exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError
from rlprompt.tasks import SEEDS, parse_list, resolve_data_dir

REPO = Path(__file__).resolve().parent.parent
FULL_DEV = {"sst2": "sst-2/full/dev.tsv"}  # a fixed validation set that is not the test set, per task
# train.py settings that differ between the runs of one label, or only say where and how a run is kept:
# every other setting defines the method, and a label's results must agree on it
PER_RUN = {"task", "task_file", "data_dir", "seed", "train", "dev", "test", "save_task", "device", "task_dtype",
           "out", "resume", "overwrite", "allow_download", "baselines", "skip_test", "test_prompts", "top_prompts",
           "checkpoint_every", "checkpoint_every_s"}


def parse_args(argv):
    """The bench's flags; what follows `--` is passed on to the method (args.passthrough)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--label", required=True, help="name of this configuration: its results folder")
    p.add_argument("--tasks", default="sst2,mr,agnews", help="comma-separated presets (default sst2,mr,agnews)")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default the 5)")
    p.add_argument("--eval-set", choices=["test", "full-dev"], default="test",
                   help="what the accuracies are measured on: the test set, or SST-2's full/dev.tsv (872)")
    p.add_argument("--jobs", default="auto", help="runs at a time (default auto: 1 on a CPU, up to 8 on GPUs)")
    p.add_argument("--results", default=str(REPO / "bench" / "results" / "quality"),
                   help="results root; one folder per --label (default bench/results/quality)")
    p.add_argument("--runs-dir", default="runs/quality", help="where the run folders go (default runs/quality)")
    p.add_argument("--data-dir", help="few-shot data folder (passed on to the method)")
    p.add_argument("--baselines-from", metavar="LABEL", help="take the baselines from this label's results "
                   "for the same (task, seed) instead of scoring them again (train.py --no-baselines)")
    p.add_argument("--learning", action="store_true", help="after each run, bench/learning.py on the label (final "
                   "greedy vs early best; --eval-set full-dev only): its per-run JSON lands with the result")
    p.add_argument("--command", help="the method as a command line with {task}, {seed}, {out} (and {data_dir}, "
                   "{test}) filled in; it must write {out}/summary.json as train.py does (default: train.py)")
    args = p.parse_args(argv)
    args.passthrough = passthrough
    args.train_flags = None if args.command else train_flags(passthrough)  # train.py's settings of these flags
    args.method_config = None if args.command else method_config(vars(args.train_flags))
    args.tasks = parse_list(args.tasks) or []
    try:
        args.seeds = [int(s) for s in parse_list(args.seeds) or []]
    except ValueError:
        raise UserError(f"--seeds {args.seeds!r}: give comma-separated integers") from None
    if not args.tasks or not args.seeds:
        raise UserError("give at least one task (--tasks) and one seed (--seeds)")
    if args.learning and args.eval_set != "full-dev":
        raise UserError("--learning compares prompts on the validation set: use it with --eval-set full-dev")
    if args.eval_set == "full-dev":
        missing = [t for t in args.tasks if t not in FULL_DEV]
        if missing:
            raise UserError(f"--eval-set full-dev exists for {', '.join(FULL_DEV)} only, not {', '.join(missing)}")
    return args


def eval_file(args, task: str) -> str | None:
    """The --test override of the eval set (None: the task's own test set)."""
    if args.eval_set == "test":
        return None
    path = resolve_data_dir(args.data_dir) / FULL_DEV[task]
    if not path.is_file():
        raise UserError(f"--eval-set full-dev: {path} not found")
    return str(path)


def method_command(args, task: str, seed: int, out: Path) -> list[str]:
    """The command line of one (task, seed) run."""
    test = eval_file(args, task)
    if args.command:
        data_dir = args.data_dir or str(resolve_data_dir(None))
        fields = {"task": task, "seed": seed, "out": str(out), "data_dir": data_dir, "test": test or ""}
        return [part.format(**fields) for part in shlex.split(args.command)] + args.passthrough
    from rlprompt.checkpoint import CHECKPOINT_NAME  # imports torch: only when a run is to be made

    # A run killed before its result was written left a checkpoint: continue it rather than start over.
    where = "--resume" if (out / CHECKPOINT_NAME).is_file() else "--out"
    cmd = [sys.executable, str(REPO / "train.py"), "--task", task, "--seed", str(seed), where, str(out)]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += ["--test", test] if test else []
    cmd += ["--no-baselines"] if args.baselines_from else []
    return cmd + args.passthrough


def strongest(baselines: dict[str, dict], given: dict | None) -> dict | None:
    """The run's strongest baseline: summary.json's own when it names one, else the best on dev."""
    if given and given.get("name") in baselines:
        return {"name": given["name"], **baselines[given["name"]]}
    if not baselines:
        return None
    name = max(baselines, key=lambda n: baselines[n]["dev_acc"] if baselines[n]["dev_acc"] is not None else -1)
    return {"name": name, **baselines[name]}


def difference(a, b):
    """a − b, or None when either is missing."""
    return None if a is None or b is None else a - b


def baseline_on_dev(baselines: dict[str, dict]) -> dict:
    """The baseline a user would take without test labels ({} when none was scored on dev): train.py's
    `best_on_dev`, the best on dev with ties to the first (simplest)."""
    from rlprompt.baselines import strongest as strongest_rows

    top = strongest_rows([{"name": n, **b} for n, b in baselines.items()])
    return (top or {}).get("best_on_dev") or {}


def result_from_summary(summary: dict, meta: dict) -> dict:
    """The small per-(task, seed) result: RL prompt, baselines, strongest baseline and margin, cost."""
    best = summary.get("best_prompt") or {}
    baselines = {b["name"]: {"prompt": b.get("prompt"), "dev_acc": b.get("dev_acc"), "test_acc": b.get("test_acc")}
                 for b in summary.get("baselines", [])}
    top = strongest(baselines, summary.get("strongest_baseline"))
    rl = best.get("test_acc")
    margin = difference(rl, (top or {}).get("test_acc"))
    return {
        **meta,
        "eval_n": summary.get("examples", {}).get("test"),
        "rl": {"prompt": best.get("prompt"), "dev_acc": best.get("dev_acc"), "test_acc": rl},
        "baselines": baselines, "strongest_baseline": top, "margin": margin,
        "train_wall_s": summary.get("wall_s"), "phases_s": summary.get("phases_s"),
        "hardware": summary.get("hardware"), "steps": summary.get("steps"),
        "task_dtype": summary.get("task_dtype"),
        "method_config": method_config(summary["config"]) if "config" in summary else None,
        "pairs_scored": summary.get("pairs_scored"), "template": summary.get("template"),
        "verbalizers": summary.get("verbalizers"), "calibration": summary.get("config", {}).get("calibration"),
    }


def train_flags(passthrough: list[str]) -> argparse.Namespace:
    """train.py's settings (TrainConfig's fields, the code's defaults filled in) for the flags after `--`."""
    from rlprompt.config import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser.parse_known_args(passthrough)[0]


def method_config(config: dict) -> dict:
    """The settings of a train.py config that define the method (all but PER_RUN's)."""
    return {k: v for k, v in config.items() if k not in PER_RUN}


def run_precision(args) -> tuple[str, str] | None:
    """(device type, task LM dtype) that train.py will score in on this machine with the flags after
    `--`, e.g. ('cpu', 'fp32') on an AVX2-only CPU; None for a `--command` method (its flags are its own)."""
    if args.train_flags is None:
        return None
    from rlprompt.models import dtype_name, parse_dtype, pick_device

    device = pick_device(args.train_flags.device)
    return device.type, dtype_name(parse_dtype(args.train_flags.task_dtype, device))


def result_precision(result: dict) -> tuple[str, str] | None:
    """(device type, task LM dtype) a result was scored in: its `task_dtype`, else what `--task-dtype` in
    its flags or, by default, its hardware (bf16 where `fast_bf16`) gave; None when it does not say."""
    hw = result.get("hardware") or {}
    if not hw.get("device"):
        return None
    device = hw["device"].split(":")[0]
    dtype = result.get("task_dtype")
    if dtype is None:
        flags = result.get("method_args") or []
        given = flags[flags.index("--task-dtype") + 1] if "--task-dtype" in flags[:-1] else "auto"
        if given == "auto":
            dtype = "bf16" if hw.get("fast_bf16") else "fp32"
        else:
            from rlprompt.models import dtype_name, parse_dtype

            dtype = dtype_name(parse_dtype(given))
    return device, dtype


def check_precision(mine: tuple[str, str] | None, results: dict[str, dict], advice: str) -> None:
    """A UserError (ending in `advice`) when a result in `results` (what -> result) was scored in another
    (device, dtype) than `mine`, the precision of the runs to come (see the module docstring)."""
    for what, result in results.items():
        theirs = result_precision(result)
        if mine and theirs and theirs != mine:
            raise UserError(f"{what} was scored in {theirs[1]} on {theirs[0]}, this machine would score in "
                            f"{mine[1]} on {mine[0]}: one table compares one precision; "
                            + advice.format(dtype=theirs[1]))


def result_path(args, task: str, seed: int, label: str | None = None) -> Path:
    """Where the result JSON of (task, seed) under `label` (default this run's) lives."""
    return Path(args.results) / (label or args.label) / f"{task}__{seed}.json"


def borrowed_baselines(args, task: str, seed: int) -> dict | None:
    """The result of --baselines-from for (task, seed), or None without the flag (a UserError if missing)."""
    if not args.baselines_from:
        return None
    path = result_path(args, task, seed, args.baselines_from)
    if not path.is_file():
        raise UserError(f"--baselines-from {args.baselines_from}: no result {path}; run that label first")
    other = json.loads(path.read_text(encoding="utf-8"))
    if other.get("eval_set") != args.eval_set:
        raise UserError(f"--baselines-from {args.baselines_from}: {path} holds eval set {other.get('eval_set')}, "
                        f"not {args.eval_set}")
    return other


def with_baselines(result: dict, other: dict) -> dict:
    """`result` (a --no-baselines run) with `other`'s baselines, strongest baseline and the new margin;
    the template and verbalizers must be the same, and the calibrations must give the same baseline rows."""
    from rlprompt.baselines import calibration_modes

    for key in ("template", "verbalizers", "eval_n"):
        if result.get(key) != other.get(key):
            raise UserError(f"--baselines-from {other['label']}: its {key} {other.get(key)!r} differs from this "
                            f"run's {result.get(key)!r}")
    mine, theirs = result.get("calibration") or "none", other.get("calibration") or "none"
    if calibration_modes(mine) != calibration_modes(theirs):
        raise UserError(f"--baselines-from {other['label']}: its baselines were scored for calibration {theirs!r}, "
                        f"which has other baseline rows than this run's {mine!r}")
    top = other["strongest_baseline"]
    margin = difference(result["rl"]["test_acc"], (top or {}).get("test_acc"))
    return {**result, "baselines": other["baselines"], "strongest_baseline": top, "margin": margin,
            "baselines_from": other["label"]}


def load_done(args, task: str, seed: int) -> dict | None:
    """The result of a finished (task, seed), or None; a result made with other flags is an error."""
    path = result_path(args, task, seed)
    if not path.is_file():
        return None
    done = json.loads(path.read_text(encoding="utf-8"))
    if done.get("eval_set") != args.eval_set or done.get("method_args") != args.passthrough \
            or done.get("command_template") != args.command:
        raise UserError(f"{path} was made with other settings (eval set {done.get('eval_set')}, flags "
                        f"{done.get('method_args')}); use another --label or delete it")
    mine = args.method_config or {}
    # the same flags under other defaults are another method; results from before method_config say calibration
    theirs = done.get("method_config")
    if theirs is None:
        theirs = {"calibration": done["calibration"]} if done.get("calibration") is not None else {}
    for key, value in theirs.items():
        if key in mine and value != mine[key]:
            raise UserError(f"{path} was made with {key} {value!r}, these flags now give {mine[key]!r} (the "
                            "defaults changed since): give this run another --label")
    return done


def finished_seeds(args, task: str) -> set[int]:
    """Seeds of `task` with a result under this label, from this invocation or an earlier one."""
    found = (f.stem.rpartition("__")[2] for f in (Path(args.results) / args.label).glob(f"{task}__*.json"))
    return {int(s) for s in found if s.isdigit()}


def label_tasks(args) -> list[str]:
    """This invocation's tasks, then any other task with a result under the label (so a run on some
    tasks never drops the others from the label's tables)."""
    found = {f.stem.rpartition("__")[0] for f in (Path(args.results) / args.label).glob("*__*.json")}
    return list(args.tasks) + sorted(found - set(args.tasks))


def repo_env(**extra) -> dict:
    """This process's environment with the repository first on PYTHONPATH, plus `extra`."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def finished_run(args, task: str, seed: int, out: Path) -> dict | None:
    """The summary.json of a train.py run in `out` that has finished (its chosen prompt scored on the
    eval set), or None. Such a folder without a result JSON (the bench was stopped after the run, or
    --results names another folder) is read, not run again; one made with other settings is an error."""
    path = out / "summary.json"
    if args.command or not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    config = summary.get("config") or {}
    if (summary.get("best_prompt") or {}).get("test_acc") is None or not config:
        return None  # interrupted while scoring the eval set: train.py --resume finishes it
    theirs = {**method_config(config), "task": config.get("task"), "seed": config.get("seed"),
              "test": config.get("test"), "baselines": config.get("baselines")}
    mine = {**args.method_config, "task": task, "seed": seed, "test": eval_file(args, task),
            "baselines": not args.baselines_from}
    for key, value in mine.items():
        if key in theirs and theirs[key] != value:
            raise UserError(f"{out} holds a finished run made with {key} {theirs[key]!r}, not {value!r}: move it "
                            "away, or use another --label or --runs-dir")
    return summary


def run_one(args, task: str, seed: int, gpu: str | None) -> dict:
    """Run the method on one (task, seed) (or read its finished run folder), write and return its result."""
    out = Path(args.runs_dir) / args.label / f"{task}__{seed}"
    out.mkdir(parents=True, exist_ok=True)
    summary = finished_run(args, task, seed, out)
    read_from = {}
    if summary is not None:
        print(f"[{task} seed {seed}] read from the finished run in {out}", file=sys.stderr)
        cmd, read_from = None, {"read_from": str(out)}  # no command ran
        wall = sum((summary.get("phases_s") or {}).values())  # its own phases: this bench did not time it
    else:
        cmd = method_command(args, task, seed, out)
        env = repo_env(**({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        start = time.time()
        log_path = out.parent / f"{task}__{seed}.log"
        with open(log_path, "a", encoding="utf-8") as log:  # a resume keeps the killed run's log
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        wall = time.time() - start
        if proc.returncode != 0:
            raise UserError(f"{task} seed {seed} failed (exit {proc.returncode}); see {log_path}")
        summary_path = out / "summary.json"
        if not summary_path.is_file():
            raise UserError(f"{task} seed {seed}: the method wrote no {summary_path}")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    meta = {"label": args.label, "task": task, "seed": seed, "eval_set": args.eval_set,
            "method_args": args.passthrough, "command_template": args.command, "command": cmd,
            "wall_s": round(wall, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **read_from}
    result = result_from_summary(summary, meta)
    other = borrowed_baselines(args, task, seed)
    if other is not None:
        result = with_baselines(result, other)
    path = result_path(args, task, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if args.learning:
        learning(args)
    return result


def learning(args) -> None:
    """bench/learning.py on the label's finished runs (those analysed before are skipped); its JSONs go
    next to this bench's results, so they survive the run folders."""
    cmd = [sys.executable, str(REPO / "bench" / "learning.py"), "--label", args.label, "--runs-dir", args.runs_dir,
           "--results", str(Path(args.results).parent / "learning")]
    proc = subprocess.run(cmd, cwd=REPO, env=repo_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"bench/learning.py --label {args.label} failed: {last}")


def mean_std(values: list) -> dict:
    """{'mean', 'std', 'n'} of the non-None values (sample std; 0 for one value)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def aggregate(results: list[dict]) -> dict:
    """Per task: per-seed and mean ± std of the RL prompt, each baseline (by name, as found), the
    strongest baseline and the RL margin over it, the baseline picked on dev and the margin over that,
    wall time and pairs scored."""
    tasks = {}
    for task in dict.fromkeys(r["task"] for r in results):
        rows = sorted((r for r in results if r["task"] == task), key=lambda r: r["seed"])
        names = list(dict.fromkeys(n for r in rows for n in r["baselines"]))
        per_seed = {str(r["seed"]): r for r in rows}
        on_dev = {s: baseline_on_dev(r["baselines"]) for s, r in per_seed.items()}

        def column(get):
            values = {s: get(r) for s, r in per_seed.items()}
            return {"per_seed": values, **mean_std(list(values.values()))}

        tasks[task] = {
            "seeds": [r["seed"] for r in rows],
            "eval_set": sorted({r["eval_set"] for r in rows}), "eval_n": rows[0].get("eval_n"),
            "rl": column(lambda r: r["rl"]["test_acc"]),
            "baselines": {n: column(lambda r, n=n: r["baselines"].get(n, {}).get("test_acc")) for n in names},
            "strongest_baseline": {**column(lambda r: (r["strongest_baseline"] or {}).get("test_acc")),
                                   "names": {s: (r["strongest_baseline"] or {}).get("name")
                                             for s, r in per_seed.items()}},
            "margin": column(lambda r: r["margin"]),
            "baseline_on_dev": {**column(lambda r: on_dev[str(r["seed"])].get("test_acc")),
                                "names": {s: b.get("name") for s, b in on_dev.items()}},
            "margin_on_dev": column(lambda r: difference(r["rl"]["test_acc"], on_dev[str(r["seed"])].get("test_acc"))),
            "wall_s": {"total": round(sum(r["wall_s"] for r in rows), 1), **mean_std([r["wall_s"] for r in rows])},
            "pairs_scored": {"total": sum(r["pairs_scored"] or 0 for r in rows),
                             **mean_std([r["pairs_scored"] for r in rows])},
        }
    return tasks


def pm(col: dict, sign: bool = False) -> str:
    """A mean ± std column as percentages, e.g. '82.9 ± 1.5' ('+0.6 ± 2.8' with `sign`)."""
    return "–" if col["mean"] is None else f"{100 * col['mean']:{'+' if sign else ''}.1f} ± {100 * col['std']:.1f}"


def markdown(label: str, tasks: dict) -> str:
    """The mean ± std table (one column per baseline name found) and the per-seed table."""
    names = list(dict.fromkeys(n for t in tasks.values() for n in t["baselines"]))
    head = ["task", "eval set", "seeds", "RL prompt", *names, "strongest baseline", "RL − strongest",
            "baseline picked on dev", "RL − picked on dev", "wall s/seed", "pairs/seed"]
    lines = [f"### {label}: accuracy % (mean ± std over seeds)", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for task, t in tasks.items():
        base = [pm(t["baselines"][n]) if n in t["baselines"] else "–" for n in names]
        lines.append(f"| {task} | {','.join(t['eval_set'])} (n={t['eval_n']}) | {len(t['seeds'])} | {pm(t['rl'])} | "
                     + " | ".join(base) + f" | {pm(t['strongest_baseline'])} | {pm(t['margin'], sign=True)} | "
                     f"{pm(t['baseline_on_dev'])} | {pm(t['margin_on_dev'], sign=True)} | "
                     f"{t['wall_s']['mean']:.0f} | {t['pairs_scored']['mean']:.0f} |")
    lines += ["", "Per seed (accuracy %; strongest baseline and baseline picked on dev by name):", "",
              "| task | seed | RL prompt | " + " | ".join(names) + " | strongest | RL − strongest | picked on dev |",
              "|" + "---|" * (6 + len(names))]

    def pct(x):
        return "–" if x is None else f"{100 * x:.1f}"

    for task, t in tasks.items():
        for s in map(str, t["seeds"]):
            base = [pct(t["baselines"][n]["per_seed"].get(s)) if n in t["baselines"] else "–" for n in names]
            m = t["margin"]["per_seed"][s]
            lines.append(f"| {task} | {s} | {pct(t['rl']['per_seed'][s])} | " + " | ".join(base)
                         + f" | {t['strongest_baseline']['names'][s]} {pct(t['strongest_baseline']['per_seed'][s])} | "
                         + ("–" if m is None else f"{100 * m:+.1f}")
                         + f" | {t['baseline_on_dev']['names'][s]} {pct(t['baseline_on_dev']['per_seed'][s])} |")
    return "\n".join(lines)


def gpus() -> list[str]:
    """The CUDA device indices this machine has (none without CUDA)."""
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def main(argv=None) -> int:
    args = parse_args(argv)
    pairs = [(t, s) for t in args.tasks for s in args.seeds]
    done = {(t, s): load_done(args, t, s) for t, s in pairs}
    todo = [p for p in pairs if done[p] is None]
    for t, s in pairs:
        if done[(t, s)] is not None:
            print(f"[{t} seed {s}] done before: {result_path(args, t, s)}", file=sys.stderr)
    borrowed = {(t, s): borrowed_baselines(args, t, s) for t, s in todo}  # fails before torch loads
    for t, s in todo:
        method_command(args, t, s, Path("."))  # bad settings fail before anything runs
    mine = run_precision(args) if todo else None
    for (t, s), other in borrowed.items():
        if other is not None:
            check_precision(mine, {f"--baselines-from {args.baselines_from} ({t} seed {s})": other},
                            "run it where that was made, pass --task-dtype {dtype} after --, or score "
                            "baselines of your own (no --baselines-from) under another --label")
    finished = sorted((t, s) for t in args.tasks for s in finished_seeds(args, t))
    done.update({p: load_done(args, *p) for p in finished if done.get(p) is None})  # read once, reused below
    check_precision(mine, {f"{args.label} {t} seed {s}": done[(t, s)] for t, s in finished},
                    "run the label where it was made, or use another --label")
    devices = gpus()
    jobs = (min(8, len(todo)) if devices else 1) if args.jobs == "auto" else int(args.jobs)
    jobs = max(1, jobs)

    failed = threading.Event()  # set by a failed run: the runs not started yet are skipped

    def work(i_pair):
        i, (t, s) = i_pair
        if failed.is_set():
            return (t, s), None
        gpu = devices[i % len(devices)] if devices and jobs > 1 else None
        print(f"[{t} seed {s}] running" + (f" on GPU {gpu}" if gpu is not None else ""), file=sys.stderr)
        try:
            r = run_one(args, t, s, gpu)
        except BaseException:
            failed.set()
            raise
        acc = r["rl"]["test_acc"]
        print(f"[{t} seed {s}] finished in {r['wall_s']:.0f} s: RL prompt "
              f"{'–' if acc is None else f'{100 * acc:.1f}'} % on {args.eval_set}", file=sys.stderr)
        return (t, s), r

    with ThreadPoolExecutor(jobs) as pool:
        for key, r in pool.map(work, enumerate(todo)):  # raises the first failure, in order
            done[key] = r
    covered = [(t, s) for t in label_tasks(args)
               for s in sorted((set(args.seeds) if t in args.tasks else set()) | finished_seeds(args, t))]
    results = [done[p] if p in done else load_done(args, *p) for p in covered]  # seeds run one at a time add up
    tasks = aggregate(results)
    doc = {"label": args.label, "eval_set": args.eval_set, "method_args": args.passthrough,
           "command": args.command or "train.py", "tasks": tasks}
    table = markdown(args.label, tasks)
    folder = Path(args.results) / args.label
    atomic_write_text(folder / "quality.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(folder / "quality.md", table + "\n")
    print(json.dumps(doc, indent=2, ensure_ascii=False))
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
