"""Large train files: memory while reading, time to the first error and to the first step. Prints ONE JSON line.

    PYTHONPATH=. python bench/large_data.py [--mb 100] [--model smollm2-135m] [--dir /tmp/rlprompt-large]

Generates a CSV of about --mb MB (`text,label`, two classes, sentences of 10-30 words) in --dir (never
in the repository) and measures, each in a fresh process:
  * read: `TaskSpec(...).load()` of that file (what train.py does before any model loads): wall time,
    peak RSS of the process (ru_maxrss) and the peak above the RSS after imports;
  * first_error: train.py on a copy whose last line lacks its label: seconds until it exits with its
    one-line error, and that line;
  * first_step: train.py --steps 12 on the file (the default models, no --dev: 20% is split off as
    dev): seconds until its first output on stderr (reading progress) and until the progress bar
    shows step 1, then the process is killed; the same on a file of its first 40 rows, for comparison
    (the step's own cost: each step scores --train-batch examples, whatever the file's size).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORDS = ("film movie plot actor scene great dull slow brilliant boring story music cast ending moving "
         "funny script visual long short charming tedious sharp warm cold bright dark").split()

READ = """
import json, resource, sys, time
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
from rlprompt.tasks import TaskSpec
base = rss_mb()
t0 = time.perf_counter()
task = TaskSpec(name="large", train=sys.argv[1]).load()
wall = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"read_s": round(wall, 1), "train": len(task.train), "dev": len(task.dev),
                  "rss_after_imports_mb": round(base), "peak_rss_mb": round(peak),
                  "peak_above_imports_mb": round(peak - base)}))
"""


def generate(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write the CSV; returns its row count."""
    rng = random.Random(seed)
    target, rows = megabytes * 1e6, 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("text,label\n")
        written = 0
        while written < target:
            line = f"{' '.join(rng.choices(WORDS, k=rng.randint(10, 30)))},{rng.choice(('good', 'bad'))}\n"
            f.write(line)
            written += len(line)
            rows += 1
    return rows


def time_until(cmd: list[str], marker: str | None, limit: float) -> tuple[float, float | None, str, int | None]:
    """(seconds until `marker` appears on stderr (then the process is killed) or it exits, seconds until
    its first stderr output, its last stderr line, exit code)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    seen, first = "", None
    try:
        while time.perf_counter() - t0 < limit:
            chunk = proc.stderr.read(1) if marker else proc.stderr.readline()
            if not chunk and proc.poll() is not None:
                break
            seen += chunk
            if first is None and chunk.strip():
                first = time.perf_counter() - t0
            if marker and marker in seen[-200:]:
                break
    finally:
        elapsed = time.perf_counter() - t0
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = [line for line in seen.replace("\r", "\n").splitlines() if line.strip()]
    return elapsed, first, (last[-1] if last else ""), proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=100.0)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "rlprompt-large"))
    args = p.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    good, bad, small = folder / "large.csv", folder / "large_bad_last.csv", folder / "small.csv"
    rows = generate(good, args.mb)
    with open(good, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read())
        dst.write(b"the last line has no label\n")
    with open(good, encoding="utf-8") as src:  # the same rows' first 40: a step's work, without the file
        small.write_text("".join(line for _, line in zip(range(41), src)), encoding="utf-8")

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    read = json.loads(subprocess.run([sys.executable, "-c", READ, str(good)], cwd=REPO, env=env,
                                     capture_output=True, text=True, check=True).stdout)
    base = [sys.executable, "train.py", "--policy-model", args.model, "--task-model", args.model, "--steps", "12",
            "--skip-test"]
    err_s, _, err_line, err_rc = time_until(base + ["--train", str(bad), "--out", str(folder / "run_bad")], None,
                                            300)
    step_s, shown_s, step_line, _ = time_until(base + ["--train", str(good), "--out", str(folder / "run_good"),
                                                       "--overwrite"], "1/12", 900)
    small_s, _, _, _ = time_until(base + ["--train", str(small), "--out", str(folder / "run_small"), "--overwrite"],
                                  "1/12", 900)
    print(json.dumps({
        "csv_mb": round(good.stat().st_size / 1e6, 1), "rows": rows, "read": read,
        "first_error": {"seconds": round(err_s, 1), "exit_code": err_rc, "line": err_line},
        "first_step": {"seconds": round(step_s, 1), "first_output_s": round(shown_s or -1, 1),
                       "progress_line": step_line},
        "first_step_on_40_rows_of_it": {"seconds": round(small_s, 1)},
        "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
