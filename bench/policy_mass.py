"""Where a run's policy puts its probability, per prompt position, on prompts it samples:

- on masked tokens: the share of the adapted LM's full softmax on tokens sampling can never draw
  (special and newline tokens, those outside `--prompt-vocab`, and with --no-repeat those already in
  the prompt);
- in the top-k: the share inside the `--top-k` tokens that sampling draws from;
- entropy: of the full softmax (what `losses/entropy` and the progress bar's H report under the default
  `--logprobs full`), of the masked distribution (what they report under `--logprobs masked`), and of the
  top-k distribution sampling really draws from.

    python bench/policy_mass.py runs/quality/default-fp32/sst2__13 runs/quality/default-fp32/mr__13

One JSON line per run folder (its checkpoint's adaptor), after one for the untrained policy of the first
run's settings (`"run": "start"`), each from --samples prompts sampled with --seed. CPU is enough: the
policy LM runs once per position for the samples.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlprompt.cli import OneLineArgumentParser, run_cli


def position_means(values) -> list[float]:
    """(N, T) -> the mean per position, rounded."""
    return [round(float(v), 3) for v in values.mean(0)]


def policy_mass(policy, samples: int, seed: int) -> dict:
    """The figures of the module docstring for `policy`, per position, over `samples` sampled prompts."""
    import torch

    with torch.no_grad():
        batch = policy.sample(samples, generator=torch.Generator(device=policy.device).manual_seed(seed))
        full = policy.log_policy(batch.base_hidden)
        masked = policy.masked_logits(batch.base_hidden, batch.tokens)
        p = full.exp()
        top = masked.topk(min(policy.top_k, masked.shape[-1]), -1)
        drawable = torch.isfinite(top.values)  # fewer allowed tokens than k: the rest of the top-k is masked

        def entropy(logits):
            logq = torch.log_softmax(logits, -1)
            return -(logq.exp() * logq.nan_to_num(neginf=0.0)).sum(-1)

        return {
            "on_masked_tokens": position_means((p * torch.isinf(masked)).sum(-1)),
            "in_top_k": position_means((p.gather(-1, top.indices) * drawable).sum(-1)),
            "entropy_full": position_means(-(p * full).sum(-1)),
            "entropy_masked": position_means(entropy(masked)),
            "entropy_sampling": position_means(entropy(top.values)),
            "distinct_prompts": len(set(batch.texts)) / len(batch.texts),
            "top_k": policy.top_k,
        }


def main(argv=None) -> int:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with checkpoint.pt)")
    p.add_argument("--samples", type=int, default=64, help="prompts sampled per policy")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    args = p.parse_args(argv)
    from torch import nn

    from rlprompt.generate import load_policy

    for i, run in enumerate(args.runs):
        policy = load_policy(run)
        if i == 0:
            trained, policy.adaptor = policy.adaptor, nn.Identity()  # the base LM: the untrained policy
            print(json.dumps({"run": "start", **policy_mass(policy, args.samples, args.seed)}), flush=True)
            policy.adaptor = trained
        cfg = json.loads((run / "config.json").read_text(encoding="utf-8"))  # the run's settings
        meta = {"run": str(run), "task": cfg.get("task"), "seed": cfg.get("seed"),
                "logprobs": cfg.get("logprobs", "full")}
        print(json.dumps({**meta, **policy_mass(policy, args.samples, args.seed)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(lambda: main()))
