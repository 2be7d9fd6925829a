"""Small real pieces for the RL tests: a fresh tiny random Llama, and a toy task LM."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlprompt.tasks import Example


def fresh_tiny_lm(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A tiny random-config causal LM over the given tokenizer's vocabulary (frozen, eval mode)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


TOY_EXAMPLES = [Example(f"example {i}", i % 2) for i in range(8)]


class ParityTaskLM:
    """A toy task LM whose answer the policy can learn: the gold verbalizer's probability rises
    with the share of even token ids in the prompt (certain when every token id is even).

    Same interface as the real scorers: score(prompts, sentences) -> (P, E, V) log-probs.
    """

    def __init__(self, tokenizer, examples=TOY_EXAMPLES, sharpness: float = 8.0):
        self.tokenizer = tokenizer
        self.label_of = {e.text: e.label for e in examples}
        self.sharpness = sharpness
        self.score_cache = {}

    def score(self, prompts, sentences):
        out = torch.empty(len(prompts), len(sentences), 2)
        for p, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False).input_ids or [1]
            margin = self.sharpness * (sum(i % 2 == 0 for i in ids) / len(ids) - 0.5)
            for e, sentence in enumerate(sentences):
                gold = self.label_of[sentence]
                out[p, e, gold] = torch.nn.functional.logsigmoid(torch.tensor(margin))
                out[p, e, 1 - gold] = torch.nn.functional.logsigmoid(torch.tensor(-margin))
        return out
