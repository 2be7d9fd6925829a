"""Data-parallel training across processes started by `accelerate launch` (one per GPU, or CPU processes).

Scoring is most of a training step, so that is what is split: every process samples the same prompts
(same seed, same synchronized policy), `ShardedScorer` lets each process score them on its share of the
examples, and the log-probs are gathered before rewards are computed and normalized, so every process
sees the rewards of the whole step. `rlprompt.trainer.DataParallelTrainer` then runs the (cheap) update on
every process and copies rank 0's adaptor to the others, so rounding cannot make the copies drift apart.

With one process all of this is a no-op.
"""

from __future__ import annotations

import hashlib

import torch

from rlprompt.errors import UserError


def process_state(device: str | None = None):
    """accelerate's PartialState: process index, count and device. Under `accelerate launch` (or torchrun)
    the first call starts torch.distributed: NCCL on GPUs; gloo on CPUs when `device` is 'cpu',
    $ACCELERATE_USE_CPU is set, or there is no CUDA (later calls return the same state)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def is_distributed() -> bool:
    """True once torch.distributed has started (under `accelerate launch`), even with one process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def end_processes() -> None:
    """Leave the process group (under `accelerate launch`, once all processes are done): a gloo group
    left to the interpreter's exit can abort it ("terminate called without an active exception")."""
    if is_distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def world_size() -> int:
    """Number of processes taking part (1 without `accelerate launch`)."""
    return process_state().num_processes


def is_main_process() -> bool:
    """True on the process that writes logs and files (rank 0)."""
    return process_state().is_main_process


def process_device(device: str) -> torch.device:
    """The device of this process: `device` as given, except that 'auto' under a multi-process launch
    means this process's own accelerator (cuda:<local rank>) rather than every process on cuda:0."""
    from rlprompt.models import pick_device

    state = process_state(device)
    if state.num_processes > 1 and device in (None, "", "auto"):
        return state.device
    return pick_device(device)


def same_on_all_processes(value):
    """Rank 0's `value` on every process (e.g. a run folder name made from the clock)."""
    from accelerate.utils import broadcast_object_list

    if world_size() == 1:
        return value
    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def pairs_scored_by_all(scorer) -> int:
    """(prompt, example) pairs that all processes together sent through their task LMs: the scorer's own
    count in one process; under `accelerate launch` a collective call, to be made on every process."""
    pairs = getattr(scorer, "pairs_scored", 0)
    if not is_distributed():
        return pairs
    from accelerate.utils import gather_object

    return int(sum(gather_object([pairs])))


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of shard `rank` of n items cut into `world` contiguous shards of near-equal size."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class ShardedScorer:
    """A scorer whose (prompt, example) pairs are split across processes by example.

    Every process must call `score` with the same prompts and sentences, in the same order (a mismatch
    raises a UserError). Each scores all prompts on its contiguous share of the sentences with the wrapped
    scorer (whose prefix cache and memo then hold only its share), and the (P, E_shard, V) blocks are
    gathered back into (P, E, V) in example order, identical on every process.
    """

    def __init__(self, scorer, state=None):
        state = state or process_state()
        self.scorer = scorer
        self.rank, self.world = state.process_index, state.num_processes

    @property
    def verbalizer_ids(self) -> torch.Tensor:
        return self.scorer.verbalizer_ids

    @property
    def encoder(self):
        """The wrapped scorer's PromptEncoder (None without one): evaluation orders examples by its token
        counts, so a sharded run scores the same chunks as one process."""
        return getattr(self.scorer, "encoder", None)

    @property
    def pairs_scored(self) -> int:
        """Pairs this process sent through its model (see `pairs_scored_by_all` for all processes)."""
        return self.scorer.pairs_scored

    @pairs_scored.setter
    def pairs_scored(self, value: int) -> None:
        self.scorer.pairs_scored = value

    def state_dict(self) -> dict:
        """Nothing: each process's memo holds only its share, and the checkpoint is rank 0's."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see `state_dict`)."""

    def score(self, prompts: list[str], sentences: list[str]) -> torch.Tensor:
        """(P, E, V) verbalizer log-probs, this process computing only its share of the examples."""
        from accelerate.utils import gather_object

        prompts, sentences = list(prompts), list(sentences)
        if self.world == 1:
            return self.scorer.score(prompts, sentences)
        digest = hashlib.sha1(repr((prompts, sentences)).encode()).hexdigest()
        if len(set(gather_object([digest]))) != 1:
            raise UserError("the processes disagree on the prompts or examples to score; every process must "
                            "sample the same prompts (same seed, same policy)")
        start, stop = shard_bounds(len(sentences), self.rank, self.world)
        if stop > start:
            local = self.scorer.score(prompts, sentences[start:stop]).cpu()
        else:
            local = torch.zeros(len(prompts), 0, len(self.verbalizer_ids))
        return torch.cat(gather_object([local]), dim=1)


def unwrap_scorer(scorer):
    """The process-local scorer inside a ShardedScorer (or the scorer itself). A CalibratedScorer around
    a ShardedScorer becomes the same calibration (mode, unlabeled inputs, vectors so far) around the
    process-local scorer, so trl's processes, which score different prompts, never meet in a collective."""
    from rlprompt.calibration import CalibratedScorer

    if isinstance(scorer, CalibratedScorer):
        inner = unwrap_scorer(scorer.scorer)
        return scorer if inner is scorer.scorer else scorer.around(inner)
    return scorer.scorer if isinstance(scorer, ShardedScorer) else scorer


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers of `module` to every process, in place."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(tensor.data, src=src)
