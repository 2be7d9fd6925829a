"""Soft prompt tuning (Lester et al., 2021) and prefix tuning (Li & Liang, 2021) with peft.

The frozen task LM reads the task's template with the {prompt} slot left empty ("{sentence} It
was" for SST-2), and peft puts the virtual tokens in front of it: as input embeddings before the
first token (prompt tuning) or as keys and values at every layer (prefix tuning). Both start from
a real text, by default the task's manual prompt: the prompt embeddings are that text's token
embeddings, the prefix is that text's keys and values (Li & Liang's "real words" initialization),
so at step 0 either method computes exactly the discrete text prepended to the input.

Training minimizes the verbalizer cross-entropy: the logits at the label position restricted to
the verbalizer tokens. Dev accuracy (ties: dev loss) selects the checkpoint; test accuracy is
reported. Budget: one training example through the task LM (forward + backward) is one pair, and
each dev evaluation costs |dev| pairs; the final test evaluation is outside the budget.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from rlprompt.errors import UserError
from rlprompt.evaluation import accuracy
from rlprompt.methods import MethodContext, MethodResult, register
from rlprompt.methods.budget import PairLedger
from rlprompt.methods.options import options_into
from rlprompt.methods.soft_common import (batched_logprobs, init_token_ids, label_logprobs, model_device,
                                          optimizer_step, require_train_dev_and_budget, seeded,
                                          train_within_budget)
from rlprompt.scorer import PromptEncoder, returned_cache, right_pad
from rlprompt.tasks import verbalizer_token_ids

log = logging.getLogger(__name__)


@dataclass
class SoftPromptConfig:
    """Settings of prompt tuning and prefix tuning (ctx.options keys of the same names)."""

    num_virtual_tokens: int | None = None  # None: as many as the init text has tokens
    init_text: str | None = None  # text the soft tokens start from; None: the task's manual prompt
    lr: float = 1e-2  # Adam learning rate of the soft parameters
    batch_size: int = 8  # training examples per step
    eval_every: int = 10  # steps between dev evaluations (each costs |dev| pairs)
    eval_batch_size: int = 32
    test: bool = True  # score the selected soft prompt on the test set (outside the budget)

    def __post_init__(self):
        if self.num_virtual_tokens is not None and self.num_virtual_tokens < 1:
            raise UserError(f"num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 1 or self.eval_every < 1 or self.eval_batch_size < 1:
            raise UserError("batch_size, eval_every and eval_batch_size must be at least 1")


class PeftSoftPrompt:
    """A frozen causal LM wrapped by peft with trainable virtual tokens ('prompt' or 'prefix').

    `logprobs(sentences)` gives the (B, V) full-vocabulary log-probs of the verbalizer tokens at
    the label position, the quantity the scorers give for discrete prompts.
    """

    def __init__(self, model, tokenizer, template: str, verbalizers: list[str], kind: str,
                 init_ids: list[int]):
        if kind not in ("prompt", "prefix"):
            raise UserError(f"unknown soft prompt kind {kind!r}; use prompt or prefix")
        self.base = model
        self.kind = kind
        self.n = len(init_ids)
        context = getattr(model.config, "max_position_embeddings", None)
        self.encoder = PromptEncoder(tokenizer, template, context - self.n if context else None)
        self.verbalizer_ids = torch.tensor(verbalizer_token_ids(tokenizer, verbalizers))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        common = dict(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=self.n)
        if kind == "prompt":  # RANDOM: we set the text init ourselves (no tokenizer reload, no BOS)
            config = PromptTuningConfig(prompt_tuning_init=PromptTuningInit.RANDOM, **common)
        else:
            config = PrefixTuningConfig(**common)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model = get_peft_model(model, config)
        self.weight = self.model.prompt_encoder["default"].embedding.weight  # the only trainable tensor
        with torch.no_grad():
            self.weight.copy_(self._text_init(torch.tensor([init_ids], device=self.device)))

    @property
    def device(self) -> torch.device:
        return model_device(self.base)

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable soft prompt, for the optimizer."""
        return [self.weight]

    @torch.no_grad()
    def _text_init(self, ids: torch.Tensor) -> torch.Tensor:
        """The init text as soft parameters: its token embeddings (prompt) or its per-layer keys and
        values (prefix), laid out as peft's get_prompt reads them: (n, layers·2·kv_heads·head_dim)."""
        if self.kind == "prompt":
            return self.base.get_input_embeddings()(ids)[0].float()
        cache = returned_cache(self.base(input_ids=ids, use_cache=True))
        kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]])
                          for layer in cache.layers])  # (L, 2, H, n, D)
        return kv.permute(3, 0, 1, 2, 4).reshape(self.n, -1).float()

    def logprobs(self, sentences: list[str]) -> torch.Tensor:
        """(B, V) verbalizer log-probs (full-vocabulary softmax) with the soft tokens in front."""
        seqs = [self.encoder.encode_pair("", s) for s in sentences]
        ids, mask, _ = right_pad(seqs, self.pad_id)
        # The label is read after each row's last real token; prompt tuning's logits include the
        # virtual positions, prefix tuning's do not.
        last = torch.tensor([len(s) - 1 for s in seqs]) + (self.n if self.kind == "prompt" else 0)
        with warnings.catch_warnings():  # peft hands the prefix to the model as `past_key_values`
            warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
            return label_logprobs(self.model, self.verbalizer_ids, last, input_ids=ids.to(self.device),
                                  attention_mask=mask.to(self.device))


def verbalizer_loss(logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the verbalizers only (the log-probs renormalized over V)."""
    return F.cross_entropy(logprobs, labels.to(logprobs.device))


def train_soft_prompt(ctx: MethodContext, kind: str, method: str) -> tuple[MethodResult, PeftSoftPrompt]:
    """Train prompt-tuning ('prompt') or prefix-tuning ('prefix') virtual tokens within ctx.pair_budget;
    returns the result and the soft prompt, set to the checkpoint chosen on dev."""
    cfg = options_into(SoftPromptConfig(), ctx.options, method)
    task, tokenizer = ctx.task, ctx.task_tokenizer
    ledger = PairLedger(ctx.pair_budget)
    n_dev = len(task.dev)
    require_train_dev_and_budget(task, method, ledger.budget, n_dev, "one dev evaluation")
    init_text = cfg.init_text or task.manual_prompt
    if not init_text:
        raise UserError(f"task {task.name!r} has no manual prompt; pass the option init_text=TEXT")
    start = time.perf_counter()
    train_labels = torch.tensor([e.label for e in task.train])
    dev_labels = torch.tensor([e.label for e in task.dev])
    with seeded(ctx.seed):
        soft = PeftSoftPrompt(ctx.task_model, tokenizer, task.template, task.verbalizers, kind,
                              init_token_ids(tokenizer, init_text, cfg.num_virtual_tokens))
        optimizer = torch.optim.Adam(soft.parameters(), lr=cfg.lr)
        curve, best = [], {"key": None}

        def train_step(idx: list[int]) -> float:
            lp = soft.logprobs([task.train[i].text for i in idx])
            return optimizer_step(optimizer, verbalizer_loss(lp, train_labels[idx]))

        def evaluate_dev(step: int) -> None:
            ledger.charge(n_dev)
            lp = batched_logprobs(soft.logprobs, [e.text for e in task.dev], cfg.eval_batch_size)
            acc, loss = float(accuracy(lp[None], dev_labels)[0]), float(verbalizer_loss(lp, dev_labels))
            if best["key"] is None or (acc, -loss) > best["key"]:
                best.update(key=(acc, -loss), acc=acc, loss=loss, step=step,
                            weight=soft.weight.detach().clone())
            curve.append((ledger.used, best["acc"]))
            log.info("%s step %d, %d/%d pairs: dev acc %.3f, loss %.4f (best %.3f)", method, step,
                     ledger.used, ledger.budget, acc, loss, best["acc"])

        step, losses = train_within_budget(ledger, len(task.train), cfg.batch_size, n_dev, cfg.eval_every,
                                           ctx.seed, train_step, evaluate_dev)
        with torch.no_grad():
            soft.weight.copy_(best["weight"])
        test_acc = None
        if cfg.test and task.test:
            lp = batched_logprobs(soft.logprobs, [e.text for e in task.test], cfg.eval_batch_size)
            test_acc = float(accuracy(lp[None], [e.label for e in task.test])[0])
    result = MethodResult(
        method=method, prompt=None, prompt_tokens=soft.n, dev_acc=best["acc"], test_acc=test_acc,
        pairs_scored=ledger.used, wall_s=time.perf_counter() - start, curve=curve,
        extra={"placement": "virtual tokens prepended to the input (peft)", "init_text": init_text,
               "steps": step, "best_step": best["step"], "dev_loss": best["loss"],
               "train_loss_first": losses[0] if losses else None,
               "train_loss_last": losses[-1] if losses else None,
               "trainable_params": soft.weight.numel(),
               "test_pairs_outside_budget": len(task.test) if test_acc is not None else 0},
    )
    return result, soft


@register("prompt-tuning")
def run_prompt_tuning(ctx: MethodContext) -> MethodResult:
    """Lester et al.'s soft prompt: trainable input embeddings in front of the input."""
    return train_soft_prompt(ctx, "prompt", "prompt-tuning")[0]


@register("prefix-tuning")
def run_prefix_tuning(ctx: MethodContext) -> MethodResult:
    """Li & Liang's prefix: trainable keys and values at every layer in front of the input."""
    return train_soft_prompt(ctx, "prefix", "prefix-tuning")[0]
