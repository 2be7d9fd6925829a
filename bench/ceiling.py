"""How good can a prompt in the template's slot get? A gradient-guided token search with far more
labelled data than a 16-shot split, scored on SST-2's GLUE dev set. Prints ONE JSON line.

    PYTHONPATH=. python bench/ceiling.py --out bench/results/ceiling/sst2_autoprompt.json
    PYTHONPATH=. python bench/ceiling.py --option init='-D1_C' --option max_rounds=40 --out ...

The search (`autoprompt`, rlprompt/methods/autoprompt.py) optimizes RLPrompt's reward on --train-size
sentences drawn from GLUE's SST-2 train set (67,349, at least --min-words words, balanced), picks its
final prompt on --dev-size others, and every prompt it accepted is then scored on the 872 sentences of
GLUE's dev set (the set the RL ablations use), next to no prompt and the preset's six hand-written
prompts, all batch-calibrated on the same unlabeled sample as the search. This is not a few-shot
method: it bounds, from below, what a few-shot search of the same slot, length and task LM could
reach, and so what issue #14's "+2 over the strongest baseline" asks of one.

With --shots SEED the same search runs few-shot instead, on that 16-shot split's 32 train and 32 dev
examples (calibrated on the 32 train inputs, as a train.py run is): the gradient search as an
alternative to RL on the same data, scored on the same 872.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rlprompt.cli import quiet_transformers, run_cli  # noqa: E402


def balanced_sample(examples: list, n: int, min_words: int, rng: random.Random, exclude=()) -> list:
    """n examples with at least `min_words` words, half of each label (two labels), none in `exclude`."""
    from rlprompt.errors import UserError

    taken = {e.text for e in exclude}
    pool = [e for e in examples if len(e.text.split()) >= min_words and e.text not in taken]
    out = []
    for label in (0, 1):
        of_label = [e for e in pool if e.label == label]
        if len(of_label) < n // 2:
            raise UserError(f"only {len(of_label)} sentences of label {label} with {min_words}+ words")
        out += rng.sample(of_label, n // 2)
    rng.shuffle(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--shots", type=int, default=None, metavar="SEED",
                   help="search on this 16-shot split's train and dev instead (a few-shot run, as RL's)")
    p.add_argument("--train-size", type=int, default=256, help="GLUE train sentences the search scores")
    p.add_argument("--dev-size", type=int, default=256, help="other GLUE train sentences that pick the prompt")
    p.add_argument("--min-words", type=int, default=8)
    p.add_argument("--sample-seed", type=int, default=0,
                   help="which GLUE sentences; also the search's seed (with --shots, the split's seed is)")
    p.add_argument("--budget", type=int, default=5_000_000, help="scored pairs (the search's own limit)")
    p.add_argument("--task-model", default="smollm2-135m")
    p.add_argument("--task-dtype", default="auto")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="autoprompt option (AutoPromptConfig field), repeatable")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    quiet_transformers()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from rlprompt.calibration import calibrated, unlabeled_inputs
    from rlprompt.evaluation import evaluate_prompts
    from rlprompt.methods import MethodContext, get_method
    from rlprompt.methods import autoprompt  # noqa: F401  (registers the method)
    from rlprompt.models import hardware, load_lm
    from rlprompt.scorer import build_scorer
    from rlprompt.tasks import load_task, read_tsv, resolve_data_dir
    from bench.soft_methods import parse_option

    root = resolve_data_dir(args.data_dir)
    task = load_task("sst2", data_dir=root, seed=13 if args.shots is None else args.shots)
    eval_set = read_tsv(root / "sst-2" / "full" / "dev.tsv", 2)
    if args.shots is None:
        glue_train = read_tsv(root / "sst-2" / "full" / "train.tsv", 2)
        rng = random.Random(args.sample_seed)
        train = balanced_sample(glue_train, args.train_size, args.min_words, rng)
        dev = balanced_sample(glue_train, args.dev_size, args.min_words, rng, exclude=train)
        task = dataclasses.replace(task, train=train, dev=dev)
    task = dataclasses.replace(task, test=[])
    seed = args.sample_seed if args.shots is None else args.shots

    model, tok = load_lm(args.task_model, None, args.task_dtype)
    scorer = calibrated(build_scorer(model, tok, task.template, task.verbalizers), "batch",
                        unlabeled_inputs(task.train))
    options = dict(parse_option(o) for o in args.option)
    ctx = MethodContext(task=task, task_model=model, task_tokenizer=tok, scorer=scorer,
                        pair_budget=args.budget, seed=seed, options=options)
    t0 = time.perf_counter()
    result = get_method("autoprompt")(ctx)
    search_s = time.perf_counter() - t0

    start = result.extra["start"]
    accepted = [r for r in result.extra["rounds"] if r["improved"]]
    references = {"no prompt": ""} | {f"manual: {m}": m for m in task.manual_prompts}
    prompts = [result.prompt, start] + [r["prompt"] for r in accepted] + list(references.values())
    prompts = list(dict.fromkeys(prompts))
    rows = evaluate_prompts(scorer, prompts, eval_set, progress=False, desc="eval")
    on_eval = {prompt: round(100 * row["accuracy"], 2) for prompt, row in zip(prompts, rows)}
    manual = {name: on_eval[text] for name, text in references.items() if name != "no prompt"}
    out = {
        "bench": "ceiling", "method": "autoprompt", "task": "sst2", "task_model": args.task_model,
        "template": task.template, "verbalizers": task.verbalizers, "machine": hardware(model.device),
        "task_dtype": str(model.dtype),
        "data": "glue-train" if args.shots is None else f"16-shot/{args.shots}",
        "train_size": len(task.train), "dev_size": len(task.dev), "min_words": args.min_words,
        "sample_seed": seed, "options": options, "eval_set": "sst-2/full/dev.tsv",
        "eval_size": len(eval_set), "calibration": "batch",
        "prompt": result.prompt, "search_dev_acc": round(100 * result.dev_acc, 2),
        "eval_acc": on_eval[result.prompt], "start": start, "start_eval_acc": on_eval[start],
        "no_prompt_eval_acc": on_eval[""],
        "best_manual_eval_acc": max(manual.values()), "manual_eval_acc": manual,
        "accepted": [{"round": r["round"], "prompt": r["prompt"], "train_reward": r["train_reward"],
                      "eval_acc": on_eval[r["prompt"]]} for r in accepted],
        "rounds": len(result.extra["rounds"]), "stop_reason": result.extra["stop_reason"],
        "pairs_scored": result.pairs_scored, "search_s": round(search_s, 1),
    }
    line = json.dumps(out)
    print(line, flush=True)
    if args.out:
        from rlprompt.atomic import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
