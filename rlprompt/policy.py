"""The prompt policy: a frozen causal LM with a small trainable FFN adaptor inside its backbone.

The adaptor sits after the backbone's final norm (`AdaptedNorm`), so the adapted policy is one
ordinary Hugging Face model: `generate()` and trl's fused log-prob head see the adaptor. Because
the backbone below the adaptor is frozen, the hidden states of a sampled prompt do not depend on
the adaptor: `sample` keeps them, and `evaluate_actions` re-runs only adaptor + head with gradients.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch
from torch import nn

from rlprompt.config import PROMPT_VOCABS
from rlprompt.errors import UserError
from rlprompt.scorer import cache_kwargs, lm_logits, returned_cache


class Adaptor(nn.Module):
    """Residual MLP h + W2·relu(W1·h + b1) + b2 (RLPrompt's d→2048→d), zero output at init."""

    def __init__(self, dim: int, hidden: int = 2048):
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        nn.init.normal_(self.up.weight, std=dim ** -0.5)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.down.weight)  # starts as the identity: the policy begins as the base LM
        nn.init.zeros_(self.down.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.down(torch.relu(self.up(h.to(self.up.weight.dtype)))).to(h.dtype)


class AdaptedNorm(nn.Module):
    """The backbone's final norm followed by the adaptor; `enabled=False` gives the base LM back."""

    def __init__(self, norm: nn.Module, adaptor: Adaptor):
        super().__init__()
        self.norm = norm
        self.adaptor = adaptor
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.adaptor(h) if self.enabled else h


def attach_adaptor(model, hidden: int = 2048) -> Adaptor:
    """Put a fresh adaptor after `model`'s final norm (in place); freeze everything else."""
    backbone = model.base_model
    if not hasattr(backbone, "norm"):
        raise UserError(f"policy model {model.config.model_type!r} has no final norm to attach the "
                        "adaptor after; use a Llama/Mistral/Qwen/Gemma-style causal LM")
    model.requires_grad_(False)
    if isinstance(backbone.norm, AdaptedNorm):
        return backbone.norm.adaptor
    adaptor = Adaptor(model.config.hidden_size, hidden).to(next(model.parameters()).device)
    backbone.norm = AdaptedNorm(backbone.norm, adaptor)
    return adaptor


@dataclass
class PromptBatch:
    """Prompts sampled from the policy. Shapes: (N, T) and (N, T, d)."""

    tokens: torch.Tensor
    log_probs: torch.Tensor
    entropy: torch.Tensor
    base_hidden: torch.Tensor  # backbone output before the adaptor, one per generated position
    texts: list[str]


WORD = re.compile(r" [A-Za-z]+")  # a token that is a whole word: a space, then letters only


class PromptPolicy:
    """Writes prompts of `prompt_length` tokens from a fixed start token, top-k sampling or greedy.

    Sampling masks special tokens, tokens holding a newline, and (with `no_repeat`) tokens already
    in the prompt: the last keeps a prompt from being one token repeated, RLPrompt's failure mode.
    `vocab="words"` also masks every token that is not a space followed by letters, so prompts are
    whole words.
    """

    def __init__(self, model, tokenizer, prompt_length: int = 5, top_k: int = 256,
                 adaptor_hidden: int = 2048, no_repeat: bool = True, start_text: str | None = None,
                 vocab: str = "all"):
        if vocab not in PROMPT_VOCABS:
            raise UserError(f"unknown prompt vocabulary {vocab!r}; use {' or '.join(PROMPT_VOCABS)}")
        if prompt_length < 1:
            raise UserError(f"prompt length must be at least 1, got {prompt_length}")
        ctx = getattr(model.config, "max_position_embeddings", None)
        if ctx and prompt_length + 1 > ctx:
            raise UserError(f"prompt length {prompt_length} does not fit the policy model's context ({ctx})")
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.top_k = top_k
        self.no_repeat = no_repeat
        self.vocab = vocab
        self.adaptor = attach_adaptor(model, adaptor_hidden)
        self.start_ids = self._start_ids(start_text)
        self.banned = self._banned_tokens()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def adapted_norm(self) -> AdaptedNorm:
        return self.model.base_model.norm

    @contextlib.contextmanager
    def base_model_only(self):
        """Within this block the model computes the frozen base LM (adaptor bypassed)."""
        self.adapted_norm.enabled = False
        try:
            yield
        finally:
            self.adapted_norm.enabled = True

    def _start_ids(self, start_text: str | None) -> list[int]:
        tok = self.tokenizer
        if start_text:
            ids = tok(start_text, add_special_tokens=False).input_ids
        else:
            eot = tok.convert_tokens_to_ids("<|endoftext|>")
            first = eot if isinstance(eot, int) and eot != tok.unk_token_id else None
            first = first if first is not None else (tok.bos_token_id if tok.bos_token_id is not None
                                                     else tok.eos_token_id)
            ids = [first]
        if not ids or ids[0] is None:
            raise UserError("the policy needs a start token: pass --policy-start TEXT")
        return ids

    def _banned_tokens(self) -> torch.Tensor:
        vocab = self.model.get_output_embeddings().weight.shape[0]
        banned = torch.zeros(vocab, dtype=torch.bool)
        special = [i for i in self.tokenizer.all_special_ids if i < vocab]
        banned[special] = True
        for i, piece in enumerate(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))):
            if i < vocab and piece is not None and ("\n" in piece or "Ċ" in piece):
                banned[i] = True
        banned[len(self.tokenizer):] = True  # padded embedding rows that no text decodes to
        if self.vocab == "words":
            banned |= ~self._word_tokens(vocab)
        if banned.all():
            raise UserError(f"the policy's tokenizer has no token in the prompt vocabulary {self.vocab!r}")
        return banned.to(self.device)

    def _word_tokens(self, vocab: int) -> torch.Tensor:
        """(vocab,) True where a token reads as a whole word after other text (a space and letters).
        Each token is decoded after an anchor token, as SentencePiece drops a leading space at the start."""
        tok = self.tokenizer
        n = min(vocab, len(tok))
        anchor = tok.encode("a", add_special_tokens=False)[-1]
        head = len(tok.decode([anchor]))
        texts = tok.batch_decode([[anchor, i] for i in range(n)])
        words = torch.zeros(vocab, dtype=torch.bool)
        words[:n] = torch.tensor([WORD.fullmatch(text[head:]) is not None for text in texts])
        return words

    def decode(self, tokens: torch.Tensor) -> list[str]:
        """Token ids (N, T) -> prompt texts, surrounding whitespace stripped."""
        return [self.tokenizer.decode(row.tolist()).strip() for row in tokens]

    def _mask(self, logits: torch.Tensor, tokens_so_far: torch.Tensor) -> torch.Tensor:
        logits = logits.masked_fill(self.banned, float("-inf"))
        if self.no_repeat and tokens_so_far.shape[1]:
            logits = logits.scatter(1, tokens_so_far, float("-inf"))
        return logits

    @torch.no_grad()
    def sample(self, n: int, greedy: bool = False, generator: torch.Generator | None = None,
               bias_tokens: torch.Tensor | None = None, bias: float = 0.0) -> PromptBatch:
        """Sample n prompts (greedy: the argmax prompt n times).

        `bias_tokens` (T,) with `bias` > 0 adds `bias` to the logit of token t at step t: the
        warm start toward an initial prompt (sampling only; log-probs stay the policy's own).
        """
        ids = torch.tensor([self.start_ids] * n, device=self.device)
        tokens = torch.empty(n, 0, dtype=torch.long, device=self.device)
        hiddens, logps, ents = [], [], []
        cache = None
        step_input = ids
        with self.base_model_only():
            for t in range(self.prompt_length):
                out = self.model.base_model(input_ids=step_input, use_cache=True,
                                            **cache_kwargs(self.model.base_model, cache))
                cache = returned_cache(out)
                h = out.last_hidden_state[:, -1]  # (n, d) base hidden state
                logits = lm_logits(self.model, self.adaptor(h)).float()
                logp_full = torch.log_softmax(logits, -1)
                masked = self._mask(logits, tokens)
                if bias_tokens is not None and t < len(bias_tokens) and bias > 0:
                    masked[:, bias_tokens[t]] += bias
                if greedy:
                    nxt = masked.argmax(-1)
                else:
                    k = min(self.top_k, int(torch.isfinite(masked[0]).sum()))
                    top = masked.topk(k, dim=-1)
                    choice = torch.multinomial(torch.softmax(top.values, -1), 1, generator=generator)
                    nxt = top.indices.gather(1, choice).squeeze(1)
                hiddens.append(h)
                logps.append(logp_full.gather(1, nxt[:, None]).squeeze(1))
                ents.append(-(logp_full.exp() * logp_full.nan_to_num(neginf=0.0)).sum(-1))
                tokens = torch.cat([tokens, nxt[:, None]], 1)
                step_input = nxt[:, None]
        return PromptBatch(tokens, torch.stack(logps, 1), torch.stack(ents, 1),
                           torch.stack(hiddens, 1), self.decode(tokens))

    def evaluate_actions(self, base_hidden: torch.Tensor, tokens: torch.Tensor, masked: bool = False):
        """With gradients to the adaptor: log-probs (N, T), entropy (N, T), KL(policy ‖ base) (N, T).

        By default over the full softmax of the adapted model, the same numbers that `model(...)` (and
        trl) compute for these tokens; with `masked`, over the tokens sampling may draw at each position
        (`masked_logits`: the policy's and the base LM's distributions renormalized over them).
        """
        if masked:
            logits = self.masked_logits(base_hidden, tokens)
            with torch.no_grad():
                base_logits = self.masked_logits(base_hidden, tokens, adaptor=nn.Identity())
        else:
            logits = lm_logits(self.model, self.adaptor(base_hidden)).float()
            with torch.no_grad():
                base_logits = lm_logits(self.model, base_hidden).float()
        logp, base_logp = torch.log_softmax(logits, -1), torch.log_softmax(base_logits, -1)
        p = logp.exp()
        masked_out = torch.isinf(logits)  # p is 0 there: 0 × log 0 counts as 0, with finite gradients
        entropy = -(p * logp.masked_fill(masked_out, 0.0)).sum(-1)
        kl = (p * (logp - base_logp).masked_fill(masked_out, 0.0)).sum(-1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1), entropy, kl

    @torch.no_grad()
    def log_policy(self, base_hidden: torch.Tensor) -> torch.Tensor:
        """The adapted policy's full log-softmax (N, T, V) at the given base hidden states (no masks)."""
        return torch.log_softmax(lm_logits(self.model, self.adaptor(base_hidden)).float(), -1)

    def masked_logits(self, base_hidden: torch.Tensor, tokens: torch.Tensor, adaptor: nn.Module | None = None):
        """The logits (N, T, V) that sampling drew `tokens` (N, T) from, with its masks (special and
        newline tokens, and with `no_repeat` the tokens already in the prompt) at -inf. With
        gradients to `adaptor` (default the policy's own; soft Q-learning passes its target copy).
        Soft Q-learning reads these as Q-values: V(s) = logsumexp over the allowed tokens."""
        adaptor = adaptor if adaptor is not None else self.adaptor
        logits = lm_logits(self.model, adaptor(base_hidden.flatten(0, 1))).float().view(*tokens.shape, -1)
        mask = self.banned.expand_as(logits).clone()
        if self.no_repeat:
            for t in range(1, tokens.shape[1]):
                mask[:, t].scatter_(1, tokens[:, :t], True)
        return logits.masked_fill(mask, float("-inf"))

    def encode_prompt(self, text: str) -> torch.Tensor:
        """A prompt text -> its policy tokens (for the warm start), truncated to prompt_length."""
        ids = self.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids
        return torch.tensor(ids[: self.prompt_length], device=self.device)
