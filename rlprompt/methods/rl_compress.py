"""RL prompt compression: the RL prompt writer trained to imitate a long instruction with a short
discrete prompt.

The teacher is the frozen task LM with a long instruction in the template's {prompt} slot. The
policy (rlprompt.policy.PromptPolicy) writes `prompt_length`-token prompts for that slot, and the
environment rewards each with −KL(teacher ‖ prompt) over the verbalizer distribution, averaged
over the unlabeled train sentences (rlprompt.rewards.DistillationReward). The training loop is
the ordinary rlprompt.trainer.Trainer; the dev environment ranks prompts by agreement with the
teacher's dev labels. The compressed prompt stays text: readable and usable with any scorer.

Budget: every (prompt, example) pair the task LM newly scores (teacher and students, train and
dev) is charged; memo hits are free. Test scoring is outside the budget.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

from envs import PromptBatchEnv, PromptClassificationEnv
from rlprompt.config import TrainConfig
from rlprompt.evaluation import accuracy, score_examples
from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult, register
from rlprompt.methods.budget import MODEL_PAIRS, BudgetedScorer, PairLedger
from rlprompt.methods.options import options_into
from rlprompt.methods.soft_common import require_train_dev_and_budget, score_teacher, seeded
from rlprompt.rewards import DistillationReward, verbalizer_kl
from rlprompt.trainer import Trainer

log = logging.getLogger(__name__)
DEV_CANDIDATES = 4  # Bookkeeper.evaluate_on_dev scores the greedy prompt and the best 3 unscored sampled ones


@dataclass
class RLCompressConfig:
    """Settings of rl-compress (ctx.options keys of the same names); the rest is TrainConfig's default."""

    prompt_length: int = 5  # tokens of the compressed prompt
    prompts_per_step: int = 8  # prompts sampled and scored per policy-gradient step
    lr: float = 1e-4  # Adam learning rate of the policy's adaptor
    top_k: int = 256  # top-k sampling while training
    kl_coef: float = 0.2  # KL(policy ‖ initial policy) weight
    entropy_coef: float = 0.01
    adaptor_hidden: int = 2048
    eval_every: int = 3  # steps between dev evaluations
    init_prompt: str | None = None  # warm start toward this prompt (e.g. the instruction's first words)
    test: bool = True  # score the chosen prompt on the test set (outside the budget)


class CompressionCurve:
    """Called after each of the Trainer's dev evaluations: notes the budget spent and the dev accuracy
    (against the gold labels) of the prompt the leaderboard ranks first."""

    def __init__(self, book, ledger: PairLedger, dev_env):
        self.book = book
        self.ledger = ledger
        self.dev_env = dev_env
        self.points: list[tuple[int, float]] = []

    def best_prompt(self) -> str:
        """The run's best prompt so far (the leaderboard's first)."""
        return self.book.leaderboard.best(1)[0].prompt

    def dev_accuracy(self, prompt: str) -> float:
        """Accuracy on dev against the gold labels (the dev env has scored it: a memo hit)."""
        lp = self.dev_env.scorer.score([prompt], self.dev_env.sentences)
        return float(accuracy(lp, [e.label for e in self.dev_env.examples])[0])

    def __call__(self, metrics: dict) -> None:
        self.points.append((self.ledger.used, self.dev_accuracy(self.best_prompt())))
        log.info("rl-compress step %d, %d pairs: greedy %r, best dev agreement %.3f (%r)", self.book.step,
                 self.ledger.used, metrics["greedy_prompt"], self.book.best_dev, self.best_prompt())


@register("rl-compress")
def run(ctx: MethodContext) -> MethodResult:
    """Compress a long instruction into a short discrete prompt with RL and a distillation reward."""
    from rlprompt.models import load_lm, pick_device
    from rlprompt.policy import PromptPolicy

    method = "rl-compress"
    cfg = options_into(RLCompressConfig(), ctx.options, method)
    task, tokenizer = ctx.task, ctx.task_tokenizer
    n_train, n_dev = len(task.train), len(task.dev)
    reserve = DEV_CANDIDATES * n_dev + n_train  # one last Trainer.evaluate after the budget runs out
    first_step = cfg.prompts_per_step * n_train
    require_train_dev_and_budget(task, method, ctx.pair_budget, n_train + n_dev + first_step + reserve,
                                 f"the teacher, one step of {cfg.prompts_per_step} prompts and a dev "
                                 "evaluation (at most)")
    start = time.perf_counter()
    ledger = PairLedger(ctx.pair_budget)
    scorer = BudgetedScorer(ctx.scorer, ledger, MODEL_PAIRS)
    teacher = score_teacher(ctx, scorer)
    instruction, teacher_tokens, teacher_train, teacher_dev = (teacher.instruction, teacher.tokens,
                                                               teacher.train, teacher.dev)

    train_cfg = TrainConfig(seed=ctx.seed, prompt_length=cfg.prompt_length, steps=10**9,
                            prompts_per_step=cfg.prompts_per_step, lr=cfg.lr, top_k=cfg.top_k,
                            kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef,
                            advantage="zscore",  # as measured in docs/methods.md; train.py's default is running
                            adaptor_hidden=cfg.adaptor_hidden, eval_every=cfg.eval_every, patience=0,
                            checkpoint_every=10**9, checkpoint_every_s=1e9, init_prompt=cfg.init_prompt,
                            device=ctx.device)
    with seeded(ctx.seed), tempfile.TemporaryDirectory(prefix="rl-compress-") as run_dir:
        policy_model, policy_tok = load_lm(ctx.policy_model, pick_device(ctx.device), "fp32")
        policy = PromptPolicy(policy_model, policy_tok, cfg.prompt_length, cfg.top_k, cfg.adaptor_hidden)
        vocab = policy_model.get_output_embeddings().weight.shape[0]
        decode = lambda ids: policy_tok.decode(ids).strip()  # noqa: E731
        train_env = PromptBatchEnv(scorer, task.train, decode, vocab, cfg.prompt_length, cfg.prompts_per_step,
                                   reward_fn=DistillationReward(teacher_train))
        dev_env = PromptClassificationEnv(scorer, task.dev, decode, vocab, cfg.prompt_length,
                                          reward_fn=DistillationReward(teacher_dev))
        trainer = Trainer(train_cfg, policy, train_env, dev_env, run_dir)
        book = trainer.book
        curve = CompressionCurve(book, ledger, dev_env)
        book.on_dev_evaluation.append(curve)
        ledger.budget -= reserve
        try:
            trainer.run(progress=False)  # patience 0 and no step limit: it ends when the budget does
        except BudgetExhausted:
            pass
        ledger.budget += reserve
        book.evaluate_on_dev()
    best = book.leaderboard.best(1)[0]
    dev_lp = scorer.score([best.prompt], dev_env.sentences)[0]  # scored by the dev env: a memo hit
    result_extra = {
        "teacher_instruction": instruction, "teacher_tokens": teacher_tokens,
        "dev_kl": float(verbalizer_kl(teacher_dev, dev_lp).mean()), "dev_agreement": best.dev_acc,
        "train_reward": best.train_reward, "train_agreement": best.train_acc,
        "teacher_dev_acc": float(accuracy(teacher_dev[None], [e.label for e in task.dev])[0]),
        "steps": book.step, "prompts_seen": len(book.leaderboard.records),
        "top_prompts": [{"prompt": r.prompt, "dev_agreement": r.dev_acc, "train_reward": r.train_reward}
                        for r in book.leaderboard.best(5)],
    }
    test_acc = None
    if cfg.test and task.test:
        test_labels = [e.label for e in task.test]
        lp = score_examples(ctx.scorer, [instruction, best.prompt], task.test, progress=False)  # (2, E, V)
        test_acc = float(accuracy(lp[1:], test_labels)[0])
        result_extra.update({"test_kl": float(verbalizer_kl(lp[0], lp[1]).mean()),
                             "test_agreement": float((lp[0].argmax(-1) == lp[1].argmax(-1)).float().mean()),
                             "teacher_test_acc": float(accuracy(lp[:1], test_labels)[0]),
                             "test_pairs_outside_budget": 2 * len(task.test)})
    prompt_tokens = len(tokenizer(" " + best.prompt, add_special_tokens=False).input_ids)
    result_extra["compression_ratio"] = teacher_tokens / max(prompt_tokens, 1)
    return MethodResult(
        method=method, prompt=best.prompt, prompt_tokens=prompt_tokens,
        dev_acc=curve.dev_accuracy(best.prompt), test_acc=test_acc, pairs_scored=ledger.used,
        wall_s=time.perf_counter() - start, curve=curve.points, extra=result_extra,
    )
