"""Assemble a run from its config: the task LM's scorer, the policy, the train/dev environments and
the training loop that --trainer names."""

from __future__ import annotations

from rlprompt.config import TrainConfig


def build(cfg: TrainConfig, task, task_lm=None):
    """Task-LM scorer, policy and the train/dev environments of a config and its task. `task_lm`:
    the (model, tokenizer) of the task LM when already loaded."""
    from rlprompt.distributed import process_device
    from rlprompt.models import load_lm

    scorer = build_task_scorer(cfg, task, task_lm)
    policy_model, policy_tok = load_lm(cfg.policy_model, process_device(cfg.device), "fp32", cfg.allow_download)
    policy, train_env, dev_env = build_policy_and_envs(cfg, policy_model, policy_tok, scorer, task)
    return scorer, policy, train_env, dev_env


def build_task_scorer(cfg: TrainConfig, task, task_lm=None):
    """The config's task-LM scorer for `task`: its template, verbalizers, precision and calibration (the
    vector estimated on the task's unlabeled train inputs); sharded under `accelerate launch`."""
    from rlprompt.calibration import calibrated, unlabeled_inputs
    from rlprompt.distributed import ShardedScorer, process_device, world_size
    from rlprompt.models import load_lm
    from rlprompt.scorer import build_scorer

    task_model, task_tok = task_lm or load_lm(cfg.task_model, process_device(cfg.device), cfg.task_dtype,
                                              cfg.allow_download)
    scorer = build_scorer(task_model, task_tok, task.template, task.verbalizers)
    if world_size() > 1:  # under `accelerate launch`: each process scores its share of the examples
        scorer = ShardedScorer(scorer)
    return calibrated(scorer, cfg.calibration, unlabeled_inputs(task.train))  # the reward's and dev's


def build_policy_and_envs(cfg: TrainConfig, policy_model, policy_tok, scorer, task):
    """The policy on a loaded policy LM, the batched train env (cfg.prompts_per_step prompts per
    batch) and the dev env, both scoring with `scorer`."""
    from envs import PromptBatchEnv, PromptClassificationEnv
    from rlprompt.policy import PromptPolicy

    policy = PromptPolicy(policy_model, policy_tok, cfg.prompt_length, cfg.top_k, cfg.adaptor_hidden,
                          cfg.no_repeat, cfg.policy_start, cfg.prompt_vocab)
    vocab = policy_model.get_output_embeddings().weight.shape[0]
    decode = lambda ids: policy_tok.decode(ids).strip()  # noqa: E731
    examples = reward_examples(cfg, task)
    train_env = PromptBatchEnv(reward_scorer(cfg, scorer, examples), examples, decode, vocab, cfg.prompt_length,
                               cfg.prompts_per_step)
    dev_env = PromptClassificationEnv(scorer, task.dev, decode, vocab, cfg.prompt_length)
    return policy, train_env, dev_env


def reward_scorer(cfg: TrainConfig, scorer, examples: list):
    """The reward's scorer: `scorer`, or with batch calibration and more reward `examples` than the
    estimation sample (a large train file, scored in fresh mini-batches), its view that calibrates each
    step's prompts on that step's own mini-batch instead of estimating a vector per new prompt."""
    from rlprompt.calibration import MAX_UNLABELED, CalibratedScorer

    many = len(examples) > max(MAX_UNLABELED, cfg.train_batch)
    if isinstance(scorer, CalibratedScorer) and scorer.mode == "batch" and many:
        return scorer.per_call_view()
    return scorer


def reward_examples(cfg: TrainConfig, task) -> list:
    """The labelled examples the reward scores: the train split, or train and dev (--reward-on train+dev)."""
    return list(task.train) + (list(task.dev) if cfg.reward_on == "train+dev" else [])


def trainer_class(cfg: TrainConfig):
    """The loop of --trainer: the REINFORCE Trainer (data-parallel under accelerate), or trl's GRPO."""
    from rlprompt.distributed import world_size
    from rlprompt.trainer import DataParallelTrainer, Trainer

    if cfg.trainer == "trl-grpo":
        from rlprompt.trl_trainer import GRPOPromptTrainer

        return GRPOPromptTrainer
    return DataParallelTrainer if world_size() > 1 else Trainer
