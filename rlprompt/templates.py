"""Named templates: the written candidates of the template search, usable by name (`--template rlprompt`).

Each holds `{sentence}` (the input) and `{prompt}` (where the discrete prompt goes); the label word is
read as the next token after the template's last word.
"""

from __future__ import annotations

from rlprompt.errors import UserError

NAMED_TEMPLATES = {
    "rlprompt": "{sentence} {prompt} It was",  # RLPrompt's SST-2/MR template
    "review": "Review: {sentence}\n{prompt}\nSentiment:",
    "input-answer": "Input: {sentence} {prompt} Answer:",
    "text-label": "Text: {sentence}\n{prompt}\nLabel:",
    "topic": "{sentence} {prompt} Topic:",
    "article-topic": "Article: {sentence}\n{prompt}\nTopic:",
    "question-answer": "{sentence}\nQuestion: {prompt}\nAnswer:",
    "prompt-first": "{prompt}\n{sentence}\nAnswer:",
    "sentence-category": "Sentence: {sentence}\n{prompt}\nCategory:",
    "all-in-all": "{sentence} {prompt} All in all, it was",
}


def template_name(template: str) -> str | None:
    """The name of a written template, or None for any other text."""
    return next((n for n, t in NAMED_TEMPLATES.items() if t == template), None)


def resolve_template(value: str) -> str:
    """A template name -> its text; a text with slots is returned unchanged. A word that names no
    template (no `{` in it) is a UserError listing the names."""
    if value in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[value]
    if "{" not in value:
        raise UserError(f"template {value!r} is neither a template name ({', '.join(NAMED_TEMPLATES)}) nor a "
                        "template text with {sentence} and {prompt}")
    return value
