"""Train the prompt policy with trl's GRPOTrainer (`train.py --trainer trl-grpo`).

The policy is handed to trl as what it already is, one ordinary causal LM whose only trainable weights are
the adaptor inside its backbone (after the final norm, so trl's fused log-prob head sees it). trl is given:

- as the GRPO "prompt", the policy's fixed start text; as the completion, the prompt it writes
  (`max_completion_length = prompt_length`), and `num_generations = prompts_per_step`: one GRPO group per
  step is the step's sampled prompts, so GRPO's group-normalized advantage is RLPrompt's per-step z-score;
- the policy's own sampling mask (special and newline tokens, no repeated token) as a LogitsProcessor,
  applied before top-k exactly as `PromptPolicy.sample` does, so both trainers sample the same space;
- as the reward function, the same env scorer and RLPrompt reward as the default trainer;
- as the reference model for the KL term, the same model with the adaptor bypassed. The adaptor starts as
  the identity, so that is the initial policy, and no second copy of the LM is loaded.

With `num_iterations=1` the GRPO ratio is 1 and its clipping never acts: the update is the policy
gradient with the group z-score as advantage, the default trainer's update. trl's loss is a per-token
mean where the default trainer sums over tokens and scales the advantage by `reward_scale`, so the KL and
entropy weights and the clipping norm are divided by `reward_scale * prompt_length` to keep every term in
the same proportion (Adam does not care about the overall scale). What still differs: trl's group std is
the unbiased one (+1e-4), and its KL is the k3 estimate on the sampled tokens (with the importance
correction that makes its gradient unbiased) rather than the exact KL over the vocabulary.

Leaderboard, dev evaluation, early stopping, TensorBoard scalars, checkpoint and resume are the default
Trainer's (this class extends it), so a run writes the same files whichever trainer made it.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback

from rlprompt.checkpoint import rng_state, set_rng_state
from rlprompt.distributed import SaveOnMainProcess, unwrap_scorer, world_size
from rlprompt.errors import UserError
from rlprompt.trainer import Trainer, repeated_token_rate


class PolicyMaskProcessor(LogitsProcessor):
    """The policy's sampling mask as a transformers LogitsProcessor, for `generate()`.

    Columns after the first `start_length` of `input_ids` are the prompt written so far (trl's prompts
    are all the same start text, so there is no padding in front).
    """

    def __init__(self, policy):
        self.policy = policy
        self.start_length = len(policy.start_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # The very mask PromptPolicy.sample applies, so both trainers sample from the same tokens.
        return self.policy._mask(scores, input_ids[:, self.start_length:])


class BaseModelReference:
    """trl's reference model without a copy: the policy's model called with the adaptor bypassed."""

    def __init__(self, policy):
        self.policy = policy

    @torch.no_grad()
    def __call__(self, *args, **kwargs):
        with self.policy.base_model_only():
            return self.policy.model(*args, **kwargs)


class GroupReward:
    """The trl reward function: RLPrompt's classification reward of each sampled prompt, scored by `env`.

    It also gathers the whole group from every process into the leaderboard and the step's metrics, so
    that they are the same on every process.
    """

    __name__ = "classification_reward"  # the name trl logs the reward under

    def __init__(self, env, trainer: "GRPOPromptTrainer"):
        self.env = env
        self.trainer = trainer
        self.metrics: dict = {}

    def __call__(self, prompts, completions, completion_ids, **_) -> list[float]:
        from accelerate.utils import gather_object

        t0 = time.perf_counter()
        rewards, accuracies, texts = self.env.score_batch(completion_ids)
        score_s = time.perf_counter() - t0
        all_rewards = np.asarray(gather_object([float(r) for r in rewards]), dtype=np.float64)
        all_accs = np.asarray(gather_object([float(a) for a in accuracies]))
        all_texts = gather_object(list(texts))
        rows = gather_object([list(map(int, ids)) for ids in completion_ids])
        self.trainer.leaderboard.add(all_texts, all_rewards, all_accs, self.trainer.step)
        finite = all_rewards[np.isfinite(all_rewards)]
        self.metrics = {
            "charts/reward_mean": float(finite.mean()) if len(finite) else float("nan"),
            "charts/reward_max": float(finite.max()) if len(finite) else float("nan"),
            "charts/reward_std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            "charts/train_acc": float(all_accs.mean()),
            "charts/train_acc_max": float(all_accs.max()),
            "charts/distinct_prompts": len(set(all_texts)) / len(all_texts),
            "charts/repeated_token_rate": repeated_token_rate(torch.tensor(rows)),
            "charts/prompts_seen": len(self.trainer.leaderboard.records),
            "charts/nonfinite_rewards": len(all_rewards) - len(finite),  # trl gives these zero advantage
            "time/score_s": score_s,
        }
        return [float(r) for r in rewards]


def _grpo_trainer_class():
    from trl import GRPOTrainer

    class AdaptorGRPOTrainer(GRPOTrainer):
        """GRPOTrainer on a PromptPolicy: the policy's sampling mask and the adaptor-free reference."""

        def __init__(self, policy, beta: float, **kwargs):
            super().__init__(**kwargs)  # args.beta is 0 here, so trl loads no reference copy
            self.policy = policy
            self.policy_mask = LogitsProcessorList([PolicyMaskProcessor(policy)])
            if beta:
                self.beta = self.args.beta = beta
                self.ref_model = BaseModelReference(policy)

        def _generate_single_turn(self, *args, **kwargs):
            # trl calls model.generate(**inputs, generation_config=...): bind the mask processor to it.
            model = self.policy.model
            model.generate = functools.partial(type(model).generate, model, logits_processor=self.policy_mask)
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                del model.generate

    return AdaptorGRPOTrainer


class _Bookkeeping(TrainerCallback):
    """After every trl step: the default Trainer's metrics, dev evaluation, early stop and checkpoints."""

    def __init__(self, trainer: "GRPOPromptTrainer", bar):
        self.trainer = trainer
        self.bar = bar

    def on_step_begin(self, args, state, control, **kwargs):
        if self.trainer.resuming:
            self.trainer.restore_random_state()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:  # trl's end-of-training summary
            return
        t, cfg = self.trainer, self.trainer.cfg
        t.step = t.start_step + state.global_step
        metrics = dict(t.reward_fn.metrics)
        per_prompt = cfg.prompt_length  # trl's KL is a per-token mean; the default trainer logs the sum
        trl_names = {"loss": ("losses/loss", 1.0), "policy_loss": ("losses/policy_loss", 1.0),
                     "entropy": ("losses/entropy", 1.0), "kl": ("losses/kl_to_init", per_prompt),
                     "grad_norm": ("losses/grad_norm", 1.0), "step_time": ("time/step_s", 1.0)}
        for key, (name, scale) in trl_names.items():
            if key in logs:
                metrics[name] = float(logs[key]) * scale
        t.end_step(metrics, self.bar)
        if t.stop_reason is not None or t._signal is not None:
            control.should_training_stop = True
        return control


class GRPOPromptTrainer(SaveOnMainProcess, Trainer):
    """The default Trainer's bookkeeping around trl's GRPOTrainer: same constructor, `run`, checkpoint."""

    def __init__(self, cfg, policy, train_env, dev_env, run_dir, writer=None):
        super().__init__(cfg, policy, train_env, dev_env, run_dir, writer)
        if cfg.init_prompt:
            raise UserError("--init-prompt works with --trainer reinforce only (trl samples without a bias)")
        if cfg.reward_scale <= 0:
            raise UserError(f"--reward-scale must be positive with --trainer trl-grpo: {cfg.reward_scale}")
        from envs import PromptClassificationEnv

        # Each process scores only its own completions; trl gathers the rewards before normalizing them.
        reward_env = PromptClassificationEnv(unwrap_scorer(train_env.scorer), train_env.examples,
                                             train_env.decode, train_env.vocab_size, train_env.prompt_length)
        self.reward_fn = GroupReward(reward_env, self)
        self.start_step = 0
        self.resuming = False
        self._resume_rng = None
        self.trl = None

    def restore_random_state(self) -> None:
        """At the first step after a resume: the random state the checkpoint saved (one process: the
        run continues exactly as if never stopped), or a fresh per-process seed (several processes: the
        checkpoint holds rank 0's state only)."""
        from transformers import set_seed

        if world_size() == 1:
            set_rng_state(self._resume_rng, self.generator)
        else:
            set_seed(self.cfg.seed + self.step, device_specific=True)
        self.resuming = False

    def grpo_config(self, max_steps: int):
        """trl's GRPOConfig for this run (see the module docstring for the mapping)."""
        from trl import GRPOConfig

        cfg = self.cfg
        world = world_size()
        if cfg.prompts_per_step % world:
            raise UserError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of the number of "
                            f"processes ({world}) with --trainer trl-grpo")
        loss_scale = cfg.reward_scale * cfg.prompt_length  # default trainer's loss / trl's loss
        return GRPOConfig(
            output_dir=str(self.run_dir), max_steps=max_steps, seed=cfg.seed,
            per_device_train_batch_size=cfg.prompts_per_step // world, gradient_accumulation_steps=1,
            num_generations=cfg.prompts_per_step, max_completion_length=cfg.prompt_length,
            temperature=1.0, top_k=cfg.top_k, top_p=1.0, num_iterations=1, loss_type="grpo",
            scale_rewards="group", beta=0.0, entropy_coef=cfg.entropy_coef / loss_scale,
            learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=cfg.max_grad_norm / loss_scale,
            use_cpu=self.policy.device.type == "cpu", bf16=False, fp16=False, activation_checkpointing=False,
            use_vllm=False, disable_dropout=True, shuffle_dataset=False, dataloader_num_workers=0,
            logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
        )

    def build_trl(self, max_steps: int, callbacks=()):
        """The trl GRPOTrainer for the next `max_steps` steps, sharing this trainer's optimizer."""
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback

        policy, cfg = self.policy, self.cfg
        start_text = policy.tokenizer.decode(policy.start_ids)
        if policy.tokenizer(text=[start_text])["input_ids"][0] != list(policy.start_ids):
            raise UserError(f"the policy start {start_text!r} does not tokenize back to itself, which trl "
                            "needs; pass --policy-start TEXT")
        args = self.grpo_config(max_steps)
        beta = cfg.kl_coef / cfg.reward_scale  # both trl terms are per-token means: see the docstring
        trl = _grpo_trainer_class()(
            policy=policy, beta=beta, model=policy.model, reward_funcs=self.reward_fn, args=args,
            train_dataset=Dataset.from_dict({"prompt": [start_text] * max_steps}),
            processing_class=policy.tokenizer, optimizers=(self.optimizer, None), callbacks=list(callbacks),
        )
        for cb in (PrinterCallback, ProgressCallback):
            trl.remove_callback(cb)
        if trl.args.device != policy.device and not (trl.args.device.type == policy.device.type == "cpu"):
            raise UserError(f"trl runs on {trl.args.device} but the policy is on {policy.device}; "
                            "choose the GPU with CUDA_VISIBLE_DEVICES instead of --device")
        return trl

    def run(self, progress: bool = True) -> str:
        """Train with trl until the step budget, early stop or a signal; returns why it stopped."""
        cfg = self.cfg
        remaining = cfg.steps - self.step
        if remaining <= 0 or self.stop_reason is not None:
            return self.finish()
        self.start_step = self.step
        self.resuming = self.step > 0
        self._resume_rng = rng_state(self.generator)  # trl's set_seed overwrites the global state
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="train (trl-grpo)",
                   unit="step")
        with self.running():
            try:
                self.trl = self.build_trl(remaining, callbacks=[_Bookkeeping(self, bar)])
                self.trl.train()
                return self.finish()
            finally:
                bar.close()
