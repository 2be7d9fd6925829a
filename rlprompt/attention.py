"""Grouped-query attention under a padding mask without copying keys and values, for CPU task LMs.

transformers' `sdpa` attention repeats every key/value head `num_key_value_groups` times (`repeat_kv`,
a full copy of the KV cache in every layer) whenever an attention mask is passed, because on CUDA the
masked SDPA kernels do not support `enable_gqa`. torch's CPU kernel does. The scorer always passes a
padding mask (prefixes and continuations of different lengths), so on a CPU it pays that copy on every
layer of every call: for SmolLM2 (9 query heads, 3 key/value heads) 14% of the scoring time in an fp32
profile on an AVX2 CPU.

`use_cpu_gqa(model)` switches a CPU model to `rlprompt_sdpa_gqa`: the same SDPA call with
`enable_gqa=True` when a mask is given, transformers' own `sdpa_attention_forward` in every other
case. The masks are built as for `sdpa`, so the attention computed is the same.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "rlprompt_sdpa_gqa"


def sdpa_gqa_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """transformers' attention-function signature: (B, H, Q, D) query, (B, H_kv, K, D) key/value ->
    ((B, Q, H, D) output, None). Masked grouped-query attention on a CPU runs on the key/value heads in
    place; everything else (no mask, another device, softcapping, position bias) is transformers' `sdpa`."""
    plain = (attention_mask is None or query.device.type != "cpu" or getattr(module, "num_key_value_groups", 1) == 1
             or any(kwargs.get(k) is not None for k in ("position_bias", "softcap")) or kwargs.get("output_attentions"))
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_cpu_gqa(model) -> bool:
    """Switch a CPU model that uses SDPA with grouped-query attention to `rlprompt_sdpa_gqa` (in place);
    True when it did. Models on other devices, or with other attention, are left as they are."""
    config = model.config
    heads, kv_heads = getattr(config, "num_attention_heads", None), getattr(config, "num_key_value_heads", None)
    grouped = bool(heads and kv_heads and kv_heads < heads)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if not (on_cpu and grouped and config._attn_implementation == "sdpa"):
        return False
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
