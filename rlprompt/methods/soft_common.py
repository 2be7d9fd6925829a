"""Pieces shared by the soft-prompt and prompt-compression methods (and autoprompt): seeding, the teacher
instructions, the token ids of an init text, the budgeted training loop, and batched verbalizer log-probs
of soft-prompted inputs. (The pair ledger and the budgeted scorer are in rlprompt.methods.budget, method
options in rlprompt.methods.options.)"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch

from rlprompt.errors import UserError
from rlprompt.methods.budget import PairLedger

# Long, detailed instructions for the {prompt} slot: the teacher of the compression methods.
# They follow the sentence in the template, so they speak of "the review above".
TEACHER_INSTRUCTIONS = {
    "sst2": "Classify the sentiment of the review above. Reviews that criticize the film (dull, boring, "
            "stupid, badly made) are negative and the answer is terrible. Reviews that praise the film "
            "(wonderful, funny, moving, well acted) are positive and the answer is great. In the critic's "
            "opinion, the movie",
}
TEACHER_INSTRUCTIONS["mr"] = TEACHER_INSTRUCTIONS["sst2"]
TEACHER_INSTRUCTIONS["agnews"] = (
    "Read the news article above and decide which of four topics it covers. World is for "
    "international news, politics, wars and diplomacy; Sports is for games, teams, players and "
    "tournaments; Business is for companies, markets, the economy and money; Tech is for science, "
    "computers, the internet and technology. Answer with one word.")


def teacher_instruction(task, options: dict) -> str:
    """ctx.options['teacher_instruction'] if given, else the task's built-in long instruction."""
    text = options.get("teacher_instruction") or TEACHER_INSTRUCTIONS.get(task.name)
    if not text:
        raise UserError(f"no teacher instruction for task {task.name!r}; pass the option "
                        "teacher_instruction=TEXT")
    return text


def require_train_dev_and_budget(task, method: str, budget: int, min_pairs: int, spent_on: str) -> None:
    """One-line errors when the task lacks train or dev examples, or when the pair budget is below
    what `method` must spend (on `spent_on`) before it can learn anything."""
    if not task.train or not task.dev:
        raise UserError(f"{method} needs train and dev examples")
    if budget < min_pairs:
        raise UserError(f"pair budget {budget} is too small for {method}: {spent_on} needs {min_pairs} pairs")


@dataclasses.dataclass
class Teacher:
    """The long instruction a compression method imitates, its length in task-LM tokens, and its
    verbalizer log-probs (E, V) on the train and dev examples."""

    instruction: str
    tokens: int
    train: torch.Tensor
    dev: torch.Tensor


def score_teacher(ctx, scorer) -> Teacher:
    """Score the task's teacher instruction (or ctx.options['teacher_instruction']) on train and dev
    with `scorer`, which charges the method's ledger."""
    from rlprompt.evaluation import score_examples

    instruction = teacher_instruction(ctx.task, ctx.options)
    tokens = len(ctx.task_tokenizer(" " + instruction.strip(), add_special_tokens=False).input_ids)
    return Teacher(instruction, tokens,
                   train=score_examples(scorer, [instruction], ctx.task.train, progress=False)[0],
                   dev=score_examples(scorer, [instruction], ctx.task.dev, progress=False)[0])


def init_token_ids(tokenizer, text: str, n: int | None) -> list[int]:
    """Token ids of `text` (no special tokens), cut or cycled to n ids as peft's TEXT init does."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"init text {text!r} has no tokens; give a non-empty init_text")
    n = n or len(ids)
    return (ids * (n // len(ids) + 1))[:n]


@contextlib.contextmanager
def seeded(seed: int):
    """Within the block torch's global RNG is seeded with `seed`; the caller's RNG state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def model_device(model) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def train_within_budget(ledger: PairLedger, n_train: int, batch_size: int, eval_cost: int, eval_every: int,
                        seed: int, train_step: Callable[[list[int]], float],
                        evaluate: Callable[[int], None]) -> tuple[int, list[float]]:
    """The loop of the soft methods: `evaluate(0)`, then `train_step(indices)` on shuffled minibatches
    of train indices (one pair charged per example), `evaluate(step)` every `eval_every` steps and
    after the last step, for as long as a step and the final evaluation (`eval_cost` pairs, charged
    by `evaluate`) still fit the budget. Returns (steps taken, the losses train_step returned)."""
    batches = torch.Generator().manual_seed(seed)
    queue, losses = [], []
    evaluate(0)
    step = last_eval = 0
    while ledger.fits(batch_size + eval_cost):
        if len(queue) < batch_size:
            queue += torch.randperm(n_train, generator=batches).tolist()
        idx, queue = queue[:batch_size], queue[batch_size:]
        ledger.charge(len(idx))
        losses.append(train_step(idx))
        step += 1
        if step % eval_every == 0:
            evaluate(step)
            last_eval = step
    if last_eval != step:
        evaluate(step)
    return step, losses


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """Backpropagate `loss` and take one optimizer step; returns the loss as a float."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def label_logprobs(model, verbalizer_ids: torch.Tensor, last: torch.Tensor, **inputs) -> torch.Tensor:
    """(B, V) full-vocabulary log-probs of the verbalizer tokens after position last[b] of row b.

    Only the distinct label positions go through the LM head (`logits_to_keep`), so right-padded
    rows of different lengths cost one head projection per distinct length, not per position.
    """
    keep, column = torch.unique(last, return_inverse=True)
    device = model_device(model)
    logits = model(**inputs, logits_to_keep=keep.to(device)).logits  # (B, len(keep), vocab)
    logits = logits[torch.arange(len(last), device=logits.device), column.to(logits.device)]
    return torch.log_softmax(logits.float(), -1)[:, verbalizer_ids.to(logits.device)]


@torch.no_grad()
def batched_logprobs(forward: Callable[[list[str]], torch.Tensor], sentences: Sequence[str],
                     batch_size: int = 32, length: Callable[[str], int] = len) -> torch.Tensor:
    """(E, V) verbalizer log-probs of `forward` (a batch of sentences -> (B, V)), in batches of
    similar `length` (less padding), returned in the order of `sentences`, on the CPU."""
    order = sorted(range(len(sentences)), key=lambda i: length(sentences[i]))
    out = [None] * len(sentences)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        rows = forward([sentences[j] for j in idx]).float().cpu()
        for j, row in zip(idx, rows):
            out[j] = row
    if not out:
        raise UserError("no examples to evaluate")
    return torch.stack(out)
