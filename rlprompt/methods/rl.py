"""RLPrompt itself as a row of the comparison: the Trainer of rlprompt/trainer.py under the pair budget.

steps = (budget − dev reserve) // (prompts_per_step × |train|), unless option `steps` is given. The
Trainer's own dev evaluations are charged to the same budget, and memo hits are free, so the run stops
at the step count or when the budget is spent, whichever comes first. The final prompt is chosen on
dev like every other method (PromptSearch.finish).

Option `run=DIR` loads a finished train.py run instead: its best prompt (chosen on dev by the run) is
re-scored on dev and test with this comparison's scorer, and its pairs are counted from the score memo
in its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

from rlprompt.config import TaskArgs, TrainConfig
from rlprompt.errors import UserError
from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult, register
from rlprompt.methods.budget import PromptSearch, prompt_tokens, score_test
from rlprompt.methods.options import option
from rlprompt.trainer import Trainer

# TrainConfig fields the comparison sets itself (the task flags among them); the others may be options.
FIXED = {f.name for f in dataclasses.fields(TaskArgs)} | {
    "steps", "policy_model", "device", "out", "resume", "skip_test", "task_model", "task_dtype"}


def budget_trainer(cfg: TrainConfig, policy, train_env, dev_env, run_dir: Path, search: PromptSearch) -> Trainer:
    """The Trainer on the search's leaderboard (the final choice sees every prompt), adding a curve point
    (pairs so far, best dev accuracy) after each dev evaluation."""
    trainer = Trainer(cfg, policy, train_env, dev_env, run_dir)
    trainer.book.leaderboard = search.leaderboard

    def note(metrics: dict) -> None:
        search.best_dev = max(search.best_dev, metrics["charts/best_dev_acc"])
        search.note(search.best_dev)

    trainer.book.on_dev_evaluation.append(note)
    return trainer


def train_config(ctx: MethodContext, budget: int, run_dir: str) -> TrainConfig:
    """TrainConfig for a budgeted run: ctx's task and seed, options for the other fields."""
    defaults = TrainConfig()
    overrides = {f.name: option(ctx, f.name, getattr(defaults, f.name)) for f in dataclasses.fields(TrainConfig)
                 if f.name in ctx.options and f.name not in FIXED}
    cfg = TrainConfig(task=ctx.task.name, seed=ctx.seed, policy_model=ctx.policy_model, device=ctx.device,
                      out=run_dir, skip_test=True, **overrides)
    per_step = min(len(ctx.task.train), cfg.train_batch)  # train examples a step scores (--train-batch)
    steps = option(ctx, "steps", 0) or budget // (cfg.prompts_per_step * per_step)
    if steps < 1:
        raise UserError(f"pair budget {budget} is less than one RL step "
                        f"({cfg.prompts_per_step} prompts × {per_step} train examples)")
    return dataclasses.replace(cfg, steps=steps)


@register("rl")
def run(ctx: MethodContext) -> MethodResult:
    """Train the RL policy under the budget (or load option `run`) and return its dev-selected prompt."""
    if ctx.options.get("run"):
        return load_run(ctx, Path(ctx.options["run"]))
    from rlprompt.build import build_policy_and_envs
    from rlprompt.checkpoint import seed_everything
    from rlprompt.models import load_lm, pick_device

    search = PromptSearch(ctx, desc="rl", bar=False)  # the Trainer shows its own bar
    out_dir = ctx.options.get("out_dir")
    with tempfile.TemporaryDirectory(prefix="rlprompt-rl-") as tmp:
        run_dir = Path(out_dir) if out_dir else Path(tmp)
        cfg = train_config(ctx, search.ledger.budget, str(run_dir))
        device = pick_device(ctx.device)
        policy_model, policy_tok = ctx.options.get("policy_lm") or load_lm(ctx.policy_model, device, "fp32")
        seed_everything(ctx.seed)
        policy, train_env, dev_env = build_policy_and_envs(cfg, policy_model, policy_tok, search.scorer,
                                                                 ctx.task)
        trainer = budget_trainer(cfg, policy, train_env, dev_env, run_dir, search)
        try:
            stop = trainer.run(progress=bool(ctx.options.get("progress")))
        except BudgetExhausted:
            stop = trainer.book.stop_reason = "budget spent"
            trainer.book.save()
    return search.finish("rl", extra={"steps": trainer.book.step, "steps_planned": cfg.steps, "stop_reason": stop,
                                      "prompts_per_step": cfg.prompts_per_step,
                                      "run_dir": str(out_dir) if out_dir else None})


def load_run(ctx: MethodContext, run_dir: Path) -> MethodResult:
    """A finished train.py run as the RL row (its best prompt re-scored here; pairs from its memo)."""
    from rlprompt.checkpoint import load_checkpoint
    from rlprompt.evaluation import evaluate_prompts
    from rlprompt.runs import read_run

    start = time.perf_counter()
    prompts, config = read_run(str(run_dir), 1)
    for key, mine in (("task", ctx.task.name), ("seed", ctx.seed)):
        if key in config and config[key] != mine:
            raise UserError(f"run {run_dir} was trained with {key} {config[key]!r}, the comparison uses {mine!r}")
    state = load_checkpoint(run_dir)
    memo = state.get("scorer", {}).get("score_cache", state.get("score_cache", {}))  # older checkpoints: top level
    pairs = sum(int(v.shape[0]) for v in memo.values())
    per_step = config.get("prompts_per_step", 16) * len(ctx.task.train)
    curve = [(int(h["step"]) * per_step, float(h["charts/best_dev_acc"]))
             for h in state.get("history", []) if "charts/best_dev_acc" in h]
    summary = {}
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    prompt = prompts[0]
    dev_acc = evaluate_prompts(ctx.scorer, [prompt], ctx.task.dev, progress=False)[0]["accuracy"]
    return MethodResult(
        method="rl", prompt=prompt, prompt_tokens=prompt_tokens(ctx.task_tokenizer, prompt), dev_acc=dev_acc,
        test_acc=score_test(ctx, prompt), pairs_scored=pairs,
        wall_s=float(summary.get("wall_s", time.perf_counter() - start)), curve=curve,
        extra={"loaded_run": str(run_dir), "steps": state.get("step"), "stop_reason": state.get("stop_reason"),
               "curve_pairs": "step × prompts_per_step × |train| (an upper bound: memo hits were free)"},
    )
