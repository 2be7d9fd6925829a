"""Seconds per training step, split into policy sampling, scoring and the update; one JSON line.

    python bench/train_step.py [--steps 6] [--task sst2] [--task-dtype bf16] [--template TEXT_OR_NAME]

Embedded SmolLM2 as policy and task LM, 16 prompts × 32 SST-2 train examples by default. The
first step (prefix KV computation, kernel warm-up) is reported apart; the medians cover the rest.
Scores of prompts sampled twice come from the memo, as in real training.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

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
    args = parser.parse_args()
    quiet_transformers()
    cfg = TrainConfig(task=args.task, task_dtype=args.task_dtype, prompts_per_step=args.prompts_per_step,
                      steps=args.steps, device=args.device, template=args.template)
    seed_everything(cfg.seed)
    _, task = load_run_task(cfg, None)
    scorer, policy, train_env, dev_env = build(cfg, task)
    trainer = Trainer(cfg, policy, train_env, dev_env, Path(tempfile.mkdtemp()))
    rows = []
    for _ in range(args.steps):
        rows.append(trainer.train_step())
        trainer.book.step += 1
    keys = {"sample_s": "time/sample_s", "score_s": "time/score_s", "update_s": "time/update_s"}
    rest = rows[1:] or rows
    out = {"bench": "train_step", "task": cfg.task, "template": task.template, "prompts": cfg.prompts_per_step,
           "examples": len(task.train), "task_dtype": cfg.task_dtype, "steps": args.steps,
           "first_step": {k: round(rows[0][v], 3) for k, v in keys.items()},
           **{f"median_{k}": round(statistics.median(r[v] for r in rest), 3) for k, v in keys.items()},
           **hardware(policy.device)}
    out["median_step_s"] = round(sum(out[f"median_{k}"] for k in keys), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
