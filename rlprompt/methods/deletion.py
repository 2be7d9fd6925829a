"""Prompt length reduction: delete words or phrases greedily while the dev accuracy stays within a
tolerance of the starting prompt's.

Each pass scores on dev every prompt that is the current one minus one span of 1..max_span
consecutive words (as many as the budget allows), keeps those whose dev accuracy is at least (start accuracy − tolerance), and moves
to the best of them (dev accuracy, then dev reward). It stops when no deletion is within tolerance, at
`min_words`, or when the budget is spent. The path is reported as the length/accuracy trade-off.
Dev is both the acceptance test and the selection set here, so its dev accuracy is optimistic; the
test accuracy of the final prompt is the honest number.
"""

from __future__ import annotations

from rlprompt.errors import UserError
from rlprompt.methods import BudgetExhausted, MethodContext, MethodResult, register
from rlprompt.methods.budget import PromptSearch, prompt_tokens
from rlprompt.methods.options import option


def deletions(words: list[str], max_span: int) -> list[str]:
    """Every prompt made by deleting one span of 1..max_span consecutive words (distinct, in order)."""
    out = [" ".join(words[:i] + words[i + n:]) for n in range(1, max_span + 1)
           for i in range(len(words) - n + 1)]
    return [p for p in dict.fromkeys(out) if p]


@register("deletion")
def run(ctx: MethodContext) -> MethodResult:
    """Greedy deletion. Options: prompt (the long prompt to shorten; default the manual prompt),
    tolerance (0.0, in dev accuracy), max_span (2 words), min_words (1)."""
    start = option(ctx, "prompt", "") or ctx.task.manual_prompt
    if not start.strip():
        raise UserError("deletion needs a prompt to shorten: the task has no manual prompt; "
                        "pass --method-option deletion.prompt=...")
    tolerance, max_span = option(ctx, "tolerance", 0.0), option(ctx, "max_span", 2)
    min_words = max(1, option(ctx, "min_words", 1))
    search = PromptSearch(ctx, dev_reserve=0, desc="deletion")
    try:
        (start_acc, _), = search.score_dev([start], note=False)
    except BudgetExhausted:
        raise UserError(f"pair budget {ctx.pair_budget} cannot score the starting prompt on dev "
                        f"({len(ctx.task.dev)} pairs)") from None
    floor = start_acc - tolerance
    words, current = start.split(), start
    tok = ctx.task_tokenizer
    tradeoff = [{"prompt": start, "words": len(words), "tokens": prompt_tokens(tok, start), "dev_acc": start_acc}]
    search.note(start_acc)
    stop = "no deletion within tolerance"
    try:
        while len(words) > min_words:
            search.round += 1
            candidates = [c for c in deletions(words, max_span) if len(c.split()) >= min_words]
            scores = search.score_dev(candidates, note=False, partial=True)
            feasible = [(s[0], s[1], c) for c, s in zip(candidates, scores) if s and s[0] >= floor - 1e-9]
            if not feasible:
                stop = "budget spent" if search.exhausted else stop
                break
            acc, _, current = max(feasible, key=lambda t: (t[0], t[1], -len(t[2].split())))
            words = current.split()
            tradeoff.append({"prompt": current, "words": len(words), "tokens": prompt_tokens(tok, current),
                             "dev_acc": acc})
            search.note(acc)
            if search.exhausted:
                raise BudgetExhausted("the last pass was cut short")
        else:
            stop = f"reached min_words ({min_words})"
    except BudgetExhausted:
        stop = "budget spent"
    return search.finish("deletion", prompt=current,
                         extra={"start_prompt": start, "start_dev_acc": start_acc, "tolerance": tolerance,
                                "tradeoff": tradeoff, "stop_reason": stop})
