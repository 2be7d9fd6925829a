"""Atomic checkpoints and RNG state capture, so a run survives crashes and resumes exactly."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from rlprompt.errors import UserError

CHECKPOINT_NAME = "checkpoint.pt"


def _umask() -> int:
    umask = os.umask(0)  # the only portable way to read it is to set it; done once, at import, not per write
    os.umask(umask)
    return umask


# The permissions open() gives a new file (0o666 less the umask), not mkstemp's private 0o600.
FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, fsync, then rename over `path` (which gets the
    permissions a plain open() would give it)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


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
    """Restore what rng_state captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])


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
