"""Shared CLI plumbing: quiet library logging, and one-line errors instead of tracebacks."""

from __future__ import annotations

import sys


def quiet_transformers() -> None:
    """Silence transformers' loading progress bars and warnings."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def one_line(message: object) -> str:
    """The message with any line breaks folded into spaces."""
    return " ".join(str(message).split("\n")).strip()


def run_cli(main) -> int:
    """Run main(); a UserError becomes `error: <message>` (one line) on stderr and exit code 2."""
    from rlprompt.errors import UserError

    try:
        return main()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
