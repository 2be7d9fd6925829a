"""Run registered prompt-optimization methods on one task and print each MethodResult as JSON.

    python bench/soft_methods.py --method prompt-tuning --budget 3000
    python bench/soft_methods.py --method distill-soft --method rl-compress --budget 3000 --option k=5

The methods share one task LM, one CachedScorer and one budget each (see rlprompt/methods).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys


import torch

from rlprompt.cli import quiet_transformers, run_cli


def parse_option(text: str) -> tuple[str, str]:
    """'KEY=VALUE' -> ('KEY', 'VALUE'), the key stripped; text without '=' is a UserError."""
    from rlprompt.errors import UserError

    if "=" not in text:
        raise UserError(f"option {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value


def teacher_baselines(task, scorer, options: dict) -> dict:
    """KL(teacher ‖ prompt) and argmax agreement on dev and test for the no prompt and the manual
    prompt, and every one's accuracy: what the compression methods have to beat."""
    from rlprompt.evaluation import accuracy, score_examples
    from rlprompt.methods.soft_common import teacher_instruction
    from rlprompt.rewards import verbalizer_kl

    teacher = teacher_instruction(task, options)
    prompts = {"teacher": teacher, "no prompt": "", "manual prompt": task.manual_prompt}
    out = {"teacher_instruction": teacher}
    for split in ("dev", "test"):
        examples = task.split(split)
        lp = score_examples(scorer, list(prompts.values()), examples, progress=False)  # (3, E, V)
        acc = accuracy(lp, [e.label for e in examples])
        for i, name in enumerate(prompts):
            row = out.setdefault(name, {})
            row[f"{split}_acc"] = float(acc[i])
            if i:
                row[f"{split}_kl"] = float(verbalizer_kl(lp[0], lp[i]).mean())
                row[f"{split}_agreement"] = float((lp[0].argmax(-1) == lp[i].argmax(-1)).float().mean())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", action="append", required=True, help="a registered method (repeatable)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--budget", type=int, default=3000, help="scored (prompt, example) pairs per method")
    p.add_argument("--task-model", default="smollm2-135m")
    p.add_argument("--policy-model", default="smollm2-135m")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--teacher-baselines", action="store_true",
                   help="also print how well no prompt and the manual prompt match the teacher instruction")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. lr=0.01 or prefix-tuning.lr=0.01 (repeatable)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_transformers()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    from rlprompt.methods import MethodContext, get_method
    from rlprompt.methods import distill, rl_compress, soft_prompt  # noqa: F401  (register the methods)
    from rlprompt.models import load_lm
    from rlprompt.scorer import CachedScorer
    from rlprompt.tasks import load_task

    task = load_task(args.task, seed=args.seed)
    model, tokenizer = load_lm(args.task_model, args.device, args.dtype)
    scorer = CachedScorer(model, tokenizer, task.template, task.verbalizers)
    options = dict(parse_option(o) for o in args.option)
    if args.teacher_baselines:
        print(json.dumps(teacher_baselines(task, scorer, options)), flush=True)
    for name in args.method:
        run = get_method(name)
        ctx = MethodContext(task=task, task_model=model, task_tokenizer=tokenizer, scorer=scorer,
                            pair_budget=args.budget, seed=args.seed, policy_model=args.policy_model,
                            device=args.device, options=options)
        result = run(ctx)
        print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
