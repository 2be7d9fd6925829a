"""Shared CLI plumbing: quiet library logging, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import signal
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
    """Run main(); a UserError becomes `error: <message>` (one line) on stderr and exit code 2;
    Ctrl-C outside the training loop (which saves and exits by itself) exits 130 without a traceback."""
    from rlprompt.errors import UserError

    try:
        return main()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (unknown flag, bad value) are UserErrors: one `error:` line."""

    def error(self, message):
        from rlprompt.errors import UserError

        raise UserError(f"{message} (see --help)")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt inside the block, as Ctrl-C does, so the CLI exits with
    one line instead of dying silently."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
