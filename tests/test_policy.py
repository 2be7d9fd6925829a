"""The adaptor policy: starts as the base LM, is one HF model, agrees with trl's log-probs."""

import pytest
import torch

from rlprompt.errors import UserError
from rlprompt.policy import AdaptedNorm, PromptPolicy
from tests.rl_helpers import fresh_tiny_lm


@pytest.fixture
def policy(smol_tokenizer):
    return PromptPolicy(fresh_tiny_lm(smol_tokenizer), smol_tokenizer, prompt_length=4, top_k=32,
                        adaptor_hidden=32)


def perturb(adaptor, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptor.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g))


def test_only_adaptor_trains_and_starts_as_base_lm(policy):
    trainable = {n for n, p in policy.model.named_parameters() if p.requires_grad}
    assert trainable and all(".adaptor." in n for n in trainable)
    assert isinstance(policy.model.base_model.norm, AdaptedNorm)
    ids = torch.tensor([policy.start_ids + [100, 200, 300]])
    adapted = policy.model(ids).logits
    with policy.base_model_only():
        base = policy.model(ids).logits
    torch.testing.assert_close(adapted, base)  # zero-initialized output layer: identity at init


def test_sample_shapes_masks_and_greedy(policy):
    batch = policy.sample(6, generator=torch.Generator().manual_seed(0))
    assert batch.tokens.shape == (6, 4) and batch.log_probs.shape == (6, 4)
    assert batch.base_hidden.shape == (6, 4, policy.model.config.hidden_size)
    assert len(batch.texts) == 6
    assert not policy.banned[batch.tokens].any()
    assert all(len(set(row.tolist())) == 4 for row in batch.tokens)  # no token repeated
    g1, g2 = policy.sample(2, greedy=True), policy.sample(2, greedy=True)
    assert torch.equal(g1.tokens, g2.tokens) and torch.equal(g1.tokens[0], g1.tokens[1])


def test_words_vocabulary_writes_whole_words_only(smol_tokenizer):
    policy = PromptPolicy(fresh_tiny_lm(smol_tokenizer), smol_tokenizer, prompt_length=4, top_k=64,
                          adaptor_hidden=32, vocab="words")
    batch = policy.sample(16, generator=torch.Generator().manual_seed(0))
    pieces = [smol_tokenizer.decode([t]) for t in batch.tokens.flatten().tolist()]
    assert all(p[0] == " " and p[1:].isascii() and p[1:].isalpha() for p in pieces), pieces
    assert all(text.replace(" ", "").isalpha() for text in batch.texts)
    allowed = ~policy.banned
    assert allowed[smol_tokenizer.encode(" great")[0]] and not allowed[smol_tokenizer.encode("-")[0]]
    with pytest.raises(UserError, match="unknown prompt vocabulary 'emoji'"):
        PromptPolicy(fresh_tiny_lm(smol_tokenizer), smol_tokenizer, vocab="emoji")


def test_same_seed_same_samples(policy):
    a = policy.sample(5, generator=torch.Generator().manual_seed(7)).tokens
    b = policy.sample(5, generator=torch.Generator().manual_seed(7)).tokens
    assert torch.equal(a, b)


def test_log_probs_match_the_hf_model_and_trl(policy):
    from trl.trainer.utils import add_fused_lm_head

    perturb(policy.adaptor)
    batch = policy.sample(3, generator=torch.Generator().manual_seed(0))
    logp, entropy, kl = policy.evaluate_actions(batch.base_hidden, batch.tokens)
    torch.testing.assert_close(logp.detach(), batch.log_probs, atol=1e-4, rtol=1e-4)
    assert (kl > 0).all()  # the perturbed adaptor moved the policy away from the base LM

    start = len(policy.start_ids)
    seq = torch.cat([torch.tensor([policy.start_ids] * 3), batch.tokens], 1)
    hf = torch.log_softmax(policy.model(seq).logits[:, start - 1:-1].float(), -1)
    torch.testing.assert_close(hf.gather(-1, batch.tokens[..., None]).squeeze(-1), logp.detach(),
                               atol=1e-4, rtol=1e-4)

    add_fused_lm_head(policy.model, outputs=("log_probs", "entropy"))
    out = policy.model(input_ids=seq, labels=seq, fused_lm_head=True)
    torch.testing.assert_close(out.log_probs[:, start - 1:].detach(), logp.detach(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.entropy[:, start - 1:].detach(), entropy.detach(), atol=1e-3, rtol=1e-3)


def test_gradients_reach_only_the_adaptor(policy):
    batch = policy.sample(2, generator=torch.Generator().manual_seed(0))
    logp, _, _ = policy.evaluate_actions(batch.base_hidden, batch.tokens)
    (-logp.sum()).backward()
    assert all(p.grad is not None for p in policy.adaptor.parameters())
    frozen = [p for n, p in policy.model.named_parameters() if ".adaptor." not in n]
    assert all(p.grad is None for p in frozen)


def test_warm_start_bias_steers_the_first_tokens(policy):
    target = policy.encode_prompt("great movie review")
    batch = policy.sample(8, generator=torch.Generator().manual_seed(0), bias_tokens=target, bias=50.0)
    assert (batch.tokens[:, : len(target)] == target).all()


def test_prompt_length_zero_is_refused(smol_tokenizer):
    with pytest.raises(UserError, match="prompt length must be at least 1"):
        PromptPolicy(fresh_tiny_lm(smol_tokenizer), smol_tokenizer, prompt_length=0)


def test_prompt_longer_than_context_is_refused(smol_tokenizer):
    with pytest.raises(UserError, match="does not fit the policy model's context"):
        PromptPolicy(fresh_tiny_lm(smol_tokenizer), smol_tokenizer, prompt_length=1000)


def test_masked_logits_are_what_sampling_drew_from(policy):
    perturb(policy.adaptor)
    batch = policy.sample(4, generator=torch.Generator().manual_seed(0))
    logits = policy.masked_logits(batch.base_hidden, batch.tokens)
    logp = torch.log_softmax(logits, -1)
    chosen = logp.gather(-1, batch.tokens[..., None]).squeeze(-1)
    assert torch.isfinite(chosen).all()  # every sampled token was allowed
    assert torch.isinf(logits[:, :, policy.banned]).all()
    for t in range(1, batch.tokens.shape[1]):  # no_repeat: earlier tokens are masked
        earlier = logits[:, t].gather(1, batch.tokens[:, :t])
        assert torch.isinf(earlier).all()


def test_masked_log_probs_entropy_and_kl_are_over_the_tokens_sampling_may_draw(policy):
    perturb(policy.adaptor)
    batch = policy.sample(4, generator=torch.Generator().manual_seed(0))
    logp, entropy, kl = policy.evaluate_actions(batch.base_hidden, batch.tokens, masked=True)
    q = torch.log_softmax(policy.masked_logits(batch.base_hidden, batch.tokens), -1).detach()
    allowed = torch.isfinite(q)
    torch.testing.assert_close(logp.detach(), q.gather(-1, batch.tokens[..., None]).squeeze(-1))
    torch.testing.assert_close(entropy.detach(), -(q.exp() * q.where(allowed, 0.0)).sum(-1))
    full_logp, full_entropy, _ = policy.evaluate_actions(batch.base_hidden, batch.tokens)
    assert (logp.detach() > full_logp.detach()).all()  # renormalized over fewer tokens
    assert (kl >= -1e-6).all() and (kl > 1e-4).any() and not torch.equal(entropy, full_entropy)
    (-(logp.sum() + entropy.sum()) + kl.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.adaptor.parameters())
