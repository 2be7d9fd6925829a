"""The task preset's hand-written prompt: no search, one dev scoring (|dev| pairs)."""

from __future__ import annotations

from rlprompt.methods import MethodContext, MethodResult, register
from rlprompt.methods.budget import PromptSearch
from rlprompt.methods.options import option


@register("manual")
def run(ctx: MethodContext) -> MethodResult:
    """Score the manual prompt (or option `prompt`) on dev and test."""
    prompt = option(ctx, "prompt", "") or ctx.task.manual_prompt
    search = PromptSearch(ctx, dev_reserve=0, desc="manual")
    return search.finish("manual", prompt=prompt)
