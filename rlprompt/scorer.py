"""Score prompts with a frozen task LM: verbalizer log-probs per (prompt, example).

The rendered input of a (prompt, example) pair is two token segments:
  prefix       = template text before {prompt}, with {sentence} filled (trailing spaces moved on)
  continuation = the rest: the prompt and the template's tail, whitespace runs collapsed
`encode_pair` gives those tokens; both scorers below read the same tokens, so they agree.

`CachedScorer` runs each example's prefix once, keeps its KV cache, and for every batch of prompts
expands it and runs only the continuation, reading the logits of the last position alone.
`NaiveScorer` is the reference (and RLPrompt's way): one full sequence per pair, full logits.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import re
from collections import OrderedDict
from dataclasses import dataclass

import torch

from rlprompt.errors import UserError
from rlprompt.tasks import validate_template, verbalizer_token_ids


def split_template(template: str) -> tuple[str, str]:
    """Template -> (head, tail) around {prompt}; either may hold {sentence}."""
    validate_template(template)
    head, tail = template.split("{prompt}")
    return head, tail


class PromptEncoder:
    """Turns (prompt, sentence) into the prefix and continuation token ids of the task LM."""

    def __init__(self, tokenizer, template: str, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.head, self.tail = split_template(template)
        self.max_length = max_length

    def around_slot(self, sentence: str) -> tuple[str, str, str]:
        """(prefix, gap, tail) of a sentence's rendering: the text before {prompt} without its trailing
        whitespace, that whitespace, and the text after {prompt}."""
        head = self.head.replace("{sentence}", sentence)
        prefix = head.rstrip()
        return prefix, head[len(prefix):], self.tail.replace("{sentence}", sentence)

    def texts(self, prompt: str, sentence: str) -> tuple[str, str]:
        """(prefix text, continuation text) of one pair."""
        prefix, gap, tail = self.around_slot(sentence)
        return prefix, re.sub(r"[ ]{2,}", " ", gap + prompt + tail)

    def encode_prefix(self, sentence: str) -> list[int]:
        """Token ids of the prefix (special tokens such as BOS included)."""
        return self.tokenizer(self.texts("", sentence)[0], add_special_tokens=True).input_ids

    def encode_continuation(self, prompt: str, sentence: str) -> list[int]:
        """Token ids of the continuation (no special tokens)."""
        cont = self.texts(prompt, sentence)[1]
        return self.tokenizer(cont, add_special_tokens=False).input_ids

    def encode_continuations(self, prompts: list[str], sentences: list[str]) -> list[list[int]]:
        """Continuation ids of every prompt x sentence pair, row r = (prompts[r // E], sentences[r % E]);
        the same ids as `encode_continuation`, with each distinct text tokenized once, in one batch."""
        texts = [self.texts(p, s)[1] for p in prompts for s in sentences]
        distinct = list(dict.fromkeys(texts))  # usually one per prompt: the tail rarely holds {sentence}
        ids = dict(zip(distinct, self.tokenizer(distinct, add_special_tokens=False).input_ids))
        return [ids[t] for t in texts]

    def encode_pair(self, prompt: str, sentence: str) -> list[int]:
        """All token ids of the rendered pair, as the task LM reads them."""
        ids = self.encode_prefix(sentence) + self.encode_continuation(prompt, sentence)
        if not ids:
            raise UserError(f"template {self.template!r} renders to no tokens")
        if self.max_length and len(ids) > self.max_length:
            raise UserError(f"prompt {prompt[:40]!r} with its input is {len(ids)} tokens, longer "
                            f"than the task model's context ({self.max_length})")
        return ids


def lm_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on 2-D hidden states (N, d) -> (N, vocab), with the model's logit soft-capping.

    A 2-D input keeps torch's CPU bf16 matmul on its fast path (a (N, 1, d) input falls into bmm).
    """
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


@functools.lru_cache(maxsize=None)
def _cache_arg_of(forward_owner: type) -> str:
    return "cache" if "cache" in inspect.signature(forward_owner.forward).parameters else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """The KV cache as the keyword the model's forward takes it under: `cache` in the installed
    transformers (5.x, where `past_key_values` is deprecated and warns), `past_key_values` before it."""
    return {_cache_arg_of(type(model)): cache}


def returned_cache(output):
    """The KV cache a forward returned: `output.cache` (or `past_key_values` in older transformers)."""
    names = {f.name for f in dataclasses.fields(output)}
    return output.cache if "cache" in names else output.past_key_values


def chunk_key(sentences) -> str:
    """A short key for a list of sentences (the memo of scores is keyed by prompt and this)."""
    return hashlib.sha1("\x00".join(sentences).encode()).hexdigest()


def _context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


class _BaseScorer:
    def __init__(self, model, tokenizer, template: str, verbalizers: list[str], max_rows: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = PromptEncoder(tokenizer, template, _context_length(model))
        self.verbalizer_ids = torch.tensor(verbalizer_token_ids(tokenizer, verbalizers))
        self.max_rows = max_rows
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.pairs_scored = 0  # (prompt, example) pairs sent through the model, cache hits excluded

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def state_dict(self) -> dict:
        """The score memo, for a checkpoint (empty for a scorer without one)."""
        memo = getattr(self, "score_cache", None)
        return {} if memo is None else {"score_cache": dict(memo)}

    def load_state_dict(self, state: dict) -> None:
        """Add a checkpoint's memoized scores to this scorer's memo (a scorer without one ignores them)."""
        memo = getattr(self, "score_cache", None)
        if memo is not None:
            memo.update(state.get("score_cache", {}))

    def check_fits(self, prompts: list[str], sentences: list[str]) -> None:
        """Raise a UserError, before any scoring, for a prompt that with the longest input does not
        fit the task model's context."""
        if not self.encoder.max_length or not sentences:
            return
        longest = max(sentences, key=lambda s: len(self.encoder.encode_prefix(s)) + len(s))
        for prompt in dict.fromkeys(prompts):
            self.encoder.encode_pair(prompt, longest)

    def _verbalizer_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, vocab) logits -> (N, V) full-vocabulary log-probs of the verbalizer tokens, fp32."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp[:, self.verbalizer_ids.to(logp.device)].cpu()


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, lengths) of token lists right-padded to one width. Right padding lets
    every real token see exactly what it sees unpadded. An empty list (a template that starts with
    {prompt}, no BOS) becomes one pad token that nothing attends to, with length 0."""
    lengths = torch.tensor([len(s) for s in seqs])
    width = max(1, int(lengths.max()))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids, mask, lengths


class NaiveScorer(_BaseScorer):
    """Reference scorer: one right-padded full sequence per (prompt, example), full logits."""

    @torch.no_grad()
    def score(self, prompts: list[str], sentences: list[str]) -> torch.Tensor:
        """(P, E, V) verbalizer log-probs."""
        pairs = [(p, s) for p in prompts for s in sentences]
        out = []
        for i in range(0, len(pairs), self.max_rows):
            seqs = [self.encoder.encode_pair(p, s) for p, s in pairs[i:i + self.max_rows]]
            ids, mask, _ = right_pad(seqs, self.pad_id)
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            last = torch.tensor([len(s) - 1 for s in seqs], device=logits.device)
            out.append(self._verbalizer_logprobs(logits[torch.arange(len(seqs)), last]))
            self.pairs_scored += len(seqs)
        return torch.cat(out).view(len(prompts), len(sentences), -1)


@dataclass
class _Prefix:
    cache: object  # transformers Cache holding the right-padded prefixes' keys/values
    mask: torch.Tensor  # (E, Lp) 1 for real prefix tokens
    lengths: torch.Tensor  # (E,) real prefix lengths


MIN_SHARED_TOKENS = 16  # leading prefix tokens common to a chunk's examples worth one pass of their own
LENGTH_GROUP = 8  # examples per chunk, shortest first, when the input comes after the prompt


def shared_length(seqs: list[list[int]]) -> int:
    """How many leading token ids all `seqs` share, leaving every one at least one token of its own."""
    n = min(map(len, seqs)) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        if any(q[i] != first[i] for q in seqs):
            return i
    return max(n, 0)


class CachedScorer(_BaseScorer):
    """Fast scorer: prefix KV computed once per example and reused across prompts and calls. Leading
    tokens that all examples of a chunk share (k-shot demos, a long instruction) are run once.

    Scores are memoized per (prompt, example chunk), so prompts seen before cost nothing.
    """

    def __init__(self, model, tokenizer, template, verbalizers, max_rows: int = 512,
                 example_chunk: int = 64, prefix_cache_size: int = 8, score_cache_size: int = 200_000):
        super().__init__(model, tokenizer, template, verbalizers, max_rows)
        self.example_chunk = example_chunk
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self.prefix_cache_size = prefix_cache_size
        self.score_cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.score_cache_size = score_cache_size
        self.cache_hits = 0
        # with the input after the prompt (`{prompt}\nReview: {sentence}…`) every row runs the whole input and
        # pads to the longest of its block: small chunks of similar length pad far less
        self.group_by_length = "{sentence}" in self.encoder.tail

    @torch.no_grad()
    def score(self, prompts: list[str], sentences: list[str]) -> torch.Tensor:
        """(P, E, V) full-vocabulary log-probs of each verbalizer token, for every prompt × example."""
        if self.group_by_length and len(sentences) > LENGTH_GROUP:
            order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
            grouped = self._score_chunks(prompts, [sentences[i] for i in order], LENGTH_GROUP)
            scores = torch.empty_like(grouped)
            scores[:, order] = grouped
            return scores
        return self._score_chunks(prompts, sentences, self.example_chunk)

    def _score_chunks(self, prompts: list[str], sentences: list[str], chunk_size: int) -> torch.Tensor:
        chunks = []
        for c in range(0, len(sentences), chunk_size):
            chunk = sentences[c:c + chunk_size]
            key = chunk_key(chunk)
            todo = list(dict.fromkeys(p for p in prompts if (p, key) not in self.score_cache))
            self.cache_hits += len(prompts) - len(todo)
            if todo:
                prefix = self._prefix(chunk, key)
                rows_per_prompt = len(chunk)
                step = max(1, self.max_rows // rows_per_prompt)
                for i in range(0, len(todo), step):
                    part = todo[i:i + step]
                    scores = self._score_continuations(part, chunk, prefix)
                    for p, s in zip(part, scores):
                        self._remember((p, key), s)
            chunks.append(torch.stack([self.score_cache[(p, key)] for p in prompts]))
        return torch.cat(chunks, dim=1)

    def _remember(self, key, value):
        self.score_cache[key] = value
        if len(self.score_cache) > self.score_cache_size:
            self.score_cache.popitem(last=False)

    def _prefix(self, sentences: list[str], key: str) -> _Prefix:
        if key in self._prefixes:
            self._prefixes.move_to_end(key)
            return self._prefixes[key]
        seqs = [self.encoder.encode_prefix(s) for s in sentences]
        shared = shared_length(seqs)
        cache = None
        if shared >= MIN_SHARED_TOKENS:  # e.g. k-shot demos: their keys/values are computed once, not per example
            out = self.model.base_model(input_ids=torch.tensor([seqs[0][:shared]], device=self.device),
                                        use_cache=True)
            cache = returned_cache(out)
            cache.batch_select_indices(torch.zeros(len(seqs), dtype=torch.long, device=self.device))
        else:
            shared = 0
        tails, tail_mask, tail_lengths = right_pad([q[shared:] for q in seqs], self.pad_id)
        mask = torch.cat([torch.ones(len(seqs), shared, dtype=tail_mask.dtype), tail_mask], dim=1)
        positions = torch.arange(shared, shared + tails.shape[1]).expand_as(tails)
        out = self.model.base_model(input_ids=tails.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=positions.to(self.device), use_cache=True,
                                    **cache_kwargs(self.model.base_model, cache))
        prefix = _Prefix(returned_cache(out), mask, tail_lengths + shared)
        self._prefixes[key] = prefix
        if len(self._prefixes) > self.prefix_cache_size:
            self._prefixes.popitem(last=False)
        return prefix

    def continuation_batch(self, prompts: list[str], sentences: list[str], prefix_lengths: torch.Tensor):
        """The host-side inputs of one block, on the CPU: ids, mask and positions (rows, width) of every
        prompt x example continuation, row r = (prompts[r // E], sentences[r % E]), left-padded so that
        every row's last token is at the last position; positions go on from each example's prefix."""
        conts = self.encoder.encode_continuations(prompts, sentences)
        if not all(conts):
            raise UserError(f"template {self.encoder.template!r} leaves nothing after the prompt "
                            "to read the label at; end it with text such as ' It was'")
        lengths = prefix_lengths.repeat(len(prompts))
        sizes = torch.tensor([len(c) for c in conts])
        limit = self.encoder.max_length
        if limit and int((lengths + sizes).max()) > limit:
            raise UserError(f"a prompt with its input is longer than the task model's context ({limit})")
        width = int(sizes.max())
        start = (width - sizes)[:, None]  # where each row's own tokens begin
        mask = torch.arange(width) >= start
        ids = torch.full((len(conts), width), self.pad_id, dtype=torch.long)
        ids[mask] = torch.tensor([t for seq in conts for t in seq], dtype=torch.long)
        positions = torch.where(mask, lengths[:, None] + torch.arange(width) - start, 0)
        return ids, mask.long(), positions

    def _score_continuations(self, prompts, sentences, prefix: _Prefix) -> torch.Tensor:
        """(P, E, V) for a block of prompts on one example chunk, in one forward pass."""
        E = len(sentences)
        ids, cont_mask, pos = self.continuation_batch(prompts, sentences, prefix.lengths)
        index = torch.arange(E).repeat(len(prompts))
        cache = copy.copy(prefix.cache)
        cache.layers = [copy.copy(layer) for layer in prefix.cache.layers]
        cache.batch_select_indices(index.to(self.device))
        mask = torch.cat([prefix.mask[index], cont_mask], dim=1)
        hidden = self.model.base_model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device), use_cache=True, **cache_kwargs(self.model.base_model, cache),
        ).last_hidden_state[:, -1]  # (rows, d): only the last position goes through the head
        logits = lm_logits(self.model, hidden)
        self.pairs_scored += len(ids)
        return self._verbalizer_logprobs(logits).view(len(prompts), E, -1)


class MaskedScorer(_BaseScorer):
    """Scorer for a masked task LM (BERT, RoBERTa, …): the verbalizer is read at a mask token put
    where a causal LM would write the next token, RLPrompt's `{sentence} {prompt} <mask> .`.

    The model is bidirectional, so the sentence's states depend on the prompt: every pair is one
    full sequence (no prefix cache); prompts already scored come from a memo.
    """

    def __init__(self, model, tokenizer, template, verbalizers, max_rows: int = 256):
        super().__init__(model, tokenizer, template, verbalizers, max_rows)
        if tokenizer.mask_token is None:
            raise UserError("the masked task model's tokenizer has no mask token")
        self.score_cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    def text(self, prompt: str, sentence: str) -> str:
        """The rendered input of a pair, with the mask token where the label is read."""
        prefix, rest = self.encoder.texts(prompt, sentence)
        text = (prefix + rest).rstrip()
        return f"{text} {self.tokenizer.mask_token} ."

    @torch.no_grad()
    def score(self, prompts: list[str], sentences: list[str]) -> torch.Tensor:
        """(P, E, V) verbalizer log-probs at the mask position."""
        pairs = [(p, s) for p in prompts for s in sentences if (p, s) not in self.score_cache]
        pairs = list(dict.fromkeys(pairs))
        for i in range(0, len(pairs), self.max_rows):
            chunk = pairs[i:i + self.max_rows]
            enc = self.tokenizer([self.text(p, s) for p, s in chunk], padding=True, return_tensors="pt")
            if self.encoder.max_length and enc.input_ids.shape[1] > self.encoder.max_length:
                raise UserError(f"a prompt with its input is {enc.input_ids.shape[1]} tokens, longer than "
                                f"the task model's context ({self.encoder.max_length})")
            is_mask = enc.input_ids == self.tokenizer.mask_token_id
            rows, cols = is_mask.nonzero(as_tuple=True)
            if len(rows) != len(chunk) or not torch.equal(rows, torch.arange(len(chunk))):
                raise UserError("each rendered input must hold exactly one mask token; remove mask tokens "
                                "from the template, prompt and text")
            logits = self.model(**enc.to(self.device)).logits  # (N, T, vocab)
            out = self._verbalizer_logprobs(logits[rows.to(logits.device), cols.to(logits.device)])
            for pair, row in zip(chunk, out):
                self.score_cache[pair] = row
            self.pairs_scored += len(chunk)
        return torch.stack([torch.stack([self.score_cache[(p, s)] for s in sentences]) for p in prompts])


def is_masked_model(model) -> bool:
    """True for a loaded masked-LM model (an encoder with a *ForMaskedLM head)."""
    return type(model).__name__.endswith("ForMaskedLM")


def build_scorer(model, tokenizer, template: str, verbalizers: list[str], kind: str = "auto", **kw):
    """A scorer for a task LM: 'auto' (masked for masked LMs, else cached), 'cached', 'naive' or 'masked'."""
    if kind == "auto":
        kind = "masked" if is_masked_model(model) else "cached"
    if kind == "masked":
        return MaskedScorer(model, tokenizer, template, verbalizers, **kw)
    if kind == "naive":
        return NaiveScorer(model, tokenizer, template, verbalizers, **kw)
    if kind == "cached":
        return CachedScorer(model, tokenizer, template, verbalizers, **kw)
    raise UserError(f"unknown scorer {kind!r}; use auto, cached, naive or masked")
