"""Policy collapse under different settings: entropy, distinct prompts, KL to the initial policy and
dev accuracy along a run, one JSON line per setting. Dev only: no test scoring.

    python bench/collapse.py --steps 40 --set "kl_coef=0.2" --set "kl_coef=1.0" --set "lr=1e-5"
    python bench/collapse.py --runs /tmp/sweep/a /tmp/sweep/b     # summarize finished runs only

Each --set is one train.py run (SST-2 seed 13 unless --task/--seed say otherwise, embedded SmolLM2,
no early stop, dev evaluation every 10 steps) with the listed fields of TrainConfig changed
(`name=value`, comma-separated). On the 2-core CPU a step of 16 prompts × 32 examples takes about
20 s in fp32 until the policy converges (then prompts repeat and the score memo answers), so a 40-step
setting takes up to 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKS = (1, 10, 20, 30, 40, 60, 80)


def at(history: list[dict], step: int, key: str):
    """The value of `key` at `step` (None if the run has no such step)."""
    row = next((h for h in history if h["step"] == step), None)
    return None if row is None or row.get(key) is None else round(float(row[key]), 3)


def summarize(run_dir: Path) -> dict:
    """What collapse looks like in one finished run: figures at fixed steps and the best dev accuracy."""
    history = json.loads((run_dir / "history.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    steps = [m for m in MARKS if any(h["step"] == m for h in history)]
    dev = [(h["step"], h["charts/dev_acc"]) for h in history if h.get("charts/dev_acc") is not None]
    best = json.loads((run_dir / "prompts.json").read_text())[0]
    return {
        "run": str(run_dir), "task": config["task"], "seed": config["seed"], "lr": config["lr"],
        "kl_coef": config["kl_coef"], "entropy_coef": config["entropy_coef"], "steps": history[-1]["step"],
        "entropy": {s: at(history, s, "losses/entropy") for s in steps},
        "distinct_prompts": {s: at(history, s, "charts/distinct_prompts") for s in steps},
        "kl_to_init": {s: at(history, s, "losses/kl_to_init") for s in steps},
        "reward_mean": {s: at(history, s, "charts/reward_mean") for s in steps},
        "greedy_dev_acc": {s: round(a, 3) for s, a in dev},
        "best_dev_acc": best["dev_acc"], "best_prompt": best["prompt"],
        "prompts_seen": history[-1].get("charts/prompts_seen"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", action="append", default=[], dest="settings",
                        help="comma-separated name=value TrainConfig fields for one run")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="summarize these finished runs")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-collapse")
    args = parser.parse_args()
    runs = list(args.runs)
    for setting in args.settings:
        fields = dict(kv.split("=", 1) for kv in setting.split(",") if kv)
        run_dir = args.out / "_".join(f"{k}{v}" for k, v in fields.items())
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in fields.items()]
        subprocess.run([sys.executable, str(REPO / "train.py"), "--task", args.task, "--seed", str(args.seed),
                        "--steps", str(args.steps), "--eval-every", "10", "--patience", "0", "--skip-test",
                        "--out", str(run_dir), *flags], check=True, cwd=REPO)
        runs.append(run_dir)
    for run_dir in runs:
        print(json.dumps(summarize(run_dir)))


if __name__ == "__main__":
    main()
