"""Atomic checkpoints and RNG state capture, so a run survives crashes and resumes exactly."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from rlprompt.atomic import atomic_write_bytes
from rlprompt.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (one place, as in CleanRL)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict:
    """Python, numpy, torch and the sampling generator's RNG states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(), "sampler": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    """Restore what rng_state captured. A sampler state saved on another device type (a run made on a GPU
    and resumed on a CPU, or the reverse) cannot be loaded: the generator is then seeded from that state's
    bytes instead, so the resume is deterministic though not the uninterrupted run's path."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    try:
        generator.set_state(state["sampler"])
    except RuntimeError:  # a CUDA generator's state is 16 bytes, a CPU generator's 5056
        digest = hashlib.sha256(state["sampler"].cpu().numpy().tobytes()).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little"))


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write run_dir/checkpoint.pt atomically; the previous checkpoint stays intact until the rename."""
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def load_checkpoint(run_dir: Path) -> dict:
    """Read run_dir/checkpoint.pt; a UserError names a missing or unreadable file."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        if (path.parent / "config.json").is_file():
            raise UserError(f"no checkpoint in {path.parent}: the run there stopped before its first checkpoint "
                            "(written after step 1, then every --checkpoint-every steps or --checkpoint-every-s "
                            f"seconds), so its training is lost; start it again with --out {path.parent} "
                            "--overwrite")
        raise UserError(f"no checkpoint in {path.parent}: {path.name} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise UserError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__})") from None
