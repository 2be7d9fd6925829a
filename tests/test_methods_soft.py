"""Soft prompt tuning, prefix tuning, context distillation into soft tokens and RL prompt
compression, on tiny random models: each does what it says, within its pair budget, under a seed."""

import dataclasses

import numpy as np
import pytest
import torch

from envs import PromptBatchEnv, PromptClassificationEnv
from rlprompt.errors import UserError
from rlprompt.methods import BudgetExhausted, MethodContext, get_method
from rlprompt.methods import rl_compress  # noqa: F401  (registers rl-compress)
from rlprompt.methods.distill import SlotSoftPrompt, distill_soft_prompt
from rlprompt.methods.budget import MODEL_PAIRS, BudgetedScorer, PairLedger
from rlprompt.methods.options import options_into
from rlprompt.methods.soft_prompt import PeftSoftPrompt, SoftPromptConfig, init_token_ids, train_soft_prompt
from rlprompt.rewards import DistillationReward, verbalizer_kl
from rlprompt.scorer import CachedScorer, PromptEncoder
from rlprompt.tasks import Example, Task
from tests.rl_helpers import TOY_EXAMPLES, ParityTaskLM, fresh_tiny_lm

TEMPLATE = "{sentence} {prompt} It was"
VERBALIZERS = [" terrible", " great"]
POSITIVE = ["good fun", "great joy all the way", "a lovely film", "superb acting", "warm and witty",
            "a real delight", "moving and bright", "pure joy"]
NEGATIVE = ["bad mess", "an awful bore", "dull and flat", "a total waste of time", "weak plot",
            "tedious , ugly film", "painfully slow", "a dreary failure"]
INSTRUCTION = ("Decide if the review above is positive or negative: praise means great, "
               "complaints mean terrible. The answer is")


def toy_task() -> Task:
    """8 train, 4 dev, 4 test examples; labels follow the words."""
    def ex(i, j):
        return [Example(POSITIVE[k], 1) for k in range(i, j)] + [Example(NEGATIVE[k], 0) for k in range(i, j)]
    return Task(name="toy", label_names=["negative", "positive"], verbalizers=VERBALIZERS,
                template=TEMPLATE, train=ex(0, 4), dev=ex(4, 6), test=ex(6, 8),
                manual_prompt="Overall, what did the reviewer think")


def skewed_task() -> Task:
    """6 positive and 2 negative train examples, also used as dev: a soft prompt can lower the loss
    even on a random model, by moving the label bias."""
    train = [Example(t, 1) for t in POSITIVE[:6]] + [Example(t, 0) for t in NEGATIVE[:2]]
    return dataclasses.replace(toy_task(), train=train, dev=list(train))


def make_ctx(model, tokenizer, budget, seed=0, task=None, **options) -> MethodContext:
    task = task or toy_task()
    scorer = CachedScorer(model, tokenizer, task.template, task.verbalizers)
    return MethodContext(task=task, task_model=model, task_tokenizer=tokenizer, scorer=scorer,
                         pair_budget=budget, seed=seed, device="cpu", options=options)


def snapshot(model) -> dict:
    return {"config": model.config.to_dict(), **{k: v.clone() for k, v in model.state_dict().items()}}


def assert_unchanged(model, before: dict) -> None:
    after = {"config": model.config.to_dict(), **model.state_dict()}
    assert after.keys() == before.keys() and after.pop("config") == before["config"]
    assert all(torch.equal(after[k], before[k]) for k in after)
    assert not any(p.requires_grad for p in model.parameters())
    assert not hasattr(model, "peft_config") and not model.training


def comparable(result) -> dict:
    row = dataclasses.asdict(result)
    row.pop("wall_s")
    return row


# ---- rewards and the env ----------------------------------------------------------------------

def test_distillation_reward_is_highest_for_the_teachers_predictions():
    teacher = torch.log(torch.tensor([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]]))
    same = teacher.clone()
    close = torch.log(torch.tensor([[0.3, 0.7], [0.8, 0.2], [0.55, 0.45]]))
    flipped = teacher.flip(-1)
    reward, agreement = DistillationReward(teacher)(torch.stack([same, close, flipped]))
    assert reward[0].item() == pytest.approx(0.0, abs=1e-6) and reward[0] > reward[1] > reward[2]
    assert agreement.tolist() == [1.0, 1.0, 0.0]
    # KL over the verbalizers only: unnormalized full-vocabulary log-probs give the same numbers
    assert torch.allclose(verbalizer_kl(teacher, close - 3.0), verbalizer_kl(teacher, close), atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        DistillationReward(teacher)(torch.zeros(1, 2, 2))


def test_env_scores_prompts_with_a_distillation_reward(smol_tokenizer, tiny_lm):
    model, tok = tiny_lm
    scorer = CachedScorer(model, tok, TEMPLATE, VERBALIZERS)
    sentences = [e.text for e in TOY_EXAMPLES]
    teacher = scorer.score([INSTRUCTION], sentences)[0]
    decode = lambda ids: tok.decode(ids).strip()  # noqa: E731
    env = PromptClassificationEnv(scorer, TOY_EXAMPLES, decode, len(tok), 5,
                                  reward_fn=DistillationReward(teacher))
    rewards, agreement = env.score_texts([INSTRUCTION, "Rating:"])
    assert rewards[0] == pytest.approx(0.0, abs=1e-6) and agreement[0] == 1.0
    expected = -verbalizer_kl(teacher, scorer.score(["Rating:"], sentences)[0]).mean()
    assert rewards[1] == pytest.approx(float(expected), abs=1e-6) and rewards[1] < 0


@pytest.mark.slow
def test_rl_loop_raises_the_distillation_reward_on_a_toy_task(smol_tokenizer, tmp_path):
    """Teacher: the toy task LM under a prompt of even token ids only (confident and right). The
    policy is rewarded for matching it; the reward rises as it learns to write even ids."""
    from rlprompt.config import TrainConfig
    from rlprompt.policy import PromptPolicy
    from rlprompt.trainer import Trainer

    tok = smol_tokenizer
    scorer = ParityTaskLM(tok)
    even = next(w for w in map(tok.decode, range(1000, 1100, 2)) if len(tok(w).input_ids) == 1
                and tok(w).input_ids[0] % 2 == 0)  # a one-token text with an even id
    teacher = scorer.score([even], [e.text for e in TOY_EXAMPLES])[0]
    cfg = TrainConfig(steps=40, prompts_per_step=16, prompt_length=3, top_k=64, lr=3e-3, eval_every=10,
                      patience=0, checkpoint_every=100, adaptor_hidden=64, seed=0, kl_coef=0.0,
                      entropy_coef=0.0)
    torch.manual_seed(0)
    policy = PromptPolicy(fresh_tiny_lm(tok), tok, cfg.prompt_length, cfg.top_k, cfg.adaptor_hidden)
    decode = lambda ids: tok.decode(ids).strip()  # noqa: E731
    env = PromptBatchEnv(scorer, TOY_EXAMPLES, decode, len(tok), cfg.prompt_length, cfg.prompts_per_step,
                         reward_fn=DistillationReward(teacher))
    trainer = Trainer(cfg, policy, env, env, tmp_path)
    trainer.run(progress=False)
    rewards = [h["charts/reward_mean"] for h in trainer.book.history]
    assert all(r <= 1e-6 for r in rewards)
    assert np.mean(rewards[-10:]) > np.mean(rewards[:10]) + 0.3, rewards


# ---- budget plumbing ------------------------------------------------------------------------------

def test_budgeted_scorer_charges_new_pairs_and_refuses_to_overflow(tiny_lm):
    model, tok = tiny_lm
    ledger = PairLedger(20)
    scorer = BudgetedScorer(CachedScorer(model, tok, TEMPLATE, VERBALIZERS), ledger, MODEL_PAIRS)
    sentences = ["a", "b", "c", "d"]
    scorer.score(["x", "y"], sentences)
    assert ledger.used == 8
    scorer.score(["x", "y"], sentences)  # memo hits are free
    assert ledger.used == 8
    with pytest.raises(BudgetExhausted):
        scorer.score(["p", "q", "r", "s"], sentences)  # 16 new pairs, 12 left
    assert ledger.used == 8 and scorer.score_cache  # nothing scored, attributes pass through


def test_options_are_typed_and_bad_values_are_one_line_errors():
    cfg = options_into(SoftPromptConfig(), {"lr": "0.5", "prefix-tuning.lr": "0.1", "k": "3",
                                            "num_virtual_tokens": "none", "test": "false"}, "prefix-tuning")
    assert cfg.lr == 0.1 and cfg.num_virtual_tokens is None and cfg.test is False
    assert options_into(SoftPromptConfig(), {"lr": "0.5"}, "prompt-tuning").lr == 0.5
    with pytest.raises(UserError, match="option batch_size='many': expected a value of type int"):
        options_into(SoftPromptConfig(), {"batch_size": "many"}, "prompt-tuning")
    with pytest.raises(UserError, match="lr must be positive"):
        options_into(SoftPromptConfig(), {"lr": "-1"}, "prompt-tuning")


# ---- prompt tuning and prefix tuning --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_soft_prompt_starts_as_its_init_text_in_front_of_the_input(tiny_lm, kind):
    model, tok = tiny_lm
    before = snapshot(model)
    init = init_token_ids(tok, "Overall, what did", None)
    soft = PeftSoftPrompt(model, tok, TEMPLATE, VERBALIZERS, kind, init)
    sentences = ["a great movie", "it was bad and boring , really"]
    with torch.no_grad():
        got = soft.logprobs(sentences)
        encoder = PromptEncoder(tok, TEMPLATE)
        ids = torch.tensor(tok(VERBALIZERS, add_special_tokens=False).input_ids)[:, 0]
        full = [torch.tensor([init + encoder.encode_pair("", s)]) for s in sentences]
        want = torch.stack([torch.log_softmax(model(input_ids=x).logits[0, -1], -1)[ids] for x in full])
    assert torch.allclose(got, want, atol=1e-5)
    assert_unchanged(model, before)


@pytest.mark.parametrize("method,kind", [("prompt-tuning", "prompt"), ("prefix-tuning", "prefix")])
def test_soft_prompt_training_lowers_the_loss_and_changes_only_the_soft_tokens(tiny_lm, method, kind):
    model, tok = tiny_lm
    before = snapshot(model)
    ctx = make_ctx(model, tok, budget=300, task=skewed_task(), lr="0.05", eval_every="2")
    result, soft = train_soft_prompt(ctx, kind, method)
    init = PeftSoftPrompt(model, tok, TEMPLATE, VERBALIZERS, kind,
                          init_token_ids(tok, ctx.task.manual_prompt, None))
    labels = torch.tensor([e.label for e in ctx.task.train])
    texts = [e.text for e in ctx.task.train]
    with torch.no_grad():
        loss_init = torch.nn.functional.cross_entropy(init.logprobs(texts), labels)
        loss_trained = torch.nn.functional.cross_entropy(soft.logprobs(texts), labels)
    assert loss_trained < loss_init - 0.1, (loss_init, loss_trained)
    assert not torch.equal(soft.weight, init.weight)
    assert_unchanged(model, before)
    assert result.prompt is None and result.prompt_tokens == len(init.weight)
    assert 0 <= result.dev_acc <= 1 and 0 <= result.test_acc <= 1
    assert result.pairs_scored <= ctx.pair_budget and result.curve[-1][0] == result.pairs_scored


def test_prompt_tuning_respects_the_budget_and_is_deterministic(tiny_lm):
    model, tok = tiny_lm
    rows = []

    def count_rows(module, args, kwargs):
        x = kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        rows.append(x.shape[0])

    handle = model.register_forward_pre_hook(count_rows, with_kwargs=True)
    try:
        first = get_method("prompt-tuning")(make_ctx(model, tok, budget=150, seed=3, test="false"))
    finally:
        handle.remove()
    assert sum(rows) == first.pairs_scored <= 150  # every example through the task LM is charged
    again = get_method("prompt-tuning")(make_ctx(model, tok, budget=150, seed=3, test="false"))
    assert comparable(again) == comparable(first)
    with pytest.raises(UserError, match="too small"):
        get_method("prefix-tuning")(make_ctx(model, tok, budget=3))


# ---- context distillation into soft tokens ---------------------------------------------------------

def test_slot_soft_prompt_with_the_instruction_embeddings_reproduces_the_teacher(tiny_lm):
    model, tok = tiny_lm
    scorer = CachedScorer(model, tok, TEMPLATE, VERBALIZERS)
    sentences = POSITIVE[:3] + NEGATIVE[:3]
    teacher = scorer.score([INSTRUCTION], sentences)[0]
    student = SlotSoftPrompt(model, tok, TEMPLATE, VERBALIZERS,
                             tok(" " + INSTRUCTION, add_special_tokens=False).input_ids)
    with torch.no_grad():
        assert torch.allclose(student.logprobs(sentences), teacher, atol=1e-4)


def test_distilled_soft_tokens_match_the_teacher_better_than_their_init(tiny_lm):
    model, tok = tiny_lm
    before = snapshot(model)
    ctx = make_ctx(model, tok, budget=500, lr="0.05", eval_every="2", teacher_instruction=INSTRUCTION, k="2")
    result, student = distill_soft_prompt(ctx)
    texts = [e.text for e in ctx.task.train]
    teacher = ctx.scorer.score([INSTRUCTION], texts)[0]
    init = SlotSoftPrompt(model, tok, TEMPLATE, VERBALIZERS, init_token_ids(tok, " " + INSTRUCTION, 2))
    with torch.no_grad():
        kl_init = verbalizer_kl(teacher, init.logprobs(texts)).mean()
        kl_trained = verbalizer_kl(teacher, student.logprobs(texts)).mean()
    assert kl_trained < 0.5 * kl_init, (kl_init, kl_trained)
    assert result.extra["dev_kl"] < result.extra["init_dev_kl"]
    assert result.extra["compression_ratio"] == pytest.approx(result.extra["teacher_tokens"] / 2)
    assert 0 <= result.extra["test_agreement"] <= 1 and result.extra["test_kl"] >= 0
    assert result.prompt is None and result.prompt_tokens == 2 and result.pairs_scored <= 500
    assert_unchanged(model, before)


def test_distill_soft_is_deterministic_and_charges_the_teacher(tiny_lm):
    model, tok = tiny_lm
    ctx = make_ctx(model, tok, budget=120, seed=5, teacher_instruction=INSTRUCTION, test="false")
    first = get_method("distill-soft")(ctx)
    assert ctx.scorer.pairs_scored == len(ctx.task.train) + len(ctx.task.dev)  # the teacher, charged
    assert first.pairs_scored <= 120
    ctx = make_ctx(model, tok, budget=120, seed=5, teacher_instruction=INSTRUCTION, test="false")
    again = get_method("distill-soft")(ctx)
    assert comparable(again) == comparable(first)


# ---- RL prompt compression ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_policy_dir(smol_tokenizer, tmp_path_factory):
    """A tiny random causal LM saved as a local model folder, for MethodContext.policy_model."""
    path = tmp_path_factory.mktemp("tiny-policy")
    fresh_tiny_lm(smol_tokenizer, seed=1).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_rl_compress_returns_a_short_text_prompt_within_budget_deterministically(tiny_lm, tiny_policy_dir):
    model, tok = tiny_lm

    def run():
        ctx = make_ctx(model, tok, budget=600, seed=2, teacher_instruction=INSTRUCTION, prompt_length="3",
                       prompts_per_step="4", eval_every="2", lr="1e-3")
        ctx.policy_model = tiny_policy_dir
        return ctx, get_method("rl-compress")(ctx)

    ctx, result = run()
    assert isinstance(result.prompt, str) and result.prompt
    assert result.pairs_scored <= 600
    test_pairs = result.extra["test_pairs_outside_budget"]
    assert ctx.scorer.pairs_scored == result.pairs_scored + test_pairs  # everything else is charged
    assert result.extra["steps"] >= 2 and result.curve and result.curve[-1][0] <= 600
    teacher_tokens = len(tok(" " + INSTRUCTION, add_special_tokens=False).input_ids)
    assert result.extra["compression_ratio"] == pytest.approx(teacher_tokens / result.prompt_tokens)
    assert -result.extra["dev_kl"] <= 1e-6 and 0 <= result.extra["test_agreement"] <= 1
    _, again = run()
    assert comparable(again) == comparable(result)
