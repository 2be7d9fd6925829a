"""Which train examples score a step's prompts: all of them when there are few, else a fresh seeded
mini-batch each step, so step time does not grow with the train file."""

from __future__ import annotations

import torch


class TrainBatches:
    """Each step's train examples. With at most `size` examples: all of them, in file order (every
    step the same). With more: `size` examples drawn without replacement from a seeded generator
    whose state goes into the checkpoint, so a resumed run draws exactly what it would have drawn."""

    def __init__(self, examples: list, size: int, seed: int):
        self.examples = list(examples)
        self.size = size
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def sampled(self) -> bool:
        """True when each step draws a mini-batch (more examples than --train-batch)."""
        return len(self.examples) > self.size

    def next(self) -> list:
        """The examples of the next step."""
        if not self.sampled:
            return self.examples
        picks = torch.randperm(len(self.examples), generator=self.generator)[:self.size]
        return [self.examples[i] for i in picks.tolist()]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def fixed_sample(items: list, limit: int, seed: int = 0) -> list:
    """`items` itself when there are at most `limit`, else a fixed seeded sample of `limit` of them kept
    in file order: what a one-off estimate on a train file (calibration, the template search) scores,
    so its cost does not grow with the file."""
    items = list(items)
    if len(items) <= limit:
        return items
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return [items[i] for i in keep.tolist()]
