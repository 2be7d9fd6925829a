"""AutoPrompt-style gradient-guided token search (Shin et al., 2020), with the candidate step of GCG
(Zou et al., 2023).

The prompt is `prompt_length` task-LM tokens in the template's {prompt} slot. Each round:

1. the gradient of the verbalizer cross-entropy on a mini-batch of train examples with respect to the
   one-hot prompt tokens ranks, at every position, the `top_k` tokens whose swap lowers the loss most
   to first order (when the scorer is batch-calibrated, the loss is on log-probs calibrated on the
   mini-batch, so the search optimizes what it is scored on);
2. `candidates` single-token swaps drawn from those are scored on all train examples with RLPrompt's
   reward, the quantity every discrete search here optimizes;
3. the best candidate replaces the prompt when its train reward is higher; the round's best new
   prompt is scored on dev, and the final prompt is the best on dev (see PromptSearch).

Budget: the scored pairs, plus one pair per mini-batch example of each gradient (a forward and a
backward pass through the task LM, as the soft methods count it).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from rlprompt.errors import UserError
from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult, register
from rlprompt.methods.budget import PromptSearch
from rlprompt.methods.options import options_into
from rlprompt.methods.soft_common import init_token_ids, label_logprobs, model_device
from rlprompt.scorer import PromptEncoder, is_masked_model
from rlprompt.tasks import verbalizer_token_ids

log = logging.getLogger(__name__)


@dataclass
class AutoPromptConfig:
    """Settings of the gradient-guided search (ctx.options keys of the same names)."""

    prompt_length: int = 5  # task-LM tokens in the {prompt} slot
    init: str | None = None  # starting text, cut or cycled to prompt_length tokens; None: the manual prompt
    top_k: int = 64  # tokens kept per position from the gradient
    candidates: int = 32  # single-token swaps scored per round
    grad_batch: int = 32  # train examples per gradient
    max_rounds: int = 1000
    patience: int = 20  # rounds without a higher train reward before stopping

    def __post_init__(self):
        for name in ("prompt_length", "top_k", "candidates", "grad_batch", "max_rounds", "patience"):
            if getattr(self, name) < 1:
                raise UserError(f"autoprompt option {name} must be at least 1, got {getattr(self, name)}")


def allowed_tokens(tokenizer, vocab_size: int) -> torch.Tensor:
    """(vocab_size,) bool: tokens a prompt may hold (printable text without a newline, not special)."""
    special = set(tokenizer.all_special_ids)
    ok = torch.zeros(vocab_size, dtype=torch.bool)
    for i in range(min(vocab_size, len(tokenizer))):
        text = tokenizer.decode([i])
        ok[i] = i not in special and bool(text.strip()) and text.isprintable()
    return ok


class SlotGradient:
    """Gradients of the verbalizer cross-entropy with respect to one-hot prompt tokens in the slot."""

    def __init__(self, model, tokenizer, template: str, verbalizers: list[str], calibrate: bool):
        self.model, self.tokenizer = model, tokenizer
        self.encoder = PromptEncoder(tokenizer, template)
        self.verbalizer_ids = torch.tensor(verbalizer_token_ids(tokenizer, verbalizers))
        self.calibrate = calibrate
        self.embedding = model.get_input_embeddings()

    def loss_and_grad(self, ids: list[int], examples) -> tuple[float, torch.Tensor]:
        """(mean cross-entropy, (len(ids), vocab) gradient of it with respect to the one-hot tokens)."""
        device = model_device(self.model)
        weight = self.embedding.weight
        one_hot = torch.zeros(len(ids), weight.shape[0], device=device, dtype=weight.dtype)
        one_hot[torch.arange(len(ids)), torch.tensor(ids)] = 1
        one_hot.requires_grad_(True)
        slot = one_hot @ weight  # (L, d)
        tokens = lambda text: self.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
        embed = lambda ids: self.embedding(torch.tensor(ids, dtype=torch.long, device=device))  # noqa: E731
        rows = []
        for e in examples:
            _, gap, tail = self.encoder.around_slot(e.text)
            rows.append(torch.cat([embed(self.encoder.encode_prefix(e.text) + tokens(gap)), slot, embed(tokens(tail))]))
        lengths = torch.tensor([len(r) for r in rows])
        inputs = pad_sequence(rows, batch_first=True)
        mask = (torch.arange(inputs.shape[1])[None, :] < lengths[:, None]).long().to(device)
        logprobs = label_logprobs(self.model, self.verbalizer_ids, lengths - 1, inputs_embeds=inputs,
                                  attention_mask=mask)
        logprobs = torch.log_softmax(logprobs, -1)
        if self.calibrate:
            logprobs = torch.log_softmax(logprobs - logprobs.mean(0, keepdim=True), -1)
        labels = torch.tensor([e.label for e in examples], device=logprobs.device)
        loss = torch.nn.functional.nll_loss(logprobs, labels)
        loss.backward()
        return float(loss.detach()), one_hot.grad.float()


def swaps(ids: list[int], grad: torch.Tensor, allowed: torch.Tensor, top_k: int, n: int,
          rng: random.Random) -> list[list[int]]:
    """Up to n distinct single-token swaps of `ids`, each at a random position to one of the top_k
    allowed tokens with the most negative gradient there."""
    scores = (-grad).masked_fill(~allowed.to(grad.device), float("-inf"))
    top = scores.topk(top_k, dim=-1).indices.tolist()  # (L, top_k)
    out, seen = [], {tuple(ids)}
    for _ in range(20 * n):
        if len(out) == n:
            break
        pos = rng.randrange(len(ids))
        new = list(ids)
        new[pos] = rng.choice(top[pos])
        if tuple(new) not in seen:
            seen.add(tuple(new))
            out.append(new)
    return out


@register("autoprompt")
def run(ctx: MethodContext) -> MethodResult:
    """Gradient-guided token search. Options: the fields of AutoPromptConfig."""
    cfg = options_into(AutoPromptConfig(), ctx.options, "autoprompt")
    if not ctx.task.train or not ctx.task.dev:
        raise UserError("autoprompt needs train and dev examples")
    if ctx.task_model is None or is_masked_model(ctx.task_model):
        raise UserError("autoprompt needs the weights of a causal task LM (it follows their gradient)")
    tok = ctx.task_tokenizer
    decode = lambda ids: tok.decode(ids).strip()  # noqa: E731  (what the template's slot receives)
    allowed = allowed_tokens(tok, ctx.task_model.get_input_embeddings().weight.shape[0])
    gradient = SlotGradient(ctx.task_model, tok, ctx.task.template, ctx.task.verbalizers,
                            calibrate=getattr(ctx.scorer, "mode", "none") == "batch")
    rng = random.Random(ctx.seed)
    search = PromptSearch(ctx, desc="autoprompt")
    ids = init_token_ids(tok, (ctx.task.manual_prompt if cfg.init is None else cfg.init) or "!", cfg.prompt_length)
    start = decode(ids)
    trace, stop, stale = [], "max_rounds reached", 0
    try:
        current = search.score_train([start])[0]
        search.score_dev([current.prompt])
        for rnd in range(1, cfg.max_rounds + 1):
            search.round = rnd
            batch = rng.sample(ctx.task.train, min(cfg.grad_batch, len(ctx.task.train)))
            search.ledger.charge(len(batch))
            with torch.enable_grad():
                loss, grad = gradient.loss_and_grad(ids, batch)
            options = [(c, decode(c)) for c in swaps(ids, grad, allowed, cfg.top_k, cfg.candidates, rng)]
            options = [(c, text) for c, text in options if text]
            texts = list(dict.fromkeys(text for _, text in options))
            by_text = dict(zip(texts, search.score_train(texts)))
            best_ids, best_text = max(options, key=lambda o: by_text[o[1]].train_reward, default=(None, None))
            best = by_text[best_text] if best_ids else current
            improved = best.train_reward > current.train_reward
            if improved:
                ids, current, stale = best_ids, best, 0
                search.score_dev([current.prompt])
            else:
                stale += 1
            trace.append({"round": rnd, "grad_loss": round(loss, 4), "prompt": current.prompt,
                          "train_reward": round(current.train_reward, 3), "improved": improved})
            log.info("autoprompt round %d: %r train reward %.2f%s, %d pairs", rnd, current.prompt,
                     current.train_reward, " (new)" if improved else "", search.ledger.used)
            if stale >= cfg.patience:
                stop = f"no higher train reward for {cfg.patience} rounds"
                break
    except BudgetExhausted:
        stop = "budget spent"
    return search.finish("autoprompt", extra={"start": start, "rounds": trace, "stop_reason": stop,
                                              "config": dataclasses.asdict(cfg)})
