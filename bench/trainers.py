"""The two trainers side by side on one task, same pair budget and seed; one JSON line.

    python bench/trainers.py [--pairs 4096] [--seed 13] [--task sst2] [--trainers reinforce,trl-grpo]

Embedded SmolLM2 as policy and task LM, default settings otherwise. The budget is counted in training
(prompt, example) pairs: steps = pairs // (prompts per step × train examples), the same for both. Per
trainer: the best dev accuracy found (greedy and top sampled prompts scored on dev every --eval-every
steps), the test accuracy of the best prompt, the training wall time, training pairs per second
(memo hits included: what the trainer gets through), and the pairs the task LM actually ran (memo hits
excluded, dev evaluation included). On the 2-core CPU a 16 × 32 step costs about 20 s, so the default
budget (8 steps) takes a few minutes per trainer, plus about a minute to score the best prompt on test.
"""

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from rlprompt.build import build, trainer_class
from rlprompt.checkpoint import seed_everything
from rlprompt.cli import quiet_transformers
from rlprompt.config import TRAINERS, TrainConfig
from rlprompt.distributed import process_device
from rlprompt.evaluation import evaluate_prompts
from rlprompt.models import dtype_name, parse_dtype
from rlprompt.runs import load_run_task


def run_trainer(name: str, args) -> dict:
    """Train with trainer `name` on the budget (run folder in a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as run_dir:
        return train_and_test(name, args, run_dir)


def train_and_test(name: str, args, run_dir: str) -> dict:
    """Train with trainer `name` on the budget; score its best prompt on test."""
    cfg = TrainConfig(task=args.task, seed=args.seed, task_dtype=args.task_dtype, device=args.device,
                      trainer=name, prompts_per_step=args.prompts_per_step, eval_every=args.eval_every,
                      patience=0, checkpoint_every=10**6, out=run_dir)
    seed_everything(cfg.seed)
    _, task = load_run_task(cfg, None)
    scorer, policy, train_env, dev_env = build(cfg, task)
    cfg = dataclasses.replace(cfg, steps=max(1, args.pairs // (args.prompts_per_step * len(task.train))))
    trainer = trainer_class(cfg)(cfg, policy, train_env, dev_env, Path(cfg.out))
    t0 = time.perf_counter()
    status = trainer.run(progress=args.progress)
    train_s = time.perf_counter() - t0
    scored_in_training = scorer.pairs_scored
    best = trainer.book.leaderboard.best(1)[0]
    test = evaluate_prompts(scorer, [best.prompt], task.test, progress=args.progress)[0]["accuracy"]
    train_pairs = trainer.book.step * args.prompts_per_step * len(task.train)
    return {
        "status": status, "steps": trainer.book.step, "best_prompt": best.prompt,
        "best_dev_acc": round(trainer.book.best_dev, 4), "test_acc": round(test, 4),
        "train_s": round(train_s, 1), "train_pairs": train_pairs,
        "pairs_per_s": round(train_pairs / train_s, 1), "scored_pairs": scored_in_training,
        "final_reward_mean": round(trainer.book.history[-1]["charts/reward_mean"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4096, help="training (prompt, example) pairs, each")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--task-dtype", default="auto")
    parser.add_argument("--prompts-per-step", type=int, default=16)
    parser.add_argument("--eval-every", type=int, default=4)
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    args = parser.parse_args()
    quiet_transformers()
    results = {name: run_trainer(name, args) for name in args.trainers.split(",")}
    device = process_device(args.device)
    print(json.dumps({
        "bench": "trainers", "task": args.task, "seed": args.seed, "pair_budget": args.pairs,
        "prompts_per_step": args.prompts_per_step,
        "task_dtype": dtype_name(parse_dtype(args.task_dtype, device)), "results": results,
        "device": str(device), "threads": torch.get_num_threads(), "cpu": platform.machine(),
    }))


if __name__ == "__main__":
    main()
