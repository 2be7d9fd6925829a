"""Train a prompt-writing policy with RL on a few-shot classification task.

    python train.py --task sst2                  # defaults: embedded SmolLM2, CPU or CUDA, about 4-5 min on 2 cores with bf16
    python train.py --resume runs/<name>         # continue an interrupted run exactly
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from rlprompt.build import build, trainer_class
from rlprompt.atomic import atomic_write_text
from rlprompt.checkpoint import load_checkpoint, seed_everything
from rlprompt.cli import OneLineArgumentParser, quiet_transformers, run_cli
from rlprompt.config import TrainConfig, add_arguments
from rlprompt.errors import UserError
from rlprompt.runs import RUN_IDENTITY, TASK_FILE, finalize, load_run_task, make_run_dir, print_summary
from rlprompt.template_search import search_template


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
    # a checkpoint from before a flag existed was made with that flag's default
    saved = {**{f.name: f.default for f in dataclasses.fields(TrainConfig)}, **state["config"]}
    for name in RUN_IDENTITY:
        if name in explicit and explicit[name] != saved[name]:
            raise UserError(f"cannot resume {args['resume']} with --{name.replace('_', '-')} "
                            f"{explicit[name]!r}: the run was made with {saved[name]!r}")
    merged = {**saved, **{k: v for k, v in explicit.items() if k not in RUN_IDENTITY}}
    merged["resume"] = args["resume"]
    merged["overwrite"] = explicit.get("overwrite", False)  # the run may have started with --overwrite
    merged["out"] = args["resume"]
    return TrainConfig(**merged), state


def data_line(cfg: TrainConfig, task) -> str:
    """What was read and what one step uses, said before the models load."""
    from rlprompt.build import reward_examples

    n, which = len(reward_examples(cfg, task)), cfg.reward_on
    use = f"all {n:,} {which} examples" if n <= cfg.train_batch or cfg.trainer == "trl-grpo" else \
        f"a random mini-batch of {cfg.train_batch} of the {n:,} {which} examples (--train-batch)"
    return (f"data: {len(task.train):,} train, {len(task.dev):,} dev, {len(task.test):,} test examples; "
            f"each step scores {cfg.prompts_per_step} prompts on {use}")


def main(argv=None) -> int:
    from rlprompt.distributed import is_main_process, process_state

    started = time.perf_counter()
    cfg, state = parse_args(argv)
    quiet_transformers()
    process_state(cfg.device)  # under `accelerate launch`: join the other processes
    spec, task = load_run_task(cfg, Path(cfg.resume) if cfg.resume else None)
    spec, task, task_lm = search_template(cfg, spec, task)
    for note in task.notes if is_main_process() else []:  # under `accelerate launch`, only rank 0 prints
        print(f"note: {note}")
    folder = make_run_dir(cfg, task.name)  # locked until this process is done with it
    try:
        return train_in(folder, cfg, state, spec, task, task_lm, started)
    finally:
        folder.release()


def train_in(folder, cfg: TrainConfig, state: dict | None, spec, task, task_lm=None, started=None) -> int:
    """Build, train and finalize the run in `folder` (a locked RunFolder); the exit code. `task_lm`: the
    task LM's (model, tokenizer) when the template search already loaded it; `started`: the
    `time.perf_counter()` at which this process began (the summary's setup time counts from it)."""
    from rlprompt.distributed import end_processes, is_main_process

    run_dir = folder.path
    main_process = is_main_process()  # under `accelerate launch`, only rank 0 logs, prints and writes
    if main_process:
        print(data_line(cfg, task))
    if cfg.save_task and main_process:
        cfg.task_spec().with_overrides(template=task.template, verbalizers=task.verbalizers).to_file(cfg.save_task)
        print(f"task saved to {cfg.save_task} (reuse it with --task-file {cfg.save_task})")
    seed_everything(cfg.random_seed)
    try:
        scorer, policy, train_env, dev_env = build(cfg, task, task_lm)
    except BaseException:
        folder.discard_if_new()
        raise
    setup_s = round(time.perf_counter() - (started if started is not None else time.perf_counter()), 1)
    if main_process:
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=2))
        spec.to_file(run_dir / TASK_FILE)

    from torch.utils.tensorboard import SummaryWriter

    # On a resume, TensorBoard drops what the killed process logged after its checkpoint.
    purge = state["step"] + 1 if state is not None else None
    writer = SummaryWriter(str(run_dir), purge_step=purge) if main_process else None
    if writer is not None and state is None:
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
            f"|{k}|{v}|" for k, v in dataclasses.asdict(cfg).items()))
    trainer = trainer_class(cfg)(cfg, policy, train_env, dev_env, run_dir, writer)
    if state is not None:
        trainer.load_state_dict(state)
        if main_process:
            print(f"resumed {run_dir} at step {trainer.book.step}")
    status = trainer.run(progress=main_process)
    if writer is not None:
        writer.flush()
    if status == "interrupted":
        if main_process:
            print(f"interrupted at step {trainer.book.step}; checkpoint saved. Resume with: "
                  f"python train.py --resume {run_dir}", file=sys.stderr)
        return 130
    try:
        summary = finalize(cfg, trainer.book, task, scorer, run_dir, {"setup": setup_s})  # collective
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
