"""LLM-based prompt search in the style of APE (Zhou et al., 2022).

An instruct LM writes candidate instructions from input-output pairs of the training set; every
candidate is scored on train (RLPrompt's reward, the quantity searched on); the pool is pruned to its
top fraction; the survivors are paraphrased by the same LM to refill the pool; repeat until the pair
budget is spent. The best survivor of each round is scored on dev, and the final prompt is the best
on dev (see PromptSearch).

The writer is the embedded SmolLM2-135M-Instruct by default (its chat template, `generate()` with
sampling). A 135M model writes rough instructions, so every output is cleaned: first line, common
lead-ins ("The instruction is to", "Instruction:") and quotes removed, first sentence, word-capped.
"""

from __future__ import annotations

import math
import random
import re

import torch

from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult, register
from rlprompt.methods.budget import PromptSearch
from rlprompt.methods.options import option
from rlprompt.bookkeeping import PromptRecord

INDUCE = ("I gave a friend an instruction and some inputs. The friend read the instruction and wrote "
          "an output for every one of the inputs. Here are the input-output pairs:\n\n{pairs}\n\n"
          "What was the instruction? Answer with the instruction only, in one sentence.")
PARAPHRASE = ("Generate a variation of the following instruction while keeping the semantic meaning."
              "\n\nInput: {prompt}\n\nAnswer with the new instruction only.")
LEAD_INS = re.compile(
    r"^\s*(?:here(?:'s| is) (?:a |the )?[\w\s-]*?:|(?:the )?(?:new |original |possible )?instructions?"
    r"(?: (?:is|was|would be))?(?: to)?\s*:?|new version:|variation:|answer:|output:|input:|"
    r"sure[,!.]?)\s*", re.IGNORECASE)


def clean_instruction(text: str, max_words: int = 16) -> str:
    """One usable prompt line from raw LM output: first non-empty line, lead-ins and quotes stripped,
    first sentence kept, at most `max_words` words. '' when nothing usable is left."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    for _ in range(3):
        line = LEAD_INS.sub("", line, count=1)
    line = line.strip().strip("\"'`*#-").strip()
    sentence = re.match(r"(.+?[.?!])(?:\s|$)", line)
    if sentence:
        line = sentence.group(1)
    words = line.split()[:max_words]
    line = " ".join(words).strip("\"'`*").strip()
    if line.count('"') % 2:  # a quote opened and never closed
        line = " ".join(line.replace('"', " ").split())
    return line if len(line) >= 3 else ""


class InstructionWriter:
    """Writes and paraphrases instructions with an instruct LM (chat template + sampling), deterministic
    under its seed: every call forks the RNG and seeds it with (seed, call number)."""

    def __init__(self, model, tokenizer, seed: int = 13, max_new_tokens: int = 32,
                 temperature: float = 0.9, top_p: float = 0.95, max_words: int = 16, cpu_threads: int = 1):
        self.model, self.tokenizer = model, tokenizer
        self.seed, self.calls = seed, 0
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.max_words, self.cpu_threads = max_words, cpu_threads

    def _chat_ids(self, message: str) -> list[int]:
        chat = [{"role": "user", "content": message}]
        if getattr(self.tokenizer, "chat_template", None):
            return list(self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"])
        return self.tokenizer(message + "\n", add_special_tokens=True).input_ids

    @torch.no_grad()
    def generate(self, messages: list[str], n_each: int) -> list[list[str]]:
        """`n_each` cleaned samples for each chat message (one left-padded batch)."""
        if not messages or n_each < 1:
            return [[] for _ in messages]
        rows = [self._chat_ids(m) for m in messages]
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        device = next(self.model.parameters()).device
        self.calls += 1
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed * 100_003 + self.calls)
            if device.type == "cpu":
                # Decoding is many tiny ops: on a busy CPU a second OpenMP thread made it 5-8x slower.
                torch.set_num_threads(self.cpu_threads)
            try:
                out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                          do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                          max_new_tokens=self.max_new_tokens, num_return_sequences=n_each,
                                          pad_token_id=pad)
            finally:
                torch.set_num_threads(threads)
        texts = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        cleaned = [clean_instruction(t, self.max_words) for t in texts]
        return [cleaned[i * n_each:(i + 1) * n_each] for i in range(len(messages))]

    def induce(self, demos: list[tuple[str, str]], n: int) -> list[str]:
        """`n` instructions written from (input, output) demonstrations."""
        pairs = "\n\n".join(f"Input: {x}\nOutput: {y.strip()}" for x, y in demos)
        return self.generate([INDUCE.format(pairs=pairs)], n)[0]

    def paraphrase(self, prompts: list[str], n_each: int) -> list[list[str]]:
        """`n_each` paraphrases of every prompt."""
        return self.generate([PARAPHRASE.format(prompt=p) for p in prompts], n_each)


def load_writer(ctx: MethodContext) -> InstructionWriter:
    """The writer given in ctx.options['writer'], else one on ctx.policy_model (ctx.options['writer_lm']
    may hold an already loaded (model, tokenizer))."""
    if ctx.options.get("writer") is not None:
        return ctx.options["writer"]
    if ctx.options.get("writer_lm") is not None:
        model, tokenizer = ctx.options["writer_lm"]
    else:
        from rlprompt.models import load_lm

        model, tokenizer = load_lm(ctx.policy_model, ctx.device, "fp32")
    return InstructionWriter(model, tokenizer, ctx.seed, max_new_tokens=option(ctx, "max_new_tokens", 32),
                             temperature=option(ctx, "temperature", 0.9), max_words=option(ctx, "max_words", 16),
                             cpu_threads=option(ctx, "cpu_threads", 1))


def prune(records: list[PromptRecord], keep_frac: float) -> list[PromptRecord]:
    """The top `keep_frac` of the records by train reward (at least one), best first."""
    ranked = sorted(records, key=lambda r: -r.train_reward)
    return ranked[:max(1, math.ceil(keep_frac * len(ranked)))]


@register("ape")
def run(ctx: MethodContext) -> MethodResult:
    """APE-style search: induce, score on train, prune to the top fraction, paraphrase, repeat.

    Options: pool_size (10), keep_frac (0.5), n_induce (8), n_demos (6), dev_per_round (1),
    max_rounds (1000), init_prompts (a '|'-separated list added to the initial pool), and the writer's
    max_new_tokens (32), temperature (0.9), max_words (16), cpu_threads (1: CPU threads while generating).
    """
    pool_size, keep_frac = option(ctx, "pool_size", 10), option(ctx, "keep_frac", 0.5)
    dev_per_round, max_rounds = option(ctx, "dev_per_round", 1), option(ctx, "max_rounds", 1000)
    rng = random.Random(ctx.seed)
    writer = load_writer(ctx)
    search = PromptSearch(ctx, desc="ape")

    demos = rng.sample(ctx.task.train, min(option(ctx, "n_demos", 6), len(ctx.task.train)))
    demo_pairs = [(e.text, ctx.task.verbalizers[e.label]) for e in demos]
    seeds = [ctx.task.manual_prompt] + [p for p in option(ctx, "init_prompts", "").split("|") if p.strip()]
    pool = list(dict.fromkeys(p for p in seeds + writer.induce(demo_pairs, option(ctx, "n_induce", 8)) if p))
    rounds, stop = [], "budget spent"
    try:
        for round_ in range(max_rounds):
            search.round = round_
            records = search.score_train(pool)
            survivors = prune(records, keep_frac)
            rounds.append({"pool": [r.prompt for r in records], "train_reward": [r.train_reward for r in records],
                           "survivors": [r.prompt for r in survivors]})
            to_dev = [r.prompt for r in survivors if r.dev_acc is None][:dev_per_round]
            if to_dev:
                search.score_dev(to_dev)
            need = pool_size - len(survivors)
            per = math.ceil(need / len(survivors)) if need > 0 else 0
            children = [c for group in writer.paraphrase([r.prompt for r in survivors], per) for c in group]
            children = [c for c in dict.fromkeys(children) if c not in search.leaderboard.records][:need]
            if not children and len(rounds) > 1 and not rounds[-2].get("children"):
                stop = "no new candidates for two rounds"
                break
            rounds[-1]["children"] = children
            pool = [r.prompt for r in survivors] + children
        else:
            stop = f"max_rounds ({max_rounds}) reached"
    except BudgetExhausted:
        pass
    return search.finish("ape", extra={"rounds": rounds, "stop_reason": stop})
