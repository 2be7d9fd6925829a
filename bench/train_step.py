"""Seconds per training step, split into policy sampling, scoring and the update; one JSON line.

    python bench/train_step.py [--steps 6] [--task sst2] [--task-dtype bf16] [--template TEXT_OR_NAME]
    python bench/train_step.py --device cuda --profile profile.txt   # where a step's time goes, op by op

Embedded SmolLM2 as policy and task LM, 16 prompts × 32 SST-2 train examples by default. The
first step (prefix KV computation, kernel warm-up) is reported apart; the medians cover the rest.
Scores of prompts sampled twice come from the memo, as in real training. `--profile FILE` runs the
steps after the first under torch.profiler: the op table (self time, calls) goes to FILE, the top ops
and their shares into the JSON, and on a GPU the share of the wall time the GPU was busy (the profiled
steps' own times then include the profiler's overhead: time without it).
"""

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlprompt.build import build
from rlprompt.checkpoint import seed_everything
from rlprompt.cli import quiet_transformers
from rlprompt.config import TrainConfig
from rlprompt.models import hardware
from rlprompt.runs import load_run_task
from rlprompt.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--task-dtype", default="bf16")
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--template", help="the task's template instead of the preset's (a text or a name)")
    parser.add_argument("--model", default="smollm2-135m", help="policy and task LM (default the embedded SmolLM2)")
    parser.add_argument("--data-dir", help="few-shot data folder (default as train.py)")
    parser.add_argument("--profile", metavar="FILE", help="profile the steps after the first (torch.profiler): "
                        "op table to FILE, top ops in the JSON")
    args = parser.parse_args()
    quiet_transformers()
    cfg = TrainConfig(task=args.task, task_dtype=args.task_dtype, prompts_per_step=args.prompts_per_step,
                      steps=args.steps, device=args.device, template=args.template, policy_model=args.model,
                      task_model=args.model, data_dir=args.data_dir)
    seed_everything(cfg.seed)
    _, task = load_run_task(cfg, None)
    scorer, policy, train_env, dev_env = build(cfg, task)
    trainer = Trainer(cfg, policy, train_env, dev_env, Path(tempfile.mkdtemp()))
    rows = [trainer.train_step()]  # prefix KV and warm-up: reported apart, never profiled
    trainer.book.step += 1
    with profiler(policy.device) if args.profile else contextlib.nullcontext() as prof:
        start = time.perf_counter()
        for _ in range(args.steps - 1):
            rows.append(trainer.train_step())
            trainer.book.step += 1
        wall_s = time.perf_counter() - start
    keys = {"sample_s": "time/sample_s", "score_s": "time/score_s", "update_s": "time/update_s"}
    rest = rows[1:] or rows
    out = {"bench": "train_step", "task": cfg.task, "template": task.template, "prompts": cfg.prompts_per_step,
           "examples": len(task.train), "task_dtype": cfg.task_dtype, "steps": args.steps,
           "first_step": {k: round(rows[0][v], 3) for k, v in keys.items()},
           **{f"median_{k}": round(statistics.median(r[v] for r in rest), 3) for k, v in keys.items()},
           **hardware(policy.device)}
    out["median_step_s"] = round(sum(out[f"median_{k}"] for k in keys), 3)
    if args.profile and args.steps > 1:
        out["profile"] = profile_summary(prof, wall_s, policy.device, Path(args.profile))
    print(json.dumps(out))


def profiler(device: torch.device):
    """torch.profiler over the CPU, and the GPU when `device` is one."""
    from torch.profiler import ProfilerActivity, profile

    kinds = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=kinds)


def profile_summary(prof, wall_s: float, device: torch.device, path: Path, top: int = 12) -> dict:
    """Write the op table (by self time on the device that matters) to `path`; return the top ops, their
    share of all self time, and on a GPU the share of the wall time its kernels ran."""
    gpu = device.type == "cuda"
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    events = prof.key_averages()
    path.write_text(events.table(sort_by=key, row_limit=40) + "\n", encoding="utf-8")
    own = lambda e: getattr(e, key, 0.0) or 0.0  # noqa: E731  (microseconds)
    total = sum(own(e) for e in events) or 1.0
    ranked = sorted(events, key=own, reverse=True)[:top]
    out = {"file": str(path), "wall_s": round(wall_s, 3), "sorted_by": key,
           "top": [{"op": e.key, "self_s": round(own(e) / 1e6, 4), "share": round(own(e) / total, 3),
                    "calls": e.count} for e in ranked]}
    if gpu:
        out["gpu_busy_share"] = round(total / 1e6 / wall_s, 3)
    return out


if __name__ == "__main__":
    main()
