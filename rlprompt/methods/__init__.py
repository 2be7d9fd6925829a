"""Prompt-optimization methods compared with RL on one task LM, one data split and one budget.

Every method is a function `run(ctx: MethodContext) -> MethodResult` registered in METHODS by name.
The budget is counted in scored (prompt, example) pairs: for discrete methods, pairs sent through the
task-LM scorer (memo hits are free); for soft methods, training examples passed through the task LM
(one forward + backward of one example = one pair).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from rlprompt.errors import UserError


class BudgetExhausted(Exception):
    """Raised inside a method when its pair budget is spent; the method returns its best so far."""


@dataclass
class MethodContext:
    """What every method gets: the task, the frozen task LM, its scorer, the budget and the seed."""

    task: object  # rlprompt.tasks.Task
    task_model: object
    task_tokenizer: object
    scorer: object  # a CachedScorer on task.template / task.verbalizers
    pair_budget: int
    seed: int = 13
    policy_model: str = "smollm2-135m"  # name of the LM that writes or rewrites prompts, when needed
    device: str = "auto"
    options: dict = field(default_factory=dict)  # method-specific settings from the CLI


@dataclass
class MethodResult:
    """One method's outcome. `prompt` is None for soft (continuous) prompts."""

    method: str
    prompt: str | None
    prompt_tokens: int  # length in task-LM tokens, or the number of virtual tokens
    dev_acc: float
    test_acc: float | None
    pairs_scored: int
    wall_s: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (pairs so far, best dev acc so far)
    extra: dict = field(default_factory=dict)


METHODS: dict[str, Callable[[MethodContext], MethodResult]] = {}


def register(name: str):
    """Decorator: add a method's run function to METHODS under `name`."""

    def wrap(fn):
        METHODS[name] = fn
        return fn

    return wrap


def get_method(name: str) -> Callable[[MethodContext], MethodResult]:
    """The run function of method `name`; a UserError lists the known ones."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
