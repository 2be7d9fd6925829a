"""Training configuration: one dataclass, one help line per field, parsed into --kebab-case flags."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

from rlprompt.errors import UserError
from rlprompt.tasks import TaskSpec, spec_from_flags
from rlprompt.templates import NAMED_TEMPLATES


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


TRAINERS = ("reinforce", "sql", "trl-grpo")
ADVANTAGES = ("zscore", "running")
OPTIMIZERS = ("adam", "sgd")
SELECTIONS = ("dev", "train+dev")
REWARD_ON = ("train", "train+dev")
PROMPT_VOCABS = ("all", "words")
LOGPROBS = ("full", "masked")


@dataclass
class TaskArgs:
    """Which task: a preset, a task file, or the user's own data files, with any field overridden."""

    task: str | None = _f(None, "task preset (sst2, mr, agnews) or a task file (.yaml/.json); default "
                          "sst2, unless --train names data of your own")
    task_file: str | None = _f(None, "a task file (YAML/JSON) saved earlier with --save-task")
    data_dir: str | None = _f(None, "folder of the few-shot data (default $RLPROMPT_DATA or ../shared/data)")
    seed: int = _f(13, "16-shot split of the presets (13, 21, 42, 87, 100) and the random seed of the run")
    train: str | None = _f(None, "train data of your own task: .csv, .tsv or .jsonl (hf:NAME@SPLIT online)")
    dev: str | None = _f(None, "dev data (default: a stratified share of --train)")
    test: str | None = _f(None, "test data (default: none, test accuracy not reported)")
    text_column: str | None = _f(None, "column holding the input text (default: sentence/text/review/...)")
    label_column: str | None = _f(None, "column holding the label (default: label/class/stars/...)")
    labels: str | None = _f(None, "comma-separated label names in the data, e.g. bad,good (default: "
                            "the distinct labels of --train)")
    verbalizers: str | None = _f(None, 'one token per label, comma-separated, e.g. " terrible"," great" '
                                 "(default: the preset's; for data of your own, picked by train.py's search)")
    template: str | None = _f(None, "template with {sentence} and {prompt}, or a written one by name: "
                              f"{', '.join(NAMED_TEMPLATES)} (default: the preset's; for data of your own, "
                              "train.py and evaluate.py pick one by search)")
    manual_prompt: str | None = _f(None, "the hand-written prompt shown as a baseline")
    dev_fraction: float | None = _f(None, "share of each class split off --train as dev when no --dev (0.2; "
                                    "at most about 500 examples, as every dev check scores them all)")
    save_task: str | None = _f(None, "also write the task as a reusable task file (.yaml or .json)")

    def task_spec(self) -> TaskSpec:
        """The TaskSpec these flags describe."""
        return spec_from_flags(self.task, self.task_file, self.train, dev=self.dev, test=self.test,
                               text_column=self.text_column, label_column=self.label_column,
                               labels=self.labels, verbalizers=self.verbalizers, template=self.template,
                               manual_prompt=self.manual_prompt, dev_fraction=self.dev_fraction)


@dataclass
class TrainConfig(TaskArgs):
    """A training run: the task flags plus the models, the budget and the RL settings."""

    policy_model: str = _f("smollm2-135m", "policy LM: embedded name, local path or HF id")
    task_model: str = _f("smollm2-135m", "task LM that scores prompts: embedded name, local path or HF id")
    task_dtype: str = _f("auto", "task LM precision for scoring: auto (bf16 on GPUs and CPUs with "
                         "AVX512-BF16/AMX, else fp32), bf16, fp16 or fp32")
    run_seed: int | None = _f(None, "random seed of the RL run alone (adaptor init, sampling, train mini-batches; "
                              "default --seed): another value re-draws the run on the same split and baselines")
    prompt_length: int = _f(5, "tokens per prompt")
    steps: int = _f(240, "policy-gradient steps (the budget)")
    prompts_per_step: int = _f(16, "prompts sampled and scored per step")
    lr: float = _f(3e-5, "learning rate of the adaptor (--optimizer)")
    optimizer: str = _f("adam", "the adaptor's optimizer: adam, or sgd (plain gradient descent: a step's size "
                        "follows its gradient, where Adam's is about --lr per weight however small the "
                        "advantages; pair it with a larger --max-grad-norm, as clipping at 1 fixes the size too)")
    top_k: int = _f(256, "top-k sampling while training")
    prompt_vocab: str = _f("all", "tokens the policy may write: all (every token but special ones and those "
                           "holding a newline) or words (only tokens that are a space and letters, such as "
                           "' great': prompts of whole words)")
    entropy_coef: float = _f(0.01, "entropy bonus weight (with --entropy-target: its starting and lowest value)")
    entropy_target: float = _f(0.0, "hold the sampling entropy near this many nats per token with an adaptive "
                               "entropy coefficient, as SAC tunes its temperature (0: the fixed --entropy-coef)")
    entropy_coef_lr: float = _f(0.5, "--entropy-target: step of log(entropy coefficient) per nat of entropy "
                                "below the target (the coefficient stays between --entropy-coef and 100)")
    update_kl: float = _f(0.0, "trust region: the learning rate halves when one update moves the policy by more "
                          "than 2x this KL (nats per token, on the step's prompts) and regrows up to --lr below "
                          "half of it (0: a fixed --lr)")
    elite_coef: float = _f(0.0, "weight of the elite term: raise the log-likelihood of the --elite-size best "
                           "prompts so far by train reward (cross-entropy method; 0: off)")
    elite_size: int = _f(8, "prompts in the elite")
    logprobs: str = _f("full", "the distribution the update's log-probs, entropy and KL are taken over (reinforce): "
                       "full (the adapted LM's whole softmax) or masked (only the tokens sampling may draw: no "
                       "special or newline tokens, nor, with --no-repeat, those already in the prompt)")
    cov_clip: float = _f(0.0, "Clip-Cov (Cui et al. 2025): each update leaves out the policy-gradient term of this "
                         "fraction of the step's sampled tokens, those whose log-prob and advantage covary most "
                         "(the terms that sharpen the policy fastest); 0: off")
    sql_target_rate: float = _f(0.01, "--trainer sql: Polyak rate of the target adaptor per step")
    sql_replay: int = _f(1024, "--trainer sql: past prompts kept for replay (each step replays as many as it samples)")
    kl_coef: float = _f(0.2, "weight of KL(policy ‖ initial policy) per token: keeps exploration alive")
    reward_scale: float = _f(5.0, "the advantages (see --advantage) are multiplied by this before the update")
    advantage: str = _f("running", "how a step's rewards become advantages (reinforce): running (minus the "
                        "step's mean, over a running std of the rewards: updates shrink as the sampled prompts' "
                        "rewards agree) or zscore (minus the step's mean, over the step's std)")
    advantage_decay: float = _f(0.99, "--advantage running: per-step decay of the running reward variance")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    no_repeat: bool = _f(True, "forbid a token twice in one prompt (--no-no-repeat allows it)")
    adaptor_hidden: int = _f(2048, "hidden width of the adaptor MLP")
    eval_every: int = _f(10, "evaluate the greedy prompt and the best sampled ones on dev every N steps")
    patience: int = _f(10, "stop after this many evaluations without a better dev accuracy (0: never)")
    selection: str = _f("dev", "how the final prompt is chosen among the dev-scored ones: dev (dev accuracy) "
                        "or train+dev (accuracy over train and dev examples together: less noise)")
    reward_on: str = _f("train", "labelled examples the reward scores: train (dev stays held out for the dev checks "
                        "and the final pick) or train+dev (twice the examples to fit; the dev checks then score "
                        "examples the policy was trained on)")
    top_prompts: int = _f(5, "prompts kept in prompts.json")
    test_prompts: int = _f(1, "how many of the best prompts are scored on test: 1, the chosen one (default), "
                           "up to --top-prompts; evaluate.py --run scores more later")
    init_prompt: str | None = _f(None, "warm start: bias the first samples toward this prompt")
    init_steps: int = _f(20, "steps over which the --init-prompt bias decays to zero")
    policy_start: str | None = _f(None, "text the policy starts writing after (default <|endoftext|>)")
    calibration: str = _f("batch", "calibrated scoring for the reward, dev selection and test: batch (subtract "
                          "the prompt's mean verbalizer log-softmax over the unlabeled train inputs), contextual "
                          "(the same over content-free inputs such as 'N/A') or none; see docs/calibration.md")
    trainer: str = _f("reinforce", "reinforce (the built-in policy-gradient loop), sql (RLPrompt's soft "
                      "Q-learning in the same loop) or trl-grpo (trl's GRPOTrainer on the same policy, reward "
                      "and masks)")
    device: str = _f("auto", "cpu, cuda, cuda:1 … (auto: CUDA when available)")
    out: str | None = _f(None, "run folder (default runs/<task>__<seed>__<time>)")
    checkpoint_every: int = _f(20, "write the checkpoint after step 1, then every N steps (or sooner, see "
                               "--checkpoint-every-s)")
    checkpoint_every_s: float = _f(60.0, "also write the checkpoint when this many seconds passed since the "
                                   "last one, so a hard kill loses at most about this much training")
    train_batch: int = _f(32, "train examples that score each step's prompts: all of them in file order when the "
                          "train split has at most N, else a fresh seeded random mini-batch of N each step (--trainer "
                          "reinforce and sql; trl-grpo scores all)")
    resume: str | None = _f(None, "run folder to resume from its checkpoint")
    overwrite: bool = _f(False, "let --out name a folder that holds another run: it is moved aside to "
                         "<out>.old-<time> first (never mixed)")
    allow_download: bool = _f(False, "allow fetching models from the Hugging Face hub")
    baselines: bool = _f(True, "score the baselines (no prompt, the best manual prompt on dev, 4-shot demos, each "
                         "also batch-calibrated) on dev and test for the summary (--no-baselines skips them)")
    skip_test: bool = _f(False, "do not score the final prompts on the test set")
    auto_template: bool = _f(False, "pick the template by search (no prompt, train+dev accuracy) among the "
                             "written ones and the task's own; the default for data of your own without "
                             "--template (python -m rlprompt.template_search prints the ranking)")
    auto_verbalizers: bool = _f(False, "pick one label word per class by the same search among the task LM's "
                                "single tokens nearest the label names and a few synonyms; the default for "
                                "data of your own without --verbalizers")

    @property
    def random_seed(self) -> int:
        """The seed of the run's randomness: --run-seed, else --seed (which also names the split)."""
        return self.seed if self.run_seed is None else self.run_seed

    def __post_init__(self):
        check_numbers(self, NUMBER_RULES)
        from rlprompt.calibration import check_mode

        check_mode(self.calibration)
        if self.trainer not in TRAINERS:
            raise UserError(f"unknown --trainer {self.trainer!r}; use {', '.join(TRAINERS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown --optimizer {self.optimizer!r}; use {' or '.join(OPTIMIZERS)}")
        if self.advantage not in ADVANTAGES:
            raise UserError(f"unknown --advantage {self.advantage!r}; use {' or '.join(ADVANTAGES)}")
        if self.selection not in SELECTIONS:
            raise UserError(f"unknown --selection {self.selection!r}; use {' or '.join(SELECTIONS)}")
        if self.logprobs not in LOGPROBS:
            raise UserError(f"unknown --logprobs {self.logprobs!r}; use {' or '.join(LOGPROBS)}")
        if self.prompt_vocab not in PROMPT_VOCABS:
            raise UserError(f"unknown --prompt-vocab {self.prompt_vocab!r}; use {' or '.join(PROMPT_VOCABS)}")
        if self.reward_on not in REWARD_ON:
            raise UserError(f"unknown --reward-on {self.reward_on!r}; use {' or '.join(REWARD_ON)}")
        if self.trainer != "reinforce":  # another trainer would silently leave these out
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            given = [name for name in REINFORCE_ONLY if getattr(self, name) != defaults[name]]
            if given:
                raise UserError(f"--{given[0].replace('_', '-')} works with --trainer reinforce only, "
                                f"not {self.trainer}")
            if self.trainer == "trl-grpo" and self.update_kl:
                raise UserError("--update-kl works with --trainer reinforce or sql, not trl-grpo")
        if self.resume and self.overwrite:
            raise UserError("--overwrite starts a new run in the folder and --resume continues the run there; "
                            "give one of them")


# settings that only the REINFORCE objective reads: another trainer refuses any value but the default (off)
# (--update-kl: every trainer but trl-grpo)
REINFORCE_ONLY = ("entropy_target", "cov_clip", "elite_coef", "logprobs")

# flag -> (lowest, highest, what to say): ints and floats must be finite and inside [lowest, highest]
NUMBER_RULES = {
    "seed": (0, 2**32 - 1, "a whole number from 0 to 2**32-1"),
    "run_seed": (0, 2**32 - 1, "a whole number from 0 to 2**32-1"),
    "dev_fraction": (1e-9, 1 - 1e-9, "between 0 and 1 (exclusive)"),
    "prompt_length": (1, None, "at least 1"),
    "steps": (1, None, "at least 1"),
    "prompts_per_step": (2, None, "at least 2 (rewards are normalized across them)"),
    "lr": (1e-300, None, "positive"),
    "top_k": (1, None, "at least 1"),
    "entropy_coef": (0, None, "zero or more"),
    "entropy_target": (0, None, "zero (off) or a positive number of nats per token"),
    "entropy_coef_lr": (0, None, "zero or more"),
    "elite_coef": (0, None, "zero or more"),
    "update_kl": (0, None, "zero (off) or a positive KL in nats per token"),
    "elite_size": (1, None, "at least 1"),
    "cov_clip": (0, 1, "a fraction from 0 (off) to 1"),
    "sql_target_rate": (1e-300, 1, "in (0, 1]"),
    "sql_replay": (1, None, "at least 1"),
    "kl_coef": (0, None, "zero or more"),
    "reward_scale": (1e-300, None, "positive"),
    "advantage_decay": (0, 1 - 1e-9, "in [0, 1)"),
    "max_grad_norm": (1e-300, None, "positive"),
    "adaptor_hidden": (1, None, "at least 1"),
    "eval_every": (1, None, "at least 1"),
    "patience": (0, None, "zero (never stop early) or more"),
    "top_prompts": (1, None, "at least 1"),
    "test_prompts": (1, None, "at least 1 (--skip-test scores none)"),
    "init_steps": (0, None, "zero or more"),
    "checkpoint_every": (1, None, "at least 1"),
    "checkpoint_every_s": (1e-300, None, "a positive number of seconds"),
    "train_batch": (1, None, "at least 1"),
}


def check_numbers(values, rules: dict) -> None:
    """A UserError naming the flag of the first number in `values` (attributes) that is NaN, infinite or
    outside its rule's range; None values are skipped (not given)."""
    for name, (low, high, what) in rules.items():
        value = getattr(values, name, None)
        if value is None or isinstance(value, bool):
            continue
        bad = not math.isfinite(value) or value < low or (high is not None and value > high)
        if bad:
            raise UserError(f"--{name.replace('_', '-')} must be {what}, got {value}")


def add_arguments(parser: argparse.ArgumentParser, cls=None) -> None:
    """One --flag per dataclass field (of TrainConfig by default), its help the field's help line."""
    for f in dataclasses.fields(cls or TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata["help"] + (f" (default: {f.default})" if f.default is not None else "")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        kind = {"int": int, "float": float}.get(str(f.type).replace(" | None", ""), str)
        parser.add_argument(flag, type=kind, default=f.default, help=help_)
