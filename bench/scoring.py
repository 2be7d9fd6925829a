"""Benchmark the task-LM scorers: CachedScorer vs NaiveScorer, fp32 (and bf16 where fast). Prints ONE JSON line.

    PYTHONPATH=. python bench/scoring.py [--model smollm2-135m] [--prompts 16] [--examples 32] [--repeats 2]

Workload: --prompts distinct prompts × the first --examples SST-2 examples (the 32 train examples of
16-shot seed 13, then test examples beyond 32),
the preset template and verbalizers, scored in one `score()` call (as one RL step scores its prompts).

What is timed, per scorer and dtype (median of --repeats calls):
  * warm-up (not timed): one `score()` on a different set of prompts over the same examples. For the
    CachedScorer this computes and keeps the examples' prefix KV cache, so timed calls run the
    continuations only: the steady state of training, where the same examples are scored every step.
  * timed: `score(prompts, examples)`. The CachedScorer's score memo is cleared before each timed
    call (its prefix KV cache is kept), so every call really runs the model on all pairs. The
    NaiveScorer keeps nothing between calls: each call runs every full sequence.
pairs/s = prompts × examples / seconds. `max_abs_diff_<dtype>` compares the cached and naive (P, E, V)
log-probs in each precision timed; with both fp32 and bf16, `bf16_labels_match_fp32` compares the argmax
labels of bf16 and fp32 (cached). `--dtypes bf16` times bf16 alone.
`--attention-ab`: also time the cached scorer under transformers' own `sdpa` attention, which copies the
key/value heads per layer when a mask is given (`rlprompt.attention`; on a CPU `load_lm` avoids it), and
report `gqa_speedup_<dtype>`, the ratio of the two, timed alternately in this run.
`host_ms_per_call`: the CPU-side part of the cached scorer's call (tokenizing the continuations and
building the id, mask and position tensors of every block; median of --repeats), which on a GPU is spent
while the device waits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch


from rlprompt.cli import quiet_transformers
from rlprompt.models import fast_bf16, hardware, load_lm, pick_device
from rlprompt.scorer import CachedScorer, NaiveScorer
from rlprompt.tasks import load_task

# Realistic ~5-token prompts: 16 for the timed calls, 16 others for the warm-up.
TIMED_PROMPTS = [
    "Overall, the movie was", "In summary, this film is", "My honest review of it:",
    "The critic's verdict:", "Rating this movie overall", "What I thought of the film",
    "Absolutely the best review ever", "Sentiment of the review below", "Final opinion on this movie",
    "Viewers say this film was", "Honestly, the acting felt", "The audience reaction was",
    "Critics agree the story is", "Short review, in one word", "How the plot turned out",
    "Reviewer's feeling about it",
]
WARMUP_PROMPTS = [
    "Warm up prompt number one", "Another unrelated prompt here", "Some words about cinema",
    "Just a test of speed", "This sentence warms caches", "Random prefix for warming",
    "Movie night thoughts:", "Popcorn and a film", "Reading the review now", "Lights, camera, action",
    "The screenplay was written", "Box office numbers show", "A sequel is coming soon",
    "Directed by a newcomer", "Festival premiere last year", "Streaming this weekend",
]


def make_prompts(base: list[str], n: int) -> list[str]:
    """n distinct prompts: the list, then numbered variants when more are asked for."""
    return [base[i % len(base)] + ("" if i < len(base) else f" {i // len(base)}") for i in range(n)]


def time_scorer(scorer, prompts, warmup, sentences, repeats: int) -> tuple[float, torch.Tensor]:
    """(median seconds of one timed score() call, its (P, E, V) output)."""
    scorer.score(warmup, sentences)
    times, out = [], None
    for _ in range(repeats):
        if isinstance(scorer, CachedScorer):
            scorer.score_cache.clear()  # keep the prefix KV, drop the memoized scores
        start = time.perf_counter()
        out = scorer.score(prompts, sentences)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def host_ms(scorer: CachedScorer, prompts, sentences, repeats: int) -> float:
    """Median milliseconds of the host-side inputs of one score() call, in the scorer's own blocks
    (the examples' prefix lengths are known from the warm-up, as in the timed call)."""
    chunks = [sentences[c:c + scorer.example_chunk] for c in range(0, len(sentences), scorer.example_chunk)]
    lengths = [torch.tensor([len(scorer.encoder.encode_prefix(s)) for s in chunk]) for chunk in chunks]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk, prefix_lengths in zip(chunks, lengths):
            step = max(1, scorer.max_rows // len(chunk))
            for i in range(0, len(prompts), step):
                scorer.continuation_batch(prompts[i:i + step], chunk, prefix_lengths)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def attention_ab(model, tok, task, prompts, warmup, sentences, repeats: int) -> float | None:
    """Seconds of the cached scorer under transformers' `sdpa` over those under the attention `load_lm`
    chose, timed alternately (`repeats` rounds, medians); None where the two are the same."""
    chosen = model.config._attn_implementation
    if chosen == "sdpa":
        return None
    times = {"sdpa": [], chosen: []}
    for _ in range(repeats):
        for name in times:
            model.set_attn_implementation(name)
            times[name].append(time_scorer(CachedScorer(model, tok, task.template, task.verbalizers),
                                           prompts, warmup, sentences, 1)[0])
    model.set_attn_implementation(chosen)
    return round(statistics.median(times["sdpa"]) / statistics.median(times[chosen]), 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m", help="task LM (default smollm2-135m)")
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts per call (default 16)")
    p.add_argument("--examples", type=int, default=32,
                   help="SST-2 examples: the 32 train examples, then test ones (default 32)")
    p.add_argument("--cached-only", action="store_true", help="time the CachedScorer alone (no naive baseline)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per scorer, median reported (default 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-rows", type=int, default=512, help="(prompt, example) rows per forward pass, both "
                   "scorers (default 512, the scorers' own); a GPU may want one pass per call")
    p.add_argument("--attention-ab", action="store_true", help="also time the cached scorer under transformers' "
                   "sdpa attention (key/value heads copied per layer) and report the ratio")
    p.add_argument("--dtypes", help="comma-separated precisions to time (default: fp32, plus bf16 where "
                   "the hardware runs it fast; emulated bf16 on an AVX2-only CPU is ~70x slower)")
    args = p.parse_args(argv)
    if args.max_rows < 1:
        p.error(f"--max-rows {args.max_rows}: must be at least 1")
    quiet_transformers()
    torch.manual_seed(0)

    task = load_task("sst2", seed=13)
    sentences = [ex.text for ex in (task.train + task.test)[:args.examples]]
    prompts = make_prompts(TIMED_PROMPTS, args.prompts)
    warmup = make_prompts(WARMUP_PROMPTS, args.prompts)
    pairs = len(prompts) * len(sentences)

    result = {"bench": "scoring", "model": args.model, "prompts": len(prompts), "examples": len(sentences),
              "pairs": pairs, "repeats": args.repeats, "max_rows": args.max_rows}
    outputs = {}
    dtypes = list(dict.fromkeys(d.strip() for d in args.dtypes.split(","))) if args.dtypes else \
        ["fp32"] + (["bf16"] if fast_bf16(pick_device(args.device)) else [])
    if not dtypes or not set(dtypes) <= {"fp32", "bf16", "fp16"}:
        p.error(f"--dtypes {args.dtypes!r}: use a comma-separated list of fp32, bf16, fp16")
    result["dtypes"] = dtypes
    for dtype in dtypes:
        model, tok = load_lm(args.model, args.device, dtype)
        result["attention"] = model.config._attn_implementation
        if args.attention_ab:
            result[f"gqa_speedup_{dtype}"] = attention_ab(model, tok, task, prompts, warmup, sentences, args.repeats)
        scorers = (("cached", CachedScorer),) + ((("naive", NaiveScorer),) if not args.cached_only else ())
        for name, cls in scorers:
            scorer = cls(model, tok, task.template, task.verbalizers, max_rows=args.max_rows)
            seconds, outputs[name, dtype] = time_scorer(scorer, prompts, warmup, sentences, args.repeats)
            result[f"{name}_{dtype}_pairs_per_s"] = round(pairs / seconds, 1)
            if name == "cached":
                result["host_ms_per_call"] = host_ms(scorer, prompts, sentences, max(args.repeats, 5))
        if not args.cached_only:
            result[f"speedup_{dtype}"] = round(result[f"cached_{dtype}_pairs_per_s"]
                                               / result[f"naive_{dtype}_pairs_per_s"], 2)
        del model

    for dtype in dtypes if not args.cached_only else ():  # cached against naive in each precision timed
        diff = (outputs["cached", dtype] - outputs["naive", dtype]).abs().max().item()
        result[f"max_abs_diff_{dtype}"] = float(f"{diff:.3g}")
    if "bf16" in dtypes and "fp32" in dtypes:  # bf16 labels against fp32's, when both were timed
        fp32_labels = outputs["cached", "fp32"].argmax(-1)
        bf16_labels = outputs["cached", "bf16"].argmax(-1)
        result["bf16_labels_match_fp32"] = bool((fp32_labels == bf16_labels).all())
        result["bf16_label_agreement"] = round((fp32_labels == bf16_labels).float().mean().item(), 4)
        if not args.cached_only:
            result["bf16_naive_labels_match_fp32"] = bool(
                (outputs["naive", "bf16"].argmax(-1) == fp32_labels).all())
    result.update(hardware(pick_device(args.device)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
