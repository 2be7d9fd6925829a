"""A run folder: where a training run lives, what it writes there and how it is read back.

    run_dir/ config.json  task.yaml  checkpoint.pt  prompts.json  summary.json  history.json
             report.md  curves.png  events.out.tfevents.*  (TensorBoard)
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from pathlib import Path

from rlprompt.atomic import atomic_write_text
from rlprompt.checkpoint import load_checkpoint
from rlprompt.cli import sigterm_as_interrupt
from rlprompt.config import TrainConfig
from rlprompt.errors import UserError

# Identity of a run: a resumed run must not change these.
RUN_IDENTITY = ("task", "task_file", "data_dir", "seed", "train", "dev", "test", "text_column",
                "label_column", "labels", "verbalizers", "template", "manual_prompt", "dev_fraction",
                "policy_model", "task_model", "task_dtype", "prompt_length", "prompts_per_step",
                "policy_start", "init_prompt", "prompt_vocab", "adaptor_hidden", "optimizer", "trainer", "calibration",
                "train_batch", "reward_on")
TASK_FILE = "task.yaml"  # the run's task, paths resolved: what --resume and evaluate.py --run read


LOCK_FILE = ".lock"  # held (fcntl.flock) by the one train.py process writing the folder


class RunFolder:
    """A run folder held by this process: an exclusive lock on its `.lock` file for the life of the
    process, so a second train.py on the same folder is refused instead of mixing two runs' files."""

    def __init__(self, path: Path, created: bool, lock_fd: int | None):
        self.path, self.created, self._lock_fd = path, created, lock_fd

    def discard_if_new(self) -> None:
        """Undo taking a folder that holds nothing but the lock: a run that failed before training
        (unknown model or device) leaves no lock file, nor an empty folder that it created."""
        if self._lock_fd is None or {p.name for p in self.path.iterdir()} - {LOCK_FILE}:
            return
        (self.path / LOCK_FILE).unlink(missing_ok=True)
        self.release()
        if self.created:
            self.path.rmdir()

    def release(self) -> None:
        """Drop the run-folder lock (idempotent)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid else ""


def _try_lock(lock_path: Path, create: bool) -> int | None:
    """An fd holding an exclusive flock on lock_path; a UserError when another process holds it.
    None when the file does not exist and `create` is false."""
    try:
        fd = os.open(lock_path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"run folder {lock_path.parent} is in use by another train.py process"
                        f"{_holder(lock_path)}; wait for it to finish or choose another --out") from None
    return fd


def _contents(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []


def make_run_dir(cfg: TrainConfig, task_name: str) -> RunFolder:
    """The run folder, created and locked by this process (rank 0 under accelerate launch; the other
    ranks only learn its path). A folder that holds files is only taken with --resume, or with
    --overwrite, which moves the old folder aside to `<out>.old-<time>` first. A UserError when the
    folder is in use, holds another run, or cannot be written."""
    from rlprompt.distributed import is_main_process, same_on_all_processes

    default = f"runs/{task_name}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(same_on_all_processes(cfg.out or default))  # rank 0's clock under accelerate launch
    folder, problem = RunFolder(run_dir, False, None), None
    if is_main_process():
        try:
            folder = _take(run_dir, cfg)
        except UserError as e:
            problem = str(e)
    problem = same_on_all_processes(problem)  # every process stops, not rank 0 alone
    if problem:
        raise UserError(problem)
    return folder


def _take(run_dir: Path, cfg: TrainConfig) -> RunFolder:
    try:
        if _contents(run_dir) and not cfg.resume:
            held = _try_lock(run_dir / LOCK_FILE, create=False)  # refuse first if a live run holds it
            if not cfg.overwrite:
                if held is not None:
                    os.close(held)
                raise UserError(f"--out {run_dir} already holds a run ({', '.join(_contents(run_dir)[:4])}"
                                f"{', ...' if len(_contents(run_dir)) > 4 else ''}); continue it with --resume "
                                f"{run_dir}, or start a new one there with --overwrite (the old one is moved aside)")
            aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while aside.exists():
                aside, n = aside.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
            run_dir.rename(aside)
            if held is not None:
                os.close(held)
            print(f"note: --overwrite: the run that was in {run_dir} is now in {aside}")
        created = not run_dir.exists()
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _try_lock(run_dir / LOCK_FILE, create=True)
        os.ftruncate(lock_fd, 0)
        os.write(lock_fd, f"{os.getpid()}\n".encode())
    except OSError as e:
        raise UserError(f"cannot write to run folder {run_dir}: {e.strerror or e}") from None
    for stale in run_dir.glob(".*.tmp"):  # left by a kill during an atomic write; we hold the lock
        stale.unlink(missing_ok=True)
    return RunFolder(run_dir, created, lock_fd)


def load_run_task(cfg: TrainConfig, resume_dir: Path | None):
    """(TaskSpec with paths resolved, Task): the resumed run's task.yaml, else the one the flags name."""
    from rlprompt.tasks import TaskSpec

    if resume_dir is not None and (resume_dir / TASK_FILE).is_file():
        spec = TaskSpec.from_file(resume_dir / TASK_FILE)
    else:
        spec = cfg.task_spec().resolved(cfg.data_dir, cfg.seed)
    return spec, spec.load(cfg.data_dir, cfg.seed, cfg.allow_download)


def load_finished_run(run_dir: Path) -> tuple[dict, TrainConfig, object]:
    """(checkpoint state, TrainConfig, Task) of a run folder, for analyses after training."""
    state = load_checkpoint(run_dir)
    cfg = TrainConfig(**{**state["config"], "resume": None, "overwrite": False})
    _, task = load_run_task(cfg, run_dir)
    return state, cfg, task


def finished_runs(folder: Path) -> list[Path]:
    """The run folders under `folder` (one per task and seed, `<task>__<seed>`) that wrote a summary.json."""
    runs = sorted(d for d in Path(folder).glob("*__*") if (d / "summary.json").is_file())
    if not runs:
        raise UserError(f"no finished runs in {folder}")
    return runs


def cached_json(path: Path, make) -> tuple[dict, bool]:
    """(the JSON at `path`, False) when it exists, else (make(), True) after writing it there atomically."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")), False
    doc = make()
    atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return doc, True


def per_run_results(results: Path, runs_folder: Path, make):
    """(name, result, run folder or None, made now) for each run, sorted by name: every
    `results/<task>__<seed>.json` read back, and every finished run in `runs_folder` without one
    analysed by `make(run_dir)` and written there. Results whose run folders are gone (for example,
    runs made on a lent machine) still count."""
    results = Path(results)
    found = {p.stem: (json.loads(p.read_text(encoding="utf-8")), None, False) for p in results.glob("*__*.json")}
    if Path(runs_folder).is_dir() or not found:
        for run_dir in finished_runs(runs_folder):
            if run_dir.name in found:
                found[run_dir.name] = (found[run_dir.name][0], run_dir, False)
            else:
                doc, _ = cached_json(results / f"{run_dir.name}.json", lambda: make(run_dir))
                found[run_dir.name] = (doc, run_dir, True)
    return [(name, *found[name]) for name in sorted(found)]


def finalize(cfg: TrainConfig, book, task, scorer, run_dir: Path, phases_s: dict | None = None) -> dict:
    """Write prompts.json, summary.json, history.json, the curves PNG and report.md with dev figures,
    then score the best prompts (and the baselines) on test and write them again with test figures.

    Training is already checkpointed: if test scoring is interrupted, the dev-only files stay and
    `--resume` runs this again. `book` is the book's Bookkeeper. `phases_s`: wall seconds of the
    phases before training (e.g. {"setup": 12.3}); the summary's `phases_s` adds training, the dev
    baselines and three test phases: the best prompts and the baselines on the task's template scored
    together (`test_together`: each test example's prefix runs once for all; 0 s where there is nothing
    to share, see `prefill_score_memo`), then the best prompts (memo hits, or all their scoring where
    nothing was shared) and the baselines (their k-shot demos, or all of them)."""
    from rlprompt.baselines import Baselines, calibration_modes
    from rlprompt.calibration import raw
    from rlprompt.distributed import is_main_process

    phases = {**(phases_s or {}), "train": round(book.train_s, 1)}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name], clock = round(now - clock, 1), now

    best = book.leaderboard.best(cfg.top_prompts)
    modes = calibration_modes(cfg.calibration)
    baselines = Baselines(raw(scorer), task, cfg.seed, modes, progress=is_main_process()) if cfg.baselines else None
    rows = baselines.rows({"dev": task.dev}) if baselines else []  # collective
    lap("dev_baselines")
    summary = write_run_outputs(cfg, book, task, scorer, run_dir, best, rows, phases)
    if cfg.skip_test or not task.test:
        return summary
    from rlprompt.evaluation import evaluate_prompts, prefill_score_memo

    tested = best[:cfg.test_prompts]  # the chosen prompt first: test is for what was picked on dev
    texts = list(dict.fromkeys(r.prompt for r in tested))
    with sigterm_as_interrupt():
        # the test examples' prefixes once for the prompts and the baselines, not once for each (same scores)
        prefill_score_memo(raw(scorer), [texts, baselines.template_prompts() if baselines else []], task.test,
                           progress=is_main_process(), desc="test: prompts and baselines")  # collective
        lap("test_together")
        test = {row["prompt"]: row["accuracy"] for row in
                evaluate_prompts(scorer, texts, task.test, progress=is_main_process())}  # collective
        lap("test_prompts")
        rows = baselines.rows({"dev": task.dev, "test": task.test}) if baselines else []
        lap("test_baselines")
    for r in tested:
        r.test_acc = test[r.prompt]
    return write_run_outputs(cfg, book, task, scorer, run_dir, best, rows, phases)


def write_run_outputs(cfg, book, task, scorer, run_dir: Path, best, baselines: list[dict],
                      phases_s: dict | None = None) -> dict:
    """Write the run's prompts.json, summary.json, history.json, curves PNG and report.md (rank 0
    only); returns the summary. `baselines` are `Baselines.rows` (test_acc None before test scoring).
    Each prompts.json row holds the prompt's calibration (mode and vector) when the run calibrates.
    `phases_s`: wall seconds per phase of this process (see `finalize`)."""
    from rlprompt.baselines import strongest
    from rlprompt.distributed import is_main_process, pairs_scored_by_all
    from rlprompt.models import dtype_name, hardware
    from rlprompt.report import write_run_report

    rows = [dataclasses.asdict(r) for r in best]
    if hasattr(scorer, "calibration"):  # a CalibratedScorer: every process estimates the same vectors
        for row in rows:
            row["calibration"] = scorer.calibration(row["prompt"])
    baselines = [{"test_acc": None, **b} for b in baselines]
    summary = {
        "task": task.name, "template": task.template, "verbalizers": task.verbalizers,
        "label_names": task.label_names,
        "seed": cfg.seed, "run_seed": cfg.random_seed, "steps": book.step, "stop_reason": book.stop_reason,
        "wall_s": round(book.train_s, 1), "phases_s": dict(phases_s or {}), "skipped_steps": book.skipped_steps,
        "task_dtype": dtype_name(next(scorer.model.parameters()).dtype),
        "hardware": hardware(next(scorer.model.parameters()).device),
        "calibration": cfg.calibration,
        "examples": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
        "pairs_scored": pairs_scored_by_all(scorer),  # collective
        "best_prompt": rows[0] if rows else None,
        "baselines": baselines,
        "strongest_baseline": strongest(baselines),
        "config": dataclasses.asdict(cfg),
    }
    if is_main_process():
        atomic_write_text(run_dir / "prompts.json", json.dumps(rows, indent=2))
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        atomic_write_text(run_dir / "history.json", json.dumps(book.history))
        write_run_report(run_dir, summary, rows, book.history)
    return summary


def print_summary(summary: dict, best_rows: list[dict], run_dir: Path) -> None:
    """The end-of-run table: best prompts and baselines with dev and test accuracy."""
    def pct(x):
        return "   -  " if x is None else f"{100 * x:5.1f}%"

    print(f"\n{summary['stop_reason']} after {summary['steps']} steps ({summary['wall_s']:.0f} s)")
    if summary.get("phases_s"):
        from rlprompt.report import phases_text

        print(f"time: {phases_text(summary['phases_s'])}")
    print(f"{'prompt':<50} {'dev':>7} {'test':>7}")
    for r in best_rows:
        print(f"{r['prompt'][:50]:<50} {pct(r['dev_acc']):>7} {pct(r['test_acc']):>7}")
    for b in summary["baselines"]:
        label = f"[{b['name']}] {b['prompt']}"[:50]
        print(f"{label:<50} {pct(b['dev_acc']):>7} {pct(b['test_acc']):>7}")
    top = summary.get("strongest_baseline")
    if top:
        on_dev = top["best_on_dev"]
        print(f"strongest baseline (by {top['chosen_by']}): {top['name']}; best on dev: "
              f"{on_dev['name'] if on_dev else '-'}")
    print(f"run saved in {run_dir}: report.md, curves.png, prompts.json, summary.json, checkpoint.pt, "
          "TensorBoard logs")


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path`; a missing file or a folder is a one-line UserError naming `what`."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} is a folder, not a file: {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_run(run_dir: str, num_prompts: int, need_prompts: bool = True) -> tuple[list[str], dict]:
    """The first `num_prompts` prompts of a run's prompts.json (best first) and its config.json (or {}).
    Without `need_prompts`, a run that has no prompts.json yet (interrupted) gives no prompts."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"run folder not found: {root}")
    if not need_prompts and not (root / "prompts.json").exists():
        rows = None
    else:
        rows = read_prompts_json(root)
    config = {}
    if (root / "config.json").is_file():
        try:
            config = json.loads(read_text(root / "config.json", "config.json of the run"))
        except json.JSONDecodeError as e:
            raise UserError(f"{root / 'config.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
        config = config if isinstance(config, dict) else {}
    return [r["prompt"] for r in (rows or [])[:num_prompts]], config


def read_prompts_json(root: Path) -> list[dict]:
    """The ranked prompt rows of a run folder's prompts.json; a run that has not finished, or a broken
    file, is a one-line UserError."""
    if not (root / "prompts.json").exists() and (root / "checkpoint.pt").is_file():
        raise UserError(f"run {root} has no prompts.json yet: it stopped before it finished. Finish it with "
                        f"python train.py --resume {root}, or sample from its policy with --sample N")
    try:
        rows = json.loads(read_text(root / "prompts.json", "prompts.json of the run"))
    except json.JSONDecodeError as e:
        raise UserError(f"{root / 'prompts.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                             for r in rows):
        raise UserError(f"{root / 'prompts.json'}: expected a list of objects with a \"prompt\" string")
    if not rows:
        raise UserError(f"{root / 'prompts.json'} holds no prompts")
    return rows
