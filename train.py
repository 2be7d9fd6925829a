"""Train a prompt-writing policy with RL on a few-shot classification task.

    python train.py --task sst2                  # defaults: embedded SmolLM2, CPU or CUDA, ~20 min on 2 cores
    python train.py --resume runs/<name>         # continue an interrupted run exactly
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlprompt.checkpoint import atomic_write_text, load_checkpoint
from rlprompt.cli import OneLineArgumentParser, quiet_transformers, run_cli
from rlprompt.config import TrainConfig, add_arguments
from rlprompt.errors import UserError

# Identity of a run: a resumed run must not change these.
RUN_IDENTITY = ("task", "task_file", "data_dir", "seed", "train", "dev", "test", "text_column",
                "label_column", "labels", "verbalizers", "template", "manual_prompt", "dev_fraction",
                "policy_model", "task_model", "task_dtype", "prompt_length", "prompts_per_step",
                "policy_start", "init_prompt", "trainer")
TASK_FILE = "task.yaml"  # the run's task, paths resolved: what --resume and evaluate.py --run read


def parse_args(argv=None) -> tuple[TrainConfig, dict | None]:
    """Flags -> (config, checkpoint state or None). With --resume the run's saved config is used;
    flags given explicitly may change the budget or device but not the run's identity."""
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = vars(parser.parse_args(argv))
    if not args["resume"]:
        return TrainConfig(**args), None
    explicit_parser = OneLineArgumentParser(argument_default=argparse.SUPPRESS)
    add_arguments(explicit_parser)
    for action in explicit_parser._actions:
        action.default = argparse.SUPPRESS
    explicit = vars(explicit_parser.parse_args(argv))
    state = load_checkpoint(Path(args["resume"]))
    saved = state["config"]
    for name in RUN_IDENTITY:
        if name in explicit and explicit[name] != saved.get(name):
            raise UserError(f"cannot resume {args['resume']} with --{name.replace('_', '-')} "
                            f"{explicit[name]!r}: the run was made with {saved.get(name)!r}")
    merged = {**saved, **{k: v for k, v in explicit.items() if k not in RUN_IDENTITY}}
    merged["resume"] = args["resume"]
    merged["out"] = args["resume"]
    return TrainConfig(**merged), state


def make_run_dir(cfg: TrainConfig, task_name: str) -> Path:
    """The run folder (created); a UserError when it cannot be written."""
    from rlprompt.distributed import same_on_all_processes

    default = f"runs/{task_name}__{cfg.seed}__{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(same_on_all_processes(cfg.out or default))  # rank 0's clock under accelerate launch
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (one place, as in CleanRL)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_run_task(cfg: TrainConfig, resume_dir: Path | None):
    """(TaskSpec with paths resolved, Task): the resumed run's task.yaml, else the one the flags name."""
    from rlprompt.tasks import TaskSpec

    if resume_dir is not None and (resume_dir / TASK_FILE).is_file():
        spec = TaskSpec.from_file(resume_dir / TASK_FILE)
    else:
        spec = cfg.task_spec().resolved(cfg.data_dir, cfg.seed)
    return spec, spec.load(cfg.data_dir, cfg.seed, cfg.allow_download)


def build(cfg: TrainConfig, task):
    """Task-LM scorer, policy and the train/dev environments of a config and its task."""
    from rlprompt.distributed import ShardedScorer, process_device, world_size
    from rlprompt.models import load_lm
    from rlprompt.scorer import build_scorer

    device = process_device(cfg.device)
    task_model, task_tok = load_lm(cfg.task_model, device, cfg.task_dtype, cfg.allow_download)
    scorer = build_scorer(task_model, task_tok, task.template, task.verbalizers)
    if world_size() > 1:  # under `accelerate launch`: each process scores its share of the examples
        scorer = ShardedScorer(scorer)
    policy_model, policy_tok = load_lm(cfg.policy_model, device, "fp32", cfg.allow_download)
    policy, train_env, dev_env = build_policy_and_envs(cfg, policy_model, policy_tok, scorer, task)
    return scorer, policy, train_env, dev_env


def build_policy_and_envs(cfg: TrainConfig, policy_model, policy_tok, scorer, task):
    """The policy on a loaded policy LM, and the train/dev environments that score with `scorer`."""
    from envs import PromptClassificationEnv
    from rlprompt.policy import PromptPolicy

    policy = PromptPolicy(policy_model, policy_tok, cfg.prompt_length, cfg.top_k, cfg.adaptor_hidden,
                          cfg.no_repeat, cfg.policy_start)
    vocab = policy_model.get_output_embeddings().weight.shape[0]
    decode = lambda ids: policy_tok.decode(ids).strip()  # noqa: E731
    train_env = PromptClassificationEnv(scorer, task.train, decode, vocab, cfg.prompt_length)
    dev_env = PromptClassificationEnv(scorer, task.dev, decode, vocab, cfg.prompt_length)
    return policy, train_env, dev_env


def finalize(cfg: TrainConfig, trainer, task, scorer, run_dir: Path) -> dict:
    """Write prompts.json, summary.json, history.json, the curves PNG and report.md with dev figures,
    then score the best prompts (and the baselines) on test and write them again with test figures.

    Training is already checkpointed: if test scoring is interrupted, the dev-only files stay and
    `--resume` runs this again."""
    best = trainer.leaderboard.best(cfg.top_prompts)
    baselines = {"no prompt": ""} | ({"manual prompt": task.manual_prompt} if task.manual_prompt else {})
    dev = dict(zip(baselines.values(), trainer.dev_env.score_texts(list(baselines.values()))[1]))  # collective
    summary = write_run_outputs(cfg, trainer, task, scorer, run_dir, best, baselines, dev, {})
    if cfg.skip_test or not task.test:
        return summary
    from rlprompt.distributed import is_main_process
    from rlprompt.evaluation import evaluate_prompts

    texts = list(dict.fromkeys([r.prompt for r in best[:3]] + list(baselines.values())))
    with sigterm_as_interrupt():
        rows = evaluate_prompts(scorer, texts, task.test, progress=is_main_process())  # collective
    test = {row["prompt"]: row["accuracy"] for row in rows}
    for r in best[:3]:
        r.test_acc = test[r.prompt]
    return write_run_outputs(cfg, trainer, task, scorer, run_dir, best, baselines, dev, test)


def write_run_outputs(cfg, trainer, task, scorer, run_dir: Path, best, baselines: dict,
                      dev: dict, test: dict) -> dict:
    """Write the run's prompts.json, summary.json, history.json, curves PNG and report.md (rank 0
    only); returns the summary. `test` maps prompt to test accuracy, empty before test scoring."""
    from rlprompt.distributed import is_main_process
    from rlprompt.models import dtype_name
    from rlprompt.report import write_run_report

    rows = [dataclasses.asdict(r) for r in best]
    summary = {
        "task": task.name, "template": task.template, "verbalizers": task.verbalizers,
        "seed": cfg.seed, "steps": trainer.step, "stop_reason": trainer.stop_reason,
        "wall_s": round(trainer.train_s, 1), "skipped_steps": trainer.skipped_steps,
        "task_dtype": dtype_name(next(scorer.model.parameters()).dtype),
        "examples": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
        "pairs_scored": scorer.pairs_scored,
        "best_prompt": rows[0] if rows else None,
        "baselines": [{"name": n, "prompt": p, "dev_acc": float(dev[p]), "test_acc": test.get(p)}
                      for n, p in baselines.items()],
        "config": dataclasses.asdict(cfg),
    }
    if is_main_process():
        atomic_write_text(run_dir / "prompts.json", json.dumps(rows, indent=2))
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
        atomic_write_text(run_dir / "history.json", json.dumps(trainer.history))
        write_run_report(run_dir, summary, rows, trainer.history)
    return summary


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block, as Ctrl-C does, so the CLI exits with
    one line instead of dying silently."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def trainer_class(cfg: TrainConfig):
    """The loop of --trainer: the REINFORCE Trainer (data-parallel under accelerate), or trl's GRPO."""
    from rlprompt.distributed import DataParallelTrainer, world_size
    from rlprompt.trainer import Trainer

    if cfg.trainer == "trl-grpo":
        from rlprompt.trl_trainer import GRPOPromptTrainer

        return GRPOPromptTrainer
    return DataParallelTrainer if world_size() > 1 else Trainer


def print_summary(summary: dict, best_rows: list[dict], run_dir: Path) -> None:
    def pct(x):
        return "   -  " if x is None else f"{100 * x:5.1f}%"

    print(f"\n{summary['stop_reason']} after {summary['steps']} steps ({summary['wall_s']:.0f} s)")
    print(f"{'prompt':<50} {'dev':>7} {'test':>7}")
    for r in best_rows:
        print(f"{r['prompt'][:50]:<50} {pct(r['dev_acc']):>7} {pct(r['test_acc']):>7}")
    for b in summary["baselines"]:
        label = f"[{b['name']}] {b['prompt']}"[:50]
        print(f"{label:<50} {pct(b['dev_acc']):>7} {pct(b['test_acc']):>7}")
    print(f"run saved in {run_dir}: report.md, curves.png, prompts.json, summary.json, checkpoint.pt, "
          "TensorBoard logs")


def main(argv=None) -> int:
    from rlprompt.distributed import end_processes, is_main_process, process_state

    cfg, state = parse_args(argv)
    quiet_transformers()
    process_state(cfg.device)  # under `accelerate launch`: join the other processes
    spec, task = load_run_task(cfg, Path(cfg.resume) if cfg.resume else None)
    main_process = is_main_process()  # under `accelerate launch`, only rank 0 logs, prints and writes
    for note in task.notes if main_process else []:
        print(f"note: {note}")
    run_dir = make_run_dir(cfg, task.name)
    if cfg.save_task and main_process:
        cfg.task_spec().to_file(cfg.save_task)
        print(f"task saved to {cfg.save_task} (reuse it with --task-file {cfg.save_task})")
    seed_everything(cfg.seed)
    scorer, policy, train_env, dev_env = build(cfg, task)
    if main_process:
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
        spec.to_file(run_dir / TASK_FILE)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir)) if main_process else None
    if writer is not None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
            f"|{k}|{v}|" for k, v in dataclasses.asdict(cfg).items()))
    trainer = trainer_class(cfg)(cfg, policy, train_env, dev_env, run_dir, writer)
    if state is not None:
        trainer.load_state_dict(state)
        if main_process:
            print(f"resumed {run_dir} at step {trainer.step}")
    status = trainer.run(progress=main_process)
    if writer is not None:
        writer.flush()
    if status == "interrupted":
        if main_process:
            print(f"interrupted at step {trainer.step}; checkpoint saved. Resume with: "
                  f"python train.py --resume {run_dir}", file=sys.stderr)
        return 130
    try:
        summary = finalize(cfg, trainer, task, scorer, run_dir)  # every process: collective
    except KeyboardInterrupt:
        if main_process:
            print(f"interrupted while scoring the test set; training is saved and {run_dir} holds the dev "
                  f"results. Score the test set with: python train.py --resume {run_dir}", file=sys.stderr)
        return 130
    if writer is not None:
        writer.close()
    if main_process:
        print_summary(summary, json.loads((run_dir / "prompts.json").read_text()), run_dir)
    end_processes()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
