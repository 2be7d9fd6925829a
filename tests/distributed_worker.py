"""Worker for tests/test_distributed.py, also run in-process there as the one-process reference.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/distributed_worker.py \
        reinforce,trl-grpo OUT.json

reinforce: scores fixed prompts through a ShardedScorer on a tiny random Llama, then trains the REINFORCE
policy for a few data-parallel steps with that scorer. trl-grpo: a few trl GRPO steps on the toy parity
task. Rank 0 writes what it saw (rewards, prompts, each process's scored pair count) as JSON, by experiment.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from accelerate.utils import gather_object
from transformers import AutoTokenizer

from envs import PromptBatchEnv
from rlprompt.checkpoint import load_checkpoint, seed_everything
from rlprompt.config import TrainConfig
from rlprompt.distributed import ShardedScorer, end_processes, is_main_process, pairs_scored_by_all, world_size
from rlprompt.errors import UserError
from rlprompt.models import resolve_model_path
from rlprompt.policy import PromptPolicy
from rlprompt.scorer import CachedScorer
from rlprompt.tasks import Example
from rlprompt.trainer import DataParallelTrainer
from tests.rl_helpers import TOY_EXAMPLES, ParityTaskLM, fresh_tiny_lm

# Seven examples of different lengths: two processes get 4 and 3, with different padding.
EXAMPLES = [Example(text, i % 2) for i, text in enumerate([
    "a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés",
    "fun", "an utterly charming and hilarious film that reminded me why i love going to the movies",
    "it 's a bad sign when you 're rooting for the film to end .", "not bad", "a masterpiece ."])]
PROMPTS = ["", "Rating:", "The critic's verdict was", "terrible great"]


def tokenizer():
    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def make_env(scorer, tok, examples, length=3, num_envs=4):
    decode = lambda ids: tok.decode(ids).strip()  # noqa: E731
    return PromptBatchEnv(scorer, examples, decode, len(tok), length, num_envs)


def reinforce_experiment(run_dir: Path) -> dict:
    """Sharded scoring of fixed prompts, then 3 REINFORCE steps with sharded scoring."""
    tok = tokenizer()
    verbalizers = [" terrible", " great"]
    scorer = CachedScorer(fresh_tiny_lm(tok, seed=0), tok, "{sentence} {prompt} It was", verbalizers)
    sharded = ShardedScorer(scorer)
    env = make_env(sharded, tok, EXAMPLES)
    fixed_rewards, fixed_accs = env.score_texts(PROMPTS)
    cfg = TrainConfig(steps=3, prompt_length=3, top_k=64, lr=3e-3, eval_every=2, patience=0,
                      checkpoint_every=3, adaptor_hidden=64, seed=0, prompts_per_step=4)
    seed_everything(cfg.seed)
    policy = PromptPolicy(fresh_tiny_lm(tok, seed=1), tok, cfg.prompt_length, cfg.top_k, cfg.adaptor_hidden)
    trainer = DataParallelTrainer(cfg, policy, env, env, run_dir)
    due = trainer.book.checkpoint_due  # a checkpoint due on rank 0 alone (its own clock) must still be everyone's
    trainer.book.checkpoint_due = lambda: due() or is_main_process()
    trainer.run(progress=False)
    trainer.book.run_dir = run_dir / "checkpoint.pt" / "inside"  # rank 0 cannot write there (a file is in the way)
    try:
        trainer.book.save()
        failed = None
    except UserError as e:
        failed = str(e)
    return {
        "world": world_size(),
        "checkpoint_errors": gather_object([failed]),
        "fixed_rewards": [float(r) for r in fixed_rewards], "fixed_accs": [float(a) for a in fixed_accs],
        "train_rewards": [h["charts/reward_mean"] for h in trainer.book.history],
        "prompts": list(trainer.book.leaderboard.records),
        "pairs_per_process": gather_object([scorer.pairs_scored]),
        "pairs_by_all": pairs_scored_by_all(sharded),
        "checkpoint_pairs": load_checkpoint(run_dir)["pairs_scored"],
    }


def trl_experiment(run_dir: Path) -> dict:
    """2 trl GRPO steps on the toy parity task (each process generates and scores half the group)."""
    from rlprompt.trl_trainer import GRPOPromptTrainer

    tok = tokenizer()
    cfg = TrainConfig(steps=2, prompt_length=3, top_k=64, lr=3e-3, eval_every=2, patience=0,
                      checkpoint_every=2, adaptor_hidden=64, seed=0, prompts_per_step=4, trainer="trl-grpo")
    seed_everything(cfg.seed)
    policy = PromptPolicy(fresh_tiny_lm(tok, seed=1), tok, cfg.prompt_length, cfg.top_k, cfg.adaptor_hidden)
    env = make_env(ShardedScorer(ParityTaskLM(tok)), tok, TOY_EXAMPLES)
    trainer = GRPOPromptTrainer(cfg, policy, env, env, run_dir)
    status = trainer.run(progress=False)
    return {
        "world": world_size(), "status": status,
        "train_rewards": [h["charts/reward_mean"] for h in trainer.book.history],
        "prompts_per_process": gather_object([list(trainer.book.leaderboard.records)]),
        "adaptor_sums": gather_object([sum(float(p.detach().sum()) for p in policy.adaptor.parameters())]),
    }


EXPERIMENTS = {"reinforce": reinforce_experiment, "trl-grpo": trl_experiment}


if __name__ == "__main__":
    kinds, out = sys.argv[1].split(","), Path(sys.argv[2])
    results = {kind: EXPERIMENTS[kind](out.parent / f"run-{kind}") for kind in kinds}
    if is_main_process():
        out.write_text(json.dumps(results))
    end_processes()
