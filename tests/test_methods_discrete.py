"""The discrete baselines on toy task LMs: the pair budget, APE's pruning, evolution's elitism and
progress, greedy deletion within tolerance, the manual row and the budgeted RL row."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rlprompt.errors import UserError
from rlprompt.methods import BudgetExhausted, MethodContext
from rlprompt.methods import ape, deletion, evolution, manual, rl
from rlprompt.methods.budget import DISTINCT_PAIRS, BudgetedScorer, PairLedger, PromptSearch
from rlprompt.methods.options import option
from rlprompt.scorer import CachedScorer
from rlprompt.tasks import Example, Task
from tests.rl_helpers import ParityTaskLM, fresh_tiny_lm


def toy_task(n=8, manual_prompt="Overall, what did the reviewer think of the movie?"):
    """A two-label task whose texts are all distinct (train/dev/test prefixes)."""
    make = lambda split: [Example(f"{split} example {i}", i % 2) for i in range(n)]  # noqa: E731
    return Task("toy", ["negative", "positive"], [" terrible", " great"], "{sentence} {prompt} It was",
                train=make("train"), dev=make("dev"), test=make("test"), manual_prompt=manual_prompt)


def parity_ctx(tokenizer, budget, task=None, **options):
    """A MethodContext on the parity toy LM (more even token ids in the prompt = more accurate)."""
    task = task or toy_task()
    scorer = ParityTaskLM(tokenizer, task.train + task.dev + task.test, sharpness=4.0)
    return MethodContext(task=task, task_model=None, task_tokenizer=tokenizer, scorer=scorer,
                         pair_budget=budget, seed=13, options=options)


def even_share(tokenizer, prompt):
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    return sum(i % 2 == 0 for i in ids) / len(ids)


# ---- the budget -------------------------------------------------------------------------------

def test_budgeted_scorer_charges_new_pairs_once_and_stops_before_the_budget(tiny_lm):
    model, tok = tiny_lm
    inner = CachedScorer(model, tok, "{sentence} {prompt} It was", [" terrible", " great"])
    ledger = PairLedger(12)
    scorer = BudgetedScorer(inner, ledger, DISTINCT_PAIRS)
    sentences = ["a fine film", "a dull film", "so so", "loved it"]
    first = scorer.score(["Rating:", "Verdict:"], sentences)
    assert ledger.used == inner.pairs_scored == 8
    again = scorer.score(["Verdict:", "Rating:"], sentences)  # memo hits are free
    assert torch.equal(again[0], first[1]) and ledger.used == inner.pairs_scored == 8
    with pytest.raises(BudgetExhausted):
        scorer.score(["New one", "Another"], sentences)  # 8 new pairs, 4 left: nothing is scored
    assert ledger.used == inner.pairs_scored == 8
    scorer.score(["New one"], sentences)
    assert ledger.used == inner.pairs_scored == 12 and ledger.left == 0
    assert scorer.verbalizer_ids is inner.verbalizer_ids  # other attributes pass through


def test_prompt_search_scores_what_fits_then_stops(smol_tokenizer):
    ctx = parity_ctx(smol_tokenizer, budget=3 * 8 + 2 * 8)  # 3 train scorings + the 2-prompt dev reserve
    search = PromptSearch(ctx)
    with pytest.raises(BudgetExhausted):
        search.score_train(["one", "two", "three", "four", "five"])
    assert sorted(search.leaderboard.records) == ["one", "three", "two"]
    assert search.ledger.used == 24
    result = search.finish("toy")  # the reserve scores the 2 best-by-train prompts on dev
    assert result.pairs_scored == 40 <= ctx.pair_budget
    dev_scored = [r for r in search.leaderboard.records.values() if r.dev_acc is not None]
    assert len(dev_scored) == 2 and result.prompt == max(dev_scored, key=lambda r: r.dev_acc).prompt
    with pytest.raises(UserError, match="too small"):
        PromptSearch(parity_ctx(smol_tokenizer, budget=16))


def test_option_casts_cli_strings():
    ctx = MethodContext(None, None, None, None, 1, options={"n": "3", "f": "0.5", "b": "true", "s": "x"})
    assert option(ctx, "n", 1) == 3 and option(ctx, "f", 0.1) == 0.5 and option(ctx, "b", False) is True
    assert option(ctx, "s", "") == "x" and option(ctx, "missing", 7) == 7
    with pytest.raises(UserError, match="n='3'"):
        option(MethodContext(None, None, None, None, 1, options={"n": "3"}), "n", False)


# ---- APE --------------------------------------------------------------------------------------

class ListWriter:
    """A deterministic stand-in for the instruct LM: hands out the next words of a fixed list."""

    def __init__(self, seed=0):
        self.rng = random.Random(seed)
        self.words = ["zero", "two", "four", "six", "eight", "ten", "review", "film", "movie", "story",
                      "plot", "actor", "scene", "verdict", "rating", "critic"]
        self.calls = []

    def induce(self, demos, n):
        self.calls.append(("induce", len(demos), n))
        return [" ".join(self.rng.sample(self.words, 3)) for _ in range(n)]

    def paraphrase(self, prompts, n_each):
        self.calls.append(("paraphrase", list(prompts), n_each))
        return [[self._edit(p) for _ in range(n_each)] for p in prompts]

    def _edit(self, prompt):
        words = prompt.split()[:5]
        words.insert(self.rng.randint(0, len(words)), self.rng.choice(self.words))
        if len(words) > 2 and self.rng.random() < 0.5:
            del words[self.rng.randrange(len(words))]
        return " ".join(words)


def test_ape_pruning_keeps_the_best_candidates(smol_tokenizer):
    records = [ape.PromptRecord(f"p{i}", float(r), 0.5, 0) for i, r in enumerate([3, -1, 7, 0, 5, 2])]
    assert [r.prompt for r in ape.prune(records, 0.5)] == ["p2", "p4", "p0"]
    assert [r.prompt for r in ape.prune(records, 0.01)] == ["p2"]

    ctx = parity_ctx(smol_tokenizer, budget=1200, writer=ListWriter(), pool_size=8)
    result = ape.run(ctx)
    rounds = result.extra["rounds"]
    assert len(rounds) >= 3 and result.pairs_scored <= ctx.pair_budget
    assert result.extra["stop_reason"] == "budget spent"
    assert rounds[0]["pool"][0] == ctx.task.manual_prompt
    for rnd in rounds:  # survivors are exactly the top half of each round's pool by train reward
        reward = dict(zip(rnd["pool"], rnd["train_reward"]))
        assert len(rnd["survivors"]) == max(1, -(-len(rnd["pool"]) // 2))
        assert rnd["survivors"] == sorted(rnd["pool"], key=lambda p: -reward[p])[:len(rnd["survivors"])]
    best_by_round = [max(rnd["train_reward"]) for rnd in rounds]
    assert best_by_round == sorted(best_by_round)  # the survivors carry the best forward
    assert max(r for rnd in rounds for r in rnd["train_reward"]) == best_by_round[-1]
    assert 0 <= result.dev_acc <= 1 and result.test_acc is not None
    assert result.curve and all(b[1] >= a[1] for a, b in zip(result.curve, result.curve[1:]))
    again = ape.run(parity_ctx(smol_tokenizer, budget=1200, writer=ListWriter(), pool_size=8))
    assert (again.prompt, again.extra["rounds"]) == (result.prompt, rounds)


def test_clean_instruction_makes_one_short_line():
    raw = {
        'The instruction is to "Write the sentiment of the review."\nMore text': "Write the sentiment of the review.",
        "Here's a possible answer: Instruction: Include an image of a person wearing a hat. Please": (
            "Include an image of a person wearing a hat."),
        "Original Instruction: Overall, What did the reviewer think of the movie?\n\nThe new": (
            "Overall, What did the reviewer think of the movie?"),
        "\n\n  Rate the movie review as great or terrible": "Rate the movie review as great or terrible",
        "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen x y":
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
        'The output was " very short and very short.': "The output was very short and very short.",
        "Instruction:": "",
        "\n\n": "",
    }
    for text, want in raw.items():
        assert ape.clean_instruction(text) == want, text


def test_ape_with_a_tiny_instruct_lm_writes_clean_candidates(smol_tokenizer):
    lm = fresh_tiny_lm(smol_tokenizer, seed=3)
    ctx = parity_ctx(smol_tokenizer, budget=100, writer_lm=(lm, smol_tokenizer), max_new_tokens=8,
                     n_induce=4, pool_size=4)
    result = ape.run(ctx)
    assert result.pairs_scored <= 100
    prompts = [p for rnd in result.extra["rounds"] for p in rnd["pool"]]
    assert len(prompts) > 1
    assert all("\n" not in p and len(p.split()) <= 16 and p.strip() == p for p in prompts)
    again = ape.run(parity_ctx(smol_tokenizer, budget=100, writer_lm=(lm, smol_tokenizer), max_new_tokens=8,
                               n_induce=4, pool_size=4))
    assert again.extra["rounds"] == result.extra["rounds"]  # generation is seeded


# ---- evolution --------------------------------------------------------------------------------

def test_mutation_and_crossover_stay_in_bounds():
    rng = random.Random(0)
    vocab = ["a", "b", "c"]
    for _ in range(300):
        words = ["w"] * rng.randint(1, 5)
        out = evolution.mutate(words, rng, vocab, max_words=5)
        assert 1 <= len(out) <= 5 and out != [] and (out != words or len(set(words)) == 1)
        assert 1 <= len(evolution.crossover(words, ["x", "y"], rng, max_words=5)) <= 5
    assert evolution.mutate([], rng, vocab) in (["a"], ["b"], ["c"])  # only insertion applies


def test_evolution_keeps_its_best_and_improves_on_the_toy_score(smol_tokenizer):
    ctx = parity_ctx(smol_tokenizer, budget=2000)
    result = evolution.run(ctx)
    history = result.extra["best_train_reward_by_generation"]
    assert len(history) >= 10 and result.extra["stop_reason"] == "budget spent"
    assert history == sorted(history), "elitism: the best train reward never goes down"
    assert history[-1] > history[0] + 10
    assert even_share(smol_tokenizer, result.prompt) > even_share(smol_tokenizer, ctx.task.manual_prompt)
    assert result.pairs_scored <= ctx.pair_budget
    assert evolution.run(parity_ctx(smol_tokenizer, budget=2000)).prompt == result.prompt  # seeded


def test_evolution_stops_when_nothing_new_can_be_made(smol_tokenizer):
    task = toy_task(manual_prompt="same")
    task.train = [Example("same", 0)]  # the only word the edits can use
    ctx = parity_ctx(smol_tokenizer, budget=10_000, task=task, max_words=1, patience=3)
    result = evolution.run(ctx)
    assert result.extra["stop_reason"] == "no new prompt for 3 generations" and result.prompt == "same"


# ---- deletion ---------------------------------------------------------------------------------

class KeywordTaskLM:
    """Toy task LM: an example is answered correctly iff the prompt holds its keyword."""

    def __init__(self, keyword_of: dict[str, str], label_of: dict[str, int]):
        self.keyword_of, self.label_of = keyword_of, label_of

    def score(self, prompts, sentences):
        out = torch.empty(len(prompts), len(sentences), 2)
        for p, prompt in enumerate(prompts):
            for e, s in enumerate(sentences):
                gold = self.label_of[s]
                right = self.keyword_of[s] in prompt.split()
                out[p, e, gold], out[p, e, 1 - gold] = (0.9, 0.1) if right else (0.2, 0.8)
        return out.log()


def keyword_ctx(tokenizer, budget, **options):
    task = toy_task(n=4, manual_prompt="please alpha tell us beta the answer")
    examples = task.train + task.dev + task.test
    lm = KeywordTaskLM({e.text: ("alpha", "beta")[i % 4 < 2] for i, e in enumerate(examples)},
                       {e.text: e.label for e in examples})
    return MethodContext(task=task, task_model=None, task_tokenizer=tokenizer, scorer=lm, pair_budget=budget,
                         seed=13, options=options)


def test_deletion_shortens_while_dev_stays_within_tolerance(smol_tokenizer):
    ctx = keyword_ctx(smol_tokenizer, budget=10_000)
    result = deletion.run(ctx)
    assert result.prompt == "alpha beta" and result.dev_acc == 1.0 == result.extra["start_dev_acc"]
    path = result.extra["tradeoff"]
    assert [p["words"] for p in path] == sorted((p["words"] for p in path), reverse=True)
    assert path[-1]["words"] < path[0]["words"] and all(p["dev_acc"] == 1.0 for p in path)
    assert result.prompt_tokens < path[0]["tokens"]

    loose = deletion.run(keyword_ctx(smol_tokenizer, budget=10_000, tolerance="0.5", max_span="1"))
    assert loose.prompt in ("alpha", "beta") and loose.dev_acc == 0.5  # one keyword may go at tolerance 0.5
    assert all(p["dev_acc"] >= 0.5 for p in loose.extra["tradeoff"])
    assert loose.extra["stop_reason"] == "reached min_words (1)"


def test_deletion_stops_at_its_budget(smol_tokenizer):
    ctx = keyword_ctx(smol_tokenizer, budget=4 * 5)  # the start prompt and 4 candidates
    result = deletion.run(ctx)
    assert result.extra["stop_reason"] == "budget spent" and result.pairs_scored <= 20
    assert result.dev_acc >= result.extra["start_dev_acc"]
    with pytest.raises(UserError, match="cannot score the starting prompt"):
        deletion.run(keyword_ctx(smol_tokenizer, budget=3))


# ---- manual and RL ----------------------------------------------------------------------------

def test_manual_row_scores_dev_and_test_only(smol_tokenizer):
    ctx = parity_ctx(smol_tokenizer, budget=100)
    result = manual.run(ctx)
    assert result.prompt == ctx.task.manual_prompt and result.pairs_scored == len(ctx.task.dev)
    assert result.test_acc is not None and result.extra["train_reward"] is None
    with pytest.raises(UserError, match="cannot score the prompt on dev"):
        manual.run(parity_ctx(smol_tokenizer, budget=5))


@pytest.mark.slow
def test_rl_row_derives_its_steps_from_the_budget(smol_tokenizer, tmp_path):
    policy_lm = fresh_tiny_lm(smol_tokenizer, seed=1)
    opts = dict(policy_lm=(policy_lm, smol_tokenizer), prompts_per_step="4", prompt_length="3", top_k="32",
                adaptor_hidden="32", out_dir=str(tmp_path / "rl"))
    budget = 2 * 8 + 5 * 4 * 8 + 7  # dev reserve + 5 steps of 4 prompts on 8 train examples + a remainder
    ctx = parity_ctx(smol_tokenizer, budget=budget, **opts)
    result = rl.run(ctx)
    assert result.extra["steps_planned"] == 5 and result.pairs_scored <= budget
    assert result.extra["steps"] <= 5 and result.prompt is not None and result.dev_acc is not None
    assert (tmp_path / "rl" / "checkpoint.pt").exists()
    with pytest.raises(UserError, match="less than one RL step"):
        rl.run(parity_ctx(smol_tokenizer, budget=2 * 8 + 31, **opts))


def test_rl_row_loads_a_finished_run(tiny_lm, smol_tokenizer, tmp_path):
    from rlprompt.build import build_policy_and_envs
    from rlprompt.config import TrainConfig
    from rlprompt.trainer import Trainer

    model, tok = tiny_lm
    task = toy_task()
    scorer = CachedScorer(model, tok, task.template, task.verbalizers)
    cfg = TrainConfig(steps=3, prompts_per_step=4, prompt_length=3, top_k=32, adaptor_hidden=32, eval_every=2)
    policy, train_env, dev_env = build_policy_and_envs(cfg, fresh_tiny_lm(tok, 1), tok, scorer, task)
    trainer = Trainer(cfg, policy, train_env, dev_env, tmp_path)
    trainer.run(progress=False)
    best = trainer.book.leaderboard.best(1)[0]
    (tmp_path / "prompts.json").write_text(json.dumps([{"prompt": best.prompt, "dev_acc": best.dev_acc}]))
    (tmp_path / "config.json").write_text(json.dumps({"task": "toy", "seed": 13, "prompts_per_step": 4}))

    def ctx(seed):
        return MethodContext(task=task, task_model=model, task_tokenizer=tok, scorer=scorer, pair_budget=1,
                             seed=seed, options={"run": str(tmp_path)})

    pairs_in_run = scorer.pairs_scored
    result = rl.run(ctx(13))
    assert result.prompt == best.prompt and result.pairs_scored == pairs_in_run  # counted from the run's memo
    assert result.dev_acc == best.dev_acc and result.test_acc is not None
    best_dev = [h["charts/best_dev_acc"] for h in trainer.book.history if "charts/best_dev_acc" in h]
    assert result.curve == [(2 * 4 * 8, best_dev[0]), (3 * 4 * 8, best_dev[1])]  # evaluations at steps 2, 3
    assert result.extra["steps"] == 3
    with pytest.raises(UserError, match="seed 13"):
        rl.run(ctx(21))
