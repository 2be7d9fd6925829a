"""Context distillation into soft tokens ("soft prompt learning as context compression").

The teacher is the frozen task LM with a long, detailed instruction in the template's {prompt}
slot. The student is the same frozen LM with k learnable input embeddings in that slot instead:
"{sentence} [k soft tokens] It was". The soft tokens are trained on unlabeled inputs (the train
sentences; their labels are never read) to minimize KL(teacher ‖ student) over the verbalizer
distribution. They start as the embeddings of the instruction's first k tokens.

Reported: the compression ratio (instruction tokens / k), agreement with the teacher (share of
examples with the same argmax label) and mean KL, on dev and test, plus the student's accuracy.
Budget: teacher pairs scored (train and dev, through the shared scorer), one pair per training
example (forward + backward), |dev| pairs per dev evaluation; test scoring is outside the budget.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from rlprompt.errors import UserError
from rlprompt.evaluation import accuracy, score_examples
from rlprompt.methods import MethodContext, MethodResult, register
from rlprompt.methods.budget import MODEL_PAIRS, BudgetedScorer, PairLedger
from rlprompt.methods.options import options_into
from rlprompt.methods.soft_common import (batched_logprobs, init_token_ids, model_device, optimizer_step,
                                          require_train_dev_and_budget, score_teacher, seeded,
                                          train_within_budget)
from rlprompt.rewards import verbalizer_kl
from rlprompt.scorer import PromptEncoder, cache_kwargs, lm_logits, returned_cache, right_pad
from rlprompt.tasks import verbalizer_token_ids

log = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """Settings of distill-soft (ctx.options keys of the same names)."""

    k: int = 5  # learnable pseudo tokens replacing the instruction
    init_text: str | None = None  # the soft tokens start as this text's first k tokens (None: the instruction)
    lr: float = 1e-2  # Adam learning rate of the soft tokens
    batch_size: int = 8  # unlabeled training sentences per step
    eval_every: int = 10  # steps between dev evaluations (each costs |dev| pairs)
    eval_batch_size: int = 32
    test: bool = True  # measure agreement and accuracy on the test set (outside the budget)

    def __post_init__(self):
        if self.k < 1:
            raise UserError(f"k must be at least 1, got {self.k}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 1 or self.eval_every < 1 or self.eval_batch_size < 1:
            raise UserError("batch_size, eval_every and eval_batch_size must be at least 1")


@dataclass
class _Prefixes:
    """Keys and values of the template before the slot (the sentence) for a list of sentences."""

    cache: object  # transformers Cache of the right-padded prefixes
    mask: torch.Tensor  # (E, Lp) 1 for real prefix tokens
    lengths: torch.Tensor  # (E,) real prefix lengths
    row: dict[str, int]  # sentence -> its row


class SlotSoftPrompt(nn.Module):
    """k trainable embeddings in the template's {prompt} slot of a frozen causal LM.

    `logprobs(sentences)` gives (B, V) full-vocabulary log-probs of the verbalizer tokens, the same
    quantity the scorers give for a discrete prompt in that slot: with the embeddings of a text's
    tokens it reproduces the scorer's numbers for that text. The part of the input before the slot
    does not depend on the soft tokens, so, as in the CachedScorer, its keys and values are computed
    once without gradients (kept for the sentence lists given to `keep_prefixes`) and only the soft
    tokens and the template's tail run with gradients.
    """

    def __init__(self, model, tokenizer, template: str, verbalizers: list[str], init_ids: list[int]):
        super().__init__()
        self.lm = [model]  # a list keeps the frozen LM out of this module's parameters
        self.encoder = PromptEncoder(tokenizer, template)
        self.verbalizer_ids = torch.tensor(verbalizer_token_ids(tokenizer, verbalizers))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor(init_ids, device=model_device(model))
        self.embeds = nn.Parameter(model.get_input_embeddings()(ids).detach().float().clone())  # (k, d)
        self._kept: list[_Prefixes] = []

    @property
    def k(self) -> int:
        return self.embeds.shape[0]

    @torch.no_grad()
    def _prefixes(self, sentences: list[str]) -> _Prefixes:
        model = self.lm[0]
        ids, mask, lengths = right_pad([self.encoder.encode_prefix(s) for s in sentences], self.pad_id)
        device = model_device(model)
        out = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=True)
        return _Prefixes(returned_cache(out), mask, lengths, {s: r for r, s in enumerate(sentences)})

    def keep_prefixes(self, sentences: list[str]) -> None:
        """Compute the prefixes of `sentences` once and reuse them for any batch drawn from them."""
        self._kept.append(self._prefixes(list(sentences)))

    def logprobs(self, sentences: list[str]) -> torch.Tensor:
        """(B, V) verbalizer log-probs with the soft tokens in the {prompt} slot."""
        model = self.lm[0]
        device = model_device(model)
        prefix = next((p for p in self._kept if all(s in p.row for s in sentences)), None)
        prefix = prefix or self._prefixes(list(sentences))
        rows = torch.tensor([prefix.row[s] for s in sentences])
        conts = [self.encoder.encode_continuation("", s) for s in sentences]
        if not all(conts):
            raise UserError(f"template {self.encoder.template!r} leaves nothing after the prompt to "
                            "read the label at; end it with text such as ' It was'")
        embed = model.get_input_embeddings()
        soft = self.embeds.to(embed.weight.dtype)
        width = self.k + max(map(len, conts))
        inputs = soft.new_zeros(len(sentences), width, soft.shape[1])
        cont_mask = torch.zeros(len(sentences), width, dtype=torch.long)
        pos = torch.zeros(len(sentences), width, dtype=torch.long)
        for r, cont in enumerate(conts):  # left padding keeps every row's label position last
            n = self.k + len(cont)
            inputs[r, width - n:] = torch.cat([soft, embed(torch.tensor(cont, device=device))])
            cont_mask[r, width - n:] = 1
            start = int(prefix.lengths[rows[r]])
            pos[r, width - n:] = torch.arange(start, start + n)
        cache = copy.copy(prefix.cache)
        cache.layers = [copy.copy(layer) for layer in prefix.cache.layers]
        cache.batch_select_indices(rows.to(device))
        mask = torch.cat([prefix.mask[rows], cont_mask], dim=1)
        hidden = model.base_model(inputs_embeds=inputs, attention_mask=mask.to(device),
                                  position_ids=pos.to(device), use_cache=True,
                                  **cache_kwargs(model.base_model, cache)).last_hidden_state[:, -1]  # (B, d)
        logits = lm_logits(model, hidden)
        return torch.log_softmax(logits.float(), -1)[:, self.verbalizer_ids.to(logits.device)]


def agreement(teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor) -> float:
    """Share of examples where the student's argmax label equals the teacher's."""
    return float((teacher_logprobs.argmax(-1) == student_logprobs.argmax(-1)).float().mean())


@register("distill-soft")
def run(ctx: MethodContext) -> MethodResult:
    """Distill a long instruction into k soft tokens on the unlabeled train sentences."""
    return distill_soft_prompt(ctx)[0]


def distill_soft_prompt(ctx: MethodContext) -> tuple[MethodResult, SlotSoftPrompt]:
    """Train the soft tokens within ctx.pair_budget; returns the result and the student, set to the
    checkpoint with the lowest dev KL."""
    method = "distill-soft"
    cfg = options_into(DistillConfig(), ctx.options, method)
    task, tokenizer = ctx.task, ctx.task_tokenizer
    n_train, n_dev = len(task.train), len(task.dev)
    require_train_dev_and_budget(task, method, ctx.pair_budget, n_train + 2 * n_dev,
                                 "the teacher on train and dev plus one dev evaluation")
    ledger = PairLedger(ctx.pair_budget)
    start = time.perf_counter()
    teacher = score_teacher(ctx, BudgetedScorer(ctx.scorer, ledger, MODEL_PAIRS))
    instruction, teacher_train, teacher_dev = teacher.instruction, teacher.train, teacher.dev
    train_text = [e.text for e in task.train]
    dev_text, dev_labels = [e.text for e in task.dev], [e.label for e in task.dev]
    init_text = " " + (cfg.init_text or instruction).strip()
    with seeded(ctx.seed):
        student = SlotSoftPrompt(ctx.task_model, tokenizer, task.template, task.verbalizers,
                                 init_token_ids(tokenizer, init_text, cfg.k))
        student.keep_prefixes(train_text)
        student.keep_prefixes(dev_text)
        optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
        curve, kl_curve, evals, best = [], [], [], {}

        def train_step(idx: list[int]) -> float:
            student_lp = student.logprobs([train_text[i] for i in idx])
            loss = verbalizer_kl(teacher_train[idx].to(student_lp.device), student_lp).mean()
            return optimizer_step(optimizer, loss)

        def evaluate_dev(step: int) -> None:
            ledger.charge(n_dev)
            lp = batched_logprobs(student.logprobs, dev_text, cfg.eval_batch_size)
            row = {"step": step, "kl": float(verbalizer_kl(teacher_dev, lp).mean()),
                   "agreement": agreement(teacher_dev, lp),
                   "acc": float(accuracy(lp[None], dev_labels)[0])}
            evals.append(row)
            if not best or row["kl"] < best["kl"]:
                best.update(row, embeds=student.embeds.detach().clone())
            curve.append((ledger.used, best["acc"]))
            kl_curve.append((ledger.used, row["kl"]))
            log.info("%s step %d, %d/%d pairs: dev KL %.4f, agreement %.3f, acc %.3f", method, step,
                     ledger.used, ledger.budget, row["kl"], row["agreement"], row["acc"])

        step, losses = train_within_budget(ledger, n_train, cfg.batch_size, n_dev, cfg.eval_every, ctx.seed,
                                           train_step, evaluate_dev)
        with torch.no_grad():
            student.embeds.copy_(best["embeds"])
        test, test_acc = {}, None
        if cfg.test and task.test:
            test_labels = [e.label for e in task.test]
            teacher_test = score_examples(ctx.scorer, [instruction], task.test, progress=False)[0]
            student_test = batched_logprobs(student.logprobs, [e.text for e in task.test],
                                            cfg.eval_batch_size)
            test = {"test_kl": float(verbalizer_kl(teacher_test, student_test).mean()),
                    "test_agreement": agreement(teacher_test, student_test),
                    "teacher_test_acc": float(accuracy(teacher_test[None], test_labels)[0]),
                    "test_pairs_outside_budget": 2 * len(task.test)}
            test_acc = float(accuracy(student_test[None], test_labels)[0])
    init = evals[0]
    result = MethodResult(
        method=method, prompt=None, prompt_tokens=cfg.k, dev_acc=best["acc"],
        test_acc=test_acc, pairs_scored=ledger.used, wall_s=time.perf_counter() - start,
        curve=curve,
        extra={"teacher_instruction": instruction, "teacher_tokens": teacher.tokens,
               "compression_ratio": teacher.tokens / cfg.k, "placement": "soft tokens in the {prompt} slot",
               "init_text": init_text.strip(), "dev_kl": best["kl"], "dev_agreement": best["agreement"],
               "init_dev_kl": init["kl"], "init_dev_agreement": init["agreement"],
               "teacher_dev_acc": float(accuracy(teacher_dev[None], dev_labels)[0]),
               **test, "steps": step, "best_step": best["step"],
               "train_kl_first": losses[0] if losses else None,
               "train_kl_last": losses[-1] if losses else None,
               "dev_kl_curve": kl_curve},
    )
    return result, student
