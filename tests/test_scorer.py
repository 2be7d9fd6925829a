"""The cached scorer agrees with the naive reference; bf16 keeps fp32's labels; accuracy helpers."""

from __future__ import annotations

import pytest
import torch

from rlprompt.evaluation import accuracy, evaluate_prompts, prefill_score_memo, score_examples
from rlprompt.scorer import CachedScorer, NaiveScorer, PromptEncoder, build_scorer, right_pad
from rlprompt.tasks import Example, load_task

SENTENCES = [
    "a gripping , beautifully acted film .",
    "dull and lifeless .",
    "i do n't mean that in a good way , and the plot drags on for far too long .",
    '"bad" is the word .',
    "an exhilarating ride",
]
PROMPTS = [
    "",  # no prompt
    "Great",
    "Overall, what did the reviewer think of the movie?",
    "  spaced   out  prompt ",
    "movie review sentiment classifier output:",
]
TEMPLATES = [
    "{sentence} {prompt} It was",
    "{prompt} {sentence} It was",  # prompt before the sentence: nothing cached before it
    "Review: {sentence}\n{prompt} Sentiment:",
    "{prompt}\n{sentence} All in all, it was",
]
VERBALIZERS = [" terrible", " great"]


@pytest.mark.parametrize("template", TEMPLATES)
def test_cached_equals_naive_on_tiny_lm(tiny_lm, template):
    model, tok = tiny_lm
    # small chunks and row limits: several example chunks and several forward passes per chunk
    cached = CachedScorer(model, tok, template, VERBALIZERS, max_rows=8, example_chunk=2)
    naive = NaiveScorer(model, tok, template, VERBALIZERS, max_rows=7)
    got, ref = cached.score(PROMPTS, SENTENCES), naive.score(PROMPTS, SENTENCES)
    assert got.shape == ref.shape == (len(PROMPTS), len(SENTENCES), 2)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    # full-vocabulary log-probs: the two verbalizers hold less than all the mass
    assert (got.logsumexp(-1) < 0).all()
    assert cached.pairs_scored == naive.pairs_scored == len(PROMPTS) * len(SENTENCES)


def test_input_after_the_prompt_is_scored_in_length_groups_and_equals_naive(tiny_lm):
    from rlprompt.scorer import LENGTH_GROUP

    model, tok = tiny_lm
    sentences = [f"{s} {i}" * (1 + i % 3) for i, s in enumerate(SENTENCES * 4)]  # more than one group, mixed lengths
    assert len(sentences) > LENGTH_GROUP
    cached = CachedScorer(model, tok, TEMPLATES[1], VERBALIZERS)
    assert cached.group_by_length and not CachedScorer(model, tok, TEMPLATES[0], VERBALIZERS).group_by_length
    got = cached.score(PROMPTS, sentences)
    ref = NaiveScorer(model, tok, TEMPLATES[1], VERBALIZERS).score(PROMPTS, sentences)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)  # in the callers' order
    torch.testing.assert_close(cached.score(PROMPTS[:2], sentences), ref[:2], atol=1e-4, rtol=0)  # memo hits


@pytest.mark.parametrize("template", TEMPLATES + ["Q: {prompt} A: {sentence} so it was"])
def test_batched_continuations_equal_pair_by_pair(smol_tokenizer, template):
    encoder = PromptEncoder(smol_tokenizer, template)
    sentences = SENTENCES + ["ends in a space ", ""]  # the gap before the prompt can depend on the sentence
    one_by_one = [encoder.encode_continuation(p, s) for p in PROMPTS for s in sentences]
    assert encoder.encode_continuations(PROMPTS, sentences) == one_by_one


def test_prompts_of_different_lengths_in_one_batch_match_alone(tiny_lm):
    model, tok = tiny_lm
    scorer = CachedScorer(model, tok, TEMPLATES[0], VERBALIZERS)
    together = scorer.score(PROMPTS, SENTENCES)
    for i, p in enumerate(PROMPTS):
        alone = CachedScorer(model, tok, TEMPLATES[0], VERBALIZERS).score([p], SENTENCES)
        torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=0)


def test_score_cache_hit_gives_the_same_scores(tiny_lm):
    model, tok = tiny_lm
    scorer = CachedScorer(model, tok, TEMPLATES[0], VERBALIZERS, example_chunk=3)
    first = scorer.score(PROMPTS[:3], SENTENCES)
    scored = scorer.pairs_scored
    again = scorer.score(list(reversed(PROMPTS[:3])), SENTENCES)  # all hits, another order
    assert scorer.pairs_scored == scored and scorer.cache_hits > 0
    torch.testing.assert_close(again, first.flip(0), atol=0, rtol=0)
    mixed = scorer.score([PROMPTS[3], PROMPTS[0]], SENTENCES)  # one new prompt, one hit
    assert scorer.pairs_scored == scored + len(SENTENCES)
    ref = NaiveScorer(model, tok, TEMPLATES[0], VERBALIZERS).score([PROMPTS[3], PROMPTS[0]], SENTENCES)
    torch.testing.assert_close(mixed, ref, atol=1e-4, rtol=0)


def test_build_scorer_kinds(tiny_lm):
    from rlprompt.errors import UserError

    model, tok = tiny_lm
    assert isinstance(build_scorer(model, tok, TEMPLATES[0], VERBALIZERS), CachedScorer)
    assert isinstance(build_scorer(model, tok, TEMPLATES[0], VERBALIZERS, kind="naive"), NaiveScorer)
    with pytest.raises(UserError, match="unknown scorer"):
        build_scorer(model, tok, TEMPLATES[0], VERBALIZERS, kind="fast")


def test_right_pad_keeps_lengths_and_masks_only_real_tokens():
    ids, mask, lengths = right_pad([[7, 8, 9], [], [0]], pad_id=0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]  # a real token equal to pad_id is kept
    assert lengths.tolist() == [3, 0, 1]
    assert right_pad([[], []], pad_id=2)[0].tolist() == [[2], [2]]


def test_accuracy():
    logprobs = torch.log(torch.tensor([
        [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]],
        [[0.1, 0.9], [0.1, 0.9], [0.1, 0.9], [0.1, 0.9]],
    ]))
    torch.testing.assert_close(accuracy(logprobs, [0, 1, 1, 1]), torch.tensor([0.75, 0.75]))
    with pytest.raises(ValueError):
        accuracy(logprobs, [0, 1])


def test_evaluate_prompts_in_chunks_matches_one_call(tiny_lm):
    model, tok = tiny_lm
    examples = [Example(s, i % 2) for i, s in enumerate(SENTENCES)]
    scorer = CachedScorer(model, tok, TEMPLATES[0], VERBALIZERS)
    rows = evaluate_prompts(scorer, PROMPTS, examples, chunk_size=2, progress=False)
    ref = accuracy(NaiveScorer(model, tok, TEMPLATES[0], VERBALIZERS).score(PROMPTS, SENTENCES),
                   [e.label for e in examples])
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(r["n"] == len(examples) for r in rows)
    assert [r["accuracy"] for r in rows] == pytest.approx(ref.tolist())
    assert score_examples(scorer, PROMPTS, [], progress=False).shape == (len(PROMPTS), 0, 2)


def test_score_examples_sorts_by_length_and_returns_the_examples_order(tiny_lm):
    model, tok = tiny_lm
    sentences = sorted(SENTENCES, key=len, reverse=True) + ["ok", "a much longer input than the others here"]
    scorer = CachedScorer(model, tok, TEMPLATES[0], VERBALIZERS)
    sorted_chunks = score_examples(scorer, PROMPTS, [Example(s, 0) for s in sentences], chunk_size=2,
                                   progress=False)
    ref = NaiveScorer(model, tok, TEMPLATES[0], VERBALIZERS).score(PROMPTS, sentences)
    torch.testing.assert_close(sorted_chunks, ref, atol=1e-4, rtol=0)


# --- the real SmolLM2-135M ----------------------------------------------------------------------

def test_prefilled_memo_runs_each_prefix_once_and_changes_no_score(tiny_lm, monkeypatch):
    """What finalize does before the test phase: the RL prompts and the baselines chunk by chunk, each
    chunk's prefix run once; the usual calls afterwards are memo hits with the very same scores."""
    model, tok = tiny_lm
    examples = [Example(f"review {i}: " + "quite good " * (i % 9), i % 2) for i in range(300)]
    lists = [["Rating:", "so"], ["", "What did the critic think?", "so"]]  # "so" in both, as the memo sees it

    def scorer():
        return CachedScorer(model, tok, "{sentence} {prompt} It was", [" terrible", " great"], prefix_cache_size=2)

    prefix_runs = []
    original = CachedScorer._prefix

    def counted(self, sentences, key):
        prefix_runs.append(key not in self._prefixes)
        return original(self, sentences, key)

    monkeypatch.setattr(CachedScorer, "_prefix", counted)
    plain = scorer()
    expected = [score_examples(plain, prompts, examples, progress=False) for prompts in lists]
    assert sum(prefix_runs) == 2 * 5  # 300 examples = 5 prefix chunks of 64, run again for the second list
    prefix_runs.clear()
    turned = scorer()
    prefill_score_memo(turned, lists, examples, progress=False)
    assert sum(prefix_runs) == 5 and turned.pairs_scored == plain.pairs_scored
    got = [score_examples(turned, prompts, examples, progress=False) for prompts in lists]
    assert turned.pairs_scored == plain.pairs_scored  # nothing scored twice
    for g, e in zip(got, expected):
        assert torch.equal(g, e)
    small = CachedScorer(model, tok, "{sentence} {prompt} It was", [" terrible", " great"], score_cache_size=40)
    prefill_score_memo(small, lists, examples, progress=False)  # 5 prompts x 5 sub-chunks: over half its room
    after = CachedScorer(model, tok, "{prompt} {sentence} It was", [" terrible", " great"])
    prefill_score_memo(after, lists, examples, progress=False)  # input after the prompt: no prefix to share
    assert small.pairs_scored == after.pairs_scored == 0


@pytest.mark.slow
def test_cached_equals_naive_on_smollm2_fp32(smollm, data_dir):
    model, tok = smollm
    task = load_task("sst2", data_dir)
    sentences = [e.text for e in task.dev[14:18]]  # both labels
    prompts = ["", task.manual_prompt, "Absolutely"]
    got = CachedScorer(model, tok, task.template, task.verbalizers).score(prompts, sentences)
    ref = NaiveScorer(model, tok, task.template, task.verbalizers).score(prompts, sentences)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_bf16_keeps_fp32_labels_on_sst2_dev(smollm, data_dir):
    """bf16 predicts fp32's label on every SST-2 dev example whose fp32 margin is beyond bf16's
    rounding (0.25 nats). Within it a label may flip: on an AVX2-only CPU one pair of 64, at a
    0.10-nat fp32 margin, does. Where bf16 is emulated (~77x slower than fp32) the check runs on
    8 dev examples of each class instead of all 16."""
    from rlprompt.models import fast_bf16, load_lm

    model32, tok = smollm
    model16, _ = load_lm("smollm2-135m", device="cpu", dtype="bf16")
    task = load_task("sst2", data_dir)
    per_class = None if fast_bf16(torch.device("cpu")) else 8
    dev = [e for c in (0, 1) for e in [e for e in task.dev if e.label == c][:per_class]]
    prompts, sentences = ["", task.manual_prompt], [e.text for e in dev]
    s32 = CachedScorer(model32, tok, task.template, task.verbalizers).score(prompts, sentences)
    s16 = CachedScorer(model16, tok, task.template, task.verbalizers).score(prompts, sentences)
    margin32 = s32[..., 1] - s32[..., 0]
    differ = s32.argmax(-1) != s16.argmax(-1)
    assert differ.sum() <= 2, margin32[differ]
    assert (margin32[differ].abs() < 0.25).all(), margin32[differ]


def test_a_long_shared_prefix_is_run_once_and_scores_as_the_naive_scorer(tiny_lm):
    from rlprompt.scorer import MIN_SHARED_TOKENS, shared_length

    model, tok = tiny_lm
    demos = "Review: a warm, funny and moving film.\\nSentiment: great\\n\\nReview: a tedious mess.\\nSentiment: terrible\\n\\n"
    template = demos.replace("\\n", "\n") + "Review: {sentence}\n{prompt}\nSentiment:"
    cached = CachedScorer(model, tok, template, VERBALIZERS, max_rows=8, example_chunk=3)
    seqs = [cached.encoder.encode_prefix(s) for s in SENTENCES[:3]]
    assert shared_length(seqs) >= MIN_SHARED_TOKENS  # the demos are shared
    calls = []
    forward = model.base_model.forward
    model.base_model.forward = lambda *a, **kw: calls.append(kw["input_ids"].shape) or forward(*a, **kw)
    try:
        got = cached.score(PROMPTS, SENTENCES)
    finally:
        model.base_model.forward = forward
    assert calls[0][0] == 1  # one row for the shared demos of the first chunk
    ref = NaiveScorer(model, tok, template, VERBALIZERS, max_rows=7).score(PROMPTS, SENTENCES)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    assert shared_length([[1, 2, 3], [1, 2, 4]]) == 2 and shared_length([[1, 2], [1, 2, 3]]) == 1


def test_cpu_gqa_attention_scores_as_transformers_sdpa_without_repeating_kv(smol_tokenizer, monkeypatch):
    import rlprompt.attention as attention
    from tests.rl_helpers import fresh_tiny_lm

    model = fresh_tiny_lm(smol_tokenizer).eval().requires_grad_(False)  # 4 query heads share 2 key/value heads
    template = TEMPLATES[2]
    ref = CachedScorer(model, smol_tokenizer, template, VERBALIZERS).score(PROMPTS, SENTENCES)
    assert attention.use_cpu_gqa(model) and model.config._attn_implementation == attention.NAME
    monkeypatch.setattr(attention, "sdpa_attention_forward",  # the path that repeats the key/value heads
                        lambda *a, **k: pytest.fail("a masked call fell back to transformers' sdpa"))
    got = CachedScorer(model, smol_tokenizer, template, VERBALIZERS).score(PROMPTS, SENTENCES)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_cpu_gqa_leaves_other_models_alone():
    from transformers import BertConfig, BertForMaskedLM

    from rlprompt.attention import use_cpu_gqa

    bert = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, vocab_size=100))
    assert not use_cpu_gqa(bert) and bert.config._attn_implementation != "rlprompt_sdpa_gqa"
