"""Where should the prompt go? The task's hand-written prompts (and no prompt) in the preset's template,
after the input, and moved before the input as an instruction line; raw and batch-calibrated. One JSON.

    python bench/position.py --task sst2 --limit 300      # 300 random examples of SST-2's full/dev.tsv
    python bench/position.py --task sst2 --limit 300 --shots 4 --seed 21   # behind seed 21's 4-shot demos

The "before" template is the preset's with its {prompt} slot taken out and `{prompt}\\n` put in front:
SST-2's `Review: {sentence}\\n{prompt}\\nSentiment:` becomes `{prompt}\\nReview: {sentence}\\nSentiment:`.
Every prompt is scored once per template; the batch-calibrated accuracies reuse those scores (the
calibration vectors come from the seed's unlabeled train inputs, as train.py's). The eval set is SST-2's
full/dev.tsv (not test); --limit takes a fixed random subset of it (shuffled with seed 0).
With --shots K the seed's K demonstrations (the K-shot baseline's) come first: "after" is the K-shot
baseline's own template (each demonstration in the preset's template with an empty prompt, the slot in
the last block), "before" puts the prompt in front of the demonstrations, as an instruction for the whole
context, and every block (demonstrations and input) in the slotless form `Review: {sentence}\nSentiment:`.
This is a probe of the baselines only: an RL step in the "before" position scores ~8x slower on a CPU
(bench/results/speed/train_step_cpu_prompt_*.json: 24.8 s against 3.2 s for 16 prompts x 32 examples),
because every token of the input then follows the prompt and no prefix can be cached.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from rlprompt.baselines import DEMO_SEPARATOR, demo_template, manual_candidates, pick_demos
from rlprompt.calibration import calibrated, unlabeled_inputs
from rlprompt.atomic import atomic_write_text
from rlprompt.cli import OneLineArgumentParser, quiet_transformers, run_cli
from rlprompt.errors import UserError
from rlprompt.evaluation import evaluate_prompts
from rlprompt.models import hardware, load_lm
from rlprompt.scorer import build_scorer, split_template
from rlprompt.tasks import load_task, read_tsv, resolve_data_dir

EVAL_FILES = {"sst2": "sst-2/full/dev.tsv"}  # validation sets that are not the test set


def slotless_template(template: str) -> str:
    """The template with its prompt slot (and the whitespace before it) taken out."""
    head, tail = split_template(template)
    return head.rstrip() + tail


def before_template(template: str) -> str:
    """The template with its prompt slot moved in front of everything, on a line of its own."""
    return "{prompt}\n" + slotless_template(template)


def templates(task, shots: int, seed: int) -> dict[str, str]:
    """{"after": ..., "before": ...}: the preset's template and its prompt-first form, both behind the
    seed's `shots` demonstrations when `shots` > 0."""
    if shots <= 0:
        return {"after": task.template, "before": before_template(task.template)}
    demos = pick_demos(task.train, shots, seed)
    slotless = slotless_template(task.template)
    blocks = [slotless.replace("{sentence}", d.text) + task.verbalizers[d.label] for d in demos]
    return {"after": demo_template(task, demos), "before": "{prompt}\n" + DEMO_SEPARATOR.join(blocks + [slotless])}


def main(argv=None) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--task", default="sst2", choices=sorted(EVAL_FILES))
    p.add_argument("--seed", type=int, default=13, help="the 16-shot seed whose train inputs calibrate (default 13)")
    p.add_argument("--limit", type=int, help="score a fixed random subset of this many eval examples")
    p.add_argument("--shots", type=int, default=0, help="start both templates with the seed's K-shot demonstrations")
    p.add_argument("--data-dir")
    p.add_argument("--task-model", default="smollm2-135m")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    quiet_transformers()

    task = load_task(args.task, args.data_dir, args.seed)
    path = resolve_data_dir(args.data_dir) / EVAL_FILES[args.task]
    if not path.is_file():
        raise UserError(f"{path} not found")
    examples = read_tsv(path, len(task.label_names))
    if args.limit:
        random.Random(0).shuffle(examples)
        examples = examples[:args.limit]
    model, tok = load_lm(args.task_model, args.device, args.dtype)
    prompts = [""] + manual_candidates(task)
    doc = {"bench": "position", "task": args.task, "seed": args.seed, "eval_file": EVAL_FILES[args.task],
           "n": len(examples), "shots": max(args.shots, 0), "prompts": prompts, "templates": {}}
    for name, template in templates(task, args.shots, args.seed).items():
        start = time.perf_counter()
        raw = build_scorer(model, tok, template, task.verbalizers)
        row = {"template": template}
        for mode in ("none", "batch"):
            scorer = calibrated(raw, mode, unlabeled_inputs(task.train))  # batch reuses raw's memoized scores
            row[mode] = [round(100 * r["accuracy"], 1)
                         for r in evaluate_prompts(scorer, prompts, examples, progress=False)]
        row["seconds"] = round(time.perf_counter() - start, 1)
        doc["templates"][name] = row
        print(f"[{name}] {template!r}: no prompt {row['none'][0]} / {row['batch'][0]} (batch), hand-written "
              f"{min(row['none'][1:])}-{max(row['none'][1:])} / {min(row['batch'][1:])}-{max(row['batch'][1:])}, "
              f"{row['seconds']} s", file=sys.stderr)
    doc.update(hardware(next(model.parameters()).device))
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    if args.out:
        atomic_write_text(Path(args.out), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(lambda: main()))
