"""Evolutionary prompt search with GrIPS-style edits (Prasad et al., 2022), crossover and elitism.

A prompt is a list of words. Mutation applies one edit: insert a word, delete a phrase (1-3 words),
substitute a word, or swap two words. Inserted and substituted words come from the seed prompts and
the training inputs. Crossover joins the head of one parent to the tail of another. Each generation
keeps the `elite` best prompts by train reward unchanged and fills the rest of the population with
children of tournament-selected parents, so the best train reward never goes down. The best new
prompt of each generation is scored on dev; the final prompt is the best on dev (see PromptSearch).
"""

from __future__ import annotations

import random

from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult, register
from rlprompt.methods.budget import PromptSearch
from rlprompt.methods.options import option
from rlprompt.bookkeeping import PromptRecord

EDITS = ("insert", "delete", "substitute", "swap")


def mutate(words: list[str], rng: random.Random, vocab: list[str], max_words: int = 24) -> list[str]:
    """One random edit of `words` (never empty, at most `max_words` words)."""
    ops = [op for op in EDITS if (op != "delete" or len(words) > 1) and (op != "swap" or len(words) > 1)
           and (op != "insert" or len(words) < max_words) and (op != "substitute" or words)]
    op = rng.choice(ops)
    out = list(words)
    if op == "insert":
        out.insert(rng.randint(0, len(out)), rng.choice(vocab))
    elif op == "delete":
        span = rng.randint(1, min(3, len(out) - 1))
        start = rng.randint(0, len(out) - span)
        del out[start:start + span]
    elif op == "substitute":
        out[rng.randrange(len(out))] = rng.choice(vocab)
    else:
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def crossover(a: list[str], b: list[str], rng: random.Random, max_words: int = 24) -> list[str]:
    """Head of `a` + tail of `b` at random cut points (never empty, at most `max_words` words)."""
    child = a[:rng.randint(0, len(a))] + b[rng.randint(0, len(b)):]
    return (child or list(a))[:max_words]


def tournament(records: list[PromptRecord], rng: random.Random, k: int = 3) -> PromptRecord:
    """The best of `k` records drawn at random (by train reward)."""
    return max(rng.sample(records, min(k, len(records))), key=lambda r: r.train_reward)


def word_vocab(texts: list[str]) -> list[str]:
    """Distinct words of `texts`, in first-seen order (deterministic)."""
    return list(dict.fromkeys(w for t in texts for w in t.split()))


@register("evo")
def run(ctx: MethodContext) -> MethodResult:
    """Evolutionary search. Options: pop_size (8), elite (2), tournament (3), crossover_rate (0.5),
    max_words (24), max_generations (1000), patience (20 generations without a never-scored child),
    dev_per_generation (1), init_prompts ('|'-separated, added to the manual prompt as seeds)."""
    pop_size, elite = option(ctx, "pop_size", 8), option(ctx, "elite", 2)
    k, rate = option(ctx, "tournament", 3), option(ctx, "crossover_rate", 0.5)
    max_words, patience = option(ctx, "max_words", 24), option(ctx, "patience", 20)
    dev_per_gen = option(ctx, "dev_per_generation", 1)
    rng = random.Random(ctx.seed)
    seeds = [p for p in [ctx.task.manual_prompt] + option(ctx, "init_prompts", "").split("|") if p.strip()]
    seeds = seeds or [""]  # no manual prompt: grow from the empty prompt by insertions
    vocab = word_vocab(seeds + [e.text for e in ctx.task.train])
    search = PromptSearch(ctx, desc="evo")

    population = list(dict.fromkeys(seeds))
    for _ in range(50 * pop_size):
        if len(population) >= pop_size:
            break
        child = " ".join(mutate(rng.choice(seeds).split(), rng, vocab, max_words))
        if child not in population:
            population.append(child)
    history, stop, stale = [], "budget spent", 0
    try:
        records = search.score_train(population)
        for generation in range(1, option(ctx, "max_generations", 1000) + 1):
            records.sort(key=lambda r: -r.train_reward)
            history.append(records[0].train_reward)
            to_dev = [r.prompt for r in records if r.dev_acc is None][:dev_per_gen]
            if to_dev:
                search.score_dev(to_dev)
            search.round = generation
            elites = records[:elite]
            children, fresh = [], 0
            for _ in range(50 * pop_size):
                if len(children) >= pop_size - len(elites):
                    break
                words = tournament(records, rng, k).prompt.split()
                if rng.random() < rate:
                    words = crossover(words, tournament(records, rng, k).prompt.split(), rng, max_words)
                text = " ".join(mutate(words, rng, vocab, max_words))
                if text not in children and all(text != e.prompt for e in elites):
                    children.append(text)
                    fresh += text not in search.leaderboard.records
            stale = 0 if fresh else stale + 1
            if stale >= patience:
                stop = f"no new prompt for {patience} generations"
                break
            records = elites + search.score_train(children)
        else:
            stop = "max_generations reached"
    except BudgetExhausted:
        pass
    return search.finish("evo", extra={"best_train_reward_by_generation": history, "stop_reason": stop})
