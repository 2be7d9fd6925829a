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

The rewards come from the same batched env as the default trainer's: each process steps its share of the
group through an `envs.PromptBatchEnv` (on its process-local scorer), one token column per env step.
Leaderboard, dev evaluation, early stopping, TensorBoard scalars, checkpoint and resume are the default
Trainer's `Bookkeeper`, called from a trl callback, so a run writes the same files whichever trainer made it.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback

from envs import PromptBatchEnv, step_through
from rlprompt.bookkeeping import Bookkeeper, repeated_token_rate
from rlprompt.checkpoint import rng_state, set_rng_state
from rlprompt.distributed import unwrap_scorer, world_size
from rlprompt.errors import UserError
from rlprompt.trainer import make_optimizer


@contextlib.contextmanager
def trl_deprecations_quiet():
    """Silence the one FutureWarning trl itself triggers: it asks the model for `is_gradient_checkpointing`,
    which transformers 5.x deprecates. Every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


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


@contextlib.contextmanager
def masked_generation(policy):
    """Within the block `policy.model.generate` applies the policy's sampling mask: trl calls
    `model.generate(**inputs, generation_config=...)`, so the mask processor is bound to it."""
    model = policy.model
    mask = LogitsProcessorList([PolicyMaskProcessor(policy)])
    model.generate = functools.partial(type(model).generate, model, logits_processor=mask)
    try:
        yield
    finally:
        del model.generate


class GroupReward:
    """The trl reward function: the reward of each sampled prompt, from stepping this process's
    completions through a batched env like `train_env` (same examples and reward, process-local scorer).

    It also gathers the whole group from every process into the leaderboard and the step's metrics, so
    that they are the same on every process.
    """

    __name__ = "classification_reward"  # the name trl logs the reward under

    def __init__(self, train_env, book: Bookkeeper):
        self.train_env = train_env
        self.book = book
        self.envs: PromptBatchEnv | None = None
        self.metrics: dict = {}

    def batch_env(self, n: int) -> PromptBatchEnv:
        """The batched env for n completions, on the process-local scorer (trl gathers the rewards)."""
        if self.envs is None or self.envs.num_envs != n:
            e = self.train_env
            self.envs = PromptBatchEnv(unwrap_scorer(e.scorer), e.examples, e.decode, e.vocab_size,
                                       e.prompt_length, num_envs=n, reward_fn=e.reward_fn)
        return self.envs

    def __call__(self, prompts, completions, completion_ids, **_) -> list[float]:
        from accelerate.utils import gather_object

        t0 = time.perf_counter()
        rewards, infos = step_through(self.batch_env(len(completion_ids)), completion_ids)
        accuracies, texts = infos["accuracy"], list(infos["prompt"])
        score_s = time.perf_counter() - t0
        all_rewards = np.asarray(gather_object([float(r) for r in rewards]), dtype=np.float64)
        all_accs = np.asarray(gather_object([float(a) for a in accuracies]))
        all_texts = gather_object(list(texts))
        rows = gather_object([list(map(int, ids)) for ids in completion_ids])
        self.book.add_prompts(all_texts, all_rewards, all_accs)
        finite = all_rewards[np.isfinite(all_rewards)]
        self.metrics = {
            "charts/reward_mean": float(finite.mean()) if len(finite) else float("nan"),
            "charts/reward_max": float(finite.max()) if len(finite) else float("nan"),
            "charts/reward_std": float(finite.std(ddof=1)) if len(finite) > 1 else 0.0,
            "charts/train_acc": float(all_accs.mean()),
            "charts/train_acc_max": float(all_accs.max()),
            "charts/distinct_prompts": len(set(all_texts)) / len(all_texts),
            "charts/repeated_token_rate": repeated_token_rate(torch.tensor(rows)),
            "charts/prompts_seen": len(self.book.leaderboard.records),
            "charts/nonfinite_rewards": len(all_rewards) - len(finite),  # trl gives these zero advantage
            "time/score_s": score_s,
        }
        return [float(r) for r in rewards]


class BookkeepingCallback(TrainerCallback):
    """After every trl step: the default Trainer's metrics, then the Bookkeeper's end of step (dev
    evaluation, early stop, logging, checkpoints)."""

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
        t, book = self.trainer, self.trainer.book
        book.step = t.start_step + state.global_step
        metrics = dict(t.reward_fn.metrics)
        per_prompt = t.cfg.prompt_length  # trl's KL is a per-token mean; the default trainer logs the sum
        trl_names = {"loss": ("losses/loss", 1.0), "policy_loss": ("losses/policy_loss", 1.0),
                     "entropy": ("losses/entropy", 1.0), "kl": ("losses/kl_to_init", per_prompt),
                     "grad_norm": ("losses/grad_norm", 1.0), "step_time": ("time/step_s", 1.0)}
        for key, (name, scale) in trl_names.items():
            if key in logs:
                metrics[name] = float(logs[key]) * scale
        book.end_step(metrics, self.bar)
        if book.should_stop:
            control.should_training_stop = True
        return control


class GRPOPromptTrainer:
    """trl's GRPOTrainer on the policy, with the default Trainer's constructor, `run`, Bookkeeper and
    checkpoint."""

    def __init__(self, cfg, policy, train_env, dev_env, run_dir, writer=None):
        if cfg.init_prompt:
            raise UserError("--init-prompt works with --trainer reinforce only (trl samples without a bias)")
        if cfg.reward_scale <= 0:
            raise UserError(f"--reward-scale must be positive with --trainer trl-grpo: {cfg.reward_scale}")
        self.cfg = cfg
        self.policy = policy
        self.run_dir = Path(run_dir)
        self.optimizer = make_optimizer(cfg, policy.adaptor.parameters())
        self.generator = torch.Generator(device=policy.device).manual_seed(cfg.random_seed)  # saved, for resume
        self.book = Bookkeeper(cfg, policy, self.optimizer, self.generator, train_env, dev_env, run_dir, writer)
        self.reward_fn = GroupReward(train_env, self.book)
        self.start_step = 0
        self.resuming = False
        self._resume_rng = None
        self.trl = None

    def state_dict(self) -> dict:
        """The checkpoint's contents (see Bookkeeper.state_dict)."""
        return self.book.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Resume from a checkpoint's contents."""
        self.book.load_state_dict(state)

    def restore_random_state(self) -> None:
        """At the first step after a resume: the random state the checkpoint saved (one process: the
        run continues exactly as if never stopped), or a fresh per-process seed (several processes: the
        checkpoint holds rank 0's state only)."""
        from transformers import set_seed

        if world_size() == 1:
            set_rng_state(self._resume_rng, self.generator)
        else:
            set_seed(self.cfg.random_seed + self.book.step, device_specific=True)
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
            output_dir=str(self.run_dir), max_steps=max_steps, seed=cfg.random_seed,
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
        """trl's GRPOTrainer for the next `max_steps` steps, sharing this trainer's optimizer, with the
        adaptor-free reference model. Its generation applies the policy's mask inside `masked_generation`."""
        from datasets import Dataset
        from transformers import PrinterCallback, ProgressCallback
        from trl import GRPOTrainer

        policy, cfg = self.policy, self.cfg
        start_text = policy.tokenizer.decode(policy.start_ids)
        if policy.tokenizer(text=[start_text])["input_ids"][0] != list(policy.start_ids):
            raise UserError(f"the policy start {start_text!r} does not tokenize back to itself, which trl "
                            "needs; pass --policy-start TEXT")
        args = self.grpo_config(max_steps)  # beta 0 here, so trl loads no reference copy
        with trl_deprecations_quiet():
            trl = GRPOTrainer(
                model=policy.model, reward_funcs=self.reward_fn, args=args,
                train_dataset=Dataset.from_dict({"prompt": [start_text] * max_steps}),
                processing_class=policy.tokenizer, optimizers=(self.optimizer, None), callbacks=list(callbacks),
            )
        beta = cfg.kl_coef / cfg.reward_scale  # both trl terms are per-token means: see the docstring
        if beta:
            trl.beta = trl.args.beta = beta
            trl.ref_model = BaseModelReference(policy)
        for cb in (PrinterCallback, ProgressCallback):
            trl.remove_callback(cb)
        if trl.args.device != policy.device and not (trl.args.device.type == policy.device.type == "cpu"):
            raise UserError(f"trl runs on {trl.args.device} but the policy is on {policy.device}; "
                            "choose the GPU with CUDA_VISIBLE_DEVICES instead of --device")
        return trl

    def run(self, progress: bool = True) -> str:
        """Train with trl until the step budget, early stop or a signal; returns why it stopped."""
        book = self.book
        remaining = self.cfg.steps - book.step
        if remaining <= 0 or book.stop_reason is not None:
            return book.finish()
        self.start_step = book.step
        self.resuming = book.step > 0
        self._resume_rng = rng_state(self.generator)  # trl's set_seed overwrites the global state
        bar = book.progress_bar(progress, "train (trl-grpo)")
        with book.running(), masked_generation(self.policy), trl_deprecations_quiet():
            try:
                self.trl = self.build_trl(remaining, callbacks=[BookkeepingCallback(self, bar)])
                self.trl.train()
                return book.finish()
            finally:
                bar.close()
