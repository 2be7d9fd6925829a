"""Data-parallel scoring and training under `accelerate launch`: two CPU processes give the rewards of one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlprompt.distributed import ShardedScorer, shard_bounds
from rlprompt.scorer import CachedScorer
from tests.distributed_worker import EXAMPLES, PROMPTS, reinforce_experiment

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n,world", [(7, 2), (2, 3), (32, 4), (0, 2)])
def test_shards_cover_every_example_once(n, world):
    shards = [shard_bounds(n, rank, world) for rank in range(world)]
    assert [i for start, stop in shards for i in range(start, stop)] == list(range(n))
    sizes = [stop - start for start, stop in shards]
    assert max(sizes) - min(sizes) <= 1


def test_sharded_scorer_in_one_process_is_the_scorer(tiny_lm):
    model, tok = tiny_lm
    scorer = CachedScorer(model, tok, "{sentence} {prompt} It was", [" terrible", " great"])
    sentences = [e.text for e in EXAMPLES]
    expected = scorer.score(PROMPTS, sentences)
    torch.testing.assert_close(ShardedScorer(scorer).score(PROMPTS, sentences), expected)
    # evaluation orders examples by the same token counts through the wrapper, so it scores the same chunks
    assert ShardedScorer(scorer).encoder is scorer.encoder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    """Both experiments of tests/distributed_worker.py under `accelerate launch`, 2 CPU processes (gloo)."""
    out = tmp_path_factory.mktemp("two-processes") / "results.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "tests/distributed_worker.py", "reinforce,trl-grpo", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}  # the worker imports tests.rl_helpers and this checkout's rlprompt
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_score_and_train_like_one(two_processes, tmp_path):
    one = reinforce_experiment(tmp_path)
    two = two_processes["reinforce"]
    assert one["world"] == 1 and two["world"] == 2
    # each process scored its share of the (prompt, example) pairs, together all of them
    assert len(two["pairs_per_process"]) == 2 and min(two["pairs_per_process"]) > 0
    assert sum(two["pairs_per_process"]) == one["pairs_per_process"][0]
    # the summary's and the checkpoint's count are those of both processes, not rank 0's share
    assert two["pairs_by_all"] == two["checkpoint_pairs"] == one["pairs_by_all"] == one["checkpoint_pairs"]
    assert one["pairs_by_all"] == one["pairs_per_process"][0]
    # the gathered rewards are the one-process rewards, for fixed prompts and along training
    assert two["fixed_rewards"] == pytest.approx(one["fixed_rewards"], abs=1e-4)
    assert two["fixed_accs"] == one["fixed_accs"]
    assert two["train_rewards"] == pytest.approx(one["train_rewards"], abs=1e-4)
    assert two["prompts"] == one["prompts"]
    # a checkpoint rank 0 cannot write stops every process with its error, none is left waiting for it
    assert len(two["checkpoint_errors"]) == 2 and len(set(two["checkpoint_errors"])) == 1
    assert two["checkpoint_errors"][0].startswith("cannot write checkpoint in ") and one["checkpoint_errors"][0]


@pytest.mark.slow
def test_trl_grpo_trains_on_two_processes(two_processes):
    two = two_processes["trl-grpo"]
    assert two["world"] == 2 and two["status"] == "step budget reached"
    assert len(two["train_rewards"]) == 2
    first, second = two["prompts_per_process"]
    assert first == second and len(first) >= 4  # the whole group reached both leaderboards
    assert two["adaptor_sums"][0] == two["adaptor_sums"][1]  # DDP kept the copies equal
