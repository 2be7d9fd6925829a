"""Rebuild a trained prompt policy from a run folder and sample prompts from it."""

from __future__ import annotations

from pathlib import Path

import torch

from rlprompt.checkpoint import load_checkpoint


def load_policy(run_dir: str | Path, device=None, allow_download: bool = False):
    """The PromptPolicy of a run, its adaptor restored from the run's checkpoint."""
    from rlprompt.models import load_lm
    from rlprompt.policy import PromptPolicy

    state = load_checkpoint(Path(run_dir))
    cfg = state["config"]
    model, tokenizer = load_lm(cfg["policy_model"], device, "fp32", allow_download)
    policy = PromptPolicy(model, tokenizer, cfg["prompt_length"], cfg["top_k"], cfg["adaptor_hidden"],
                          cfg["no_repeat"], cfg["policy_start"], cfg.get("prompt_vocab", "all"))
    policy.adaptor.load_state_dict(state["adaptor"])
    return policy


@torch.no_grad()
def sample_prompts(policy, n: int, seed: int = 0, batch_size: int = 64) -> list[str]:
    """Up to n distinct prompts: the greedy prompt first, then top-k samples (seeded), in the order
    first drawn. Stops after 8·n draws if the policy has fewer distinct prompts than n."""
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    prompts = dict.fromkeys(policy.sample(1, greedy=True).texts)
    drawn = 0
    while len(prompts) < n and drawn < 8 * n:
        k = min(batch_size, 8 * n - drawn)
        prompts.update(dict.fromkeys(policy.sample(k, generator=generator).texts))
        drawn += k
    return [p for p in prompts if p][:n]
