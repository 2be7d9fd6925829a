"""Run prompt-optimization methods side by side under one budget of scored (prompt, example) pairs.

    python compare.py --methods manual,rl,ape,evo,deletion --task sst2 --budget 4096
    python compare.py --methods all --task mr --seed 21 --out runs/compare_mr
    python compare.py --methods rl,ape --method-option rl.run=runs/<name>   # a finished train.py run as the RL row

Writes comparison.json, comparison.md and comparison.png to --out (default runs/compare__<task>__<seed>).
Every other flag is evaluate.py's (task, task model, precision, --calibration, --budget, --method-option, …):
this is `evaluate.py --compare METHODS` under its own name.
"""

from __future__ import annotations

import sys

import evaluate
from rlprompt.cli import OneLineArgumentParser, run_cli
from rlprompt.errors import UserError


def compare(argv: list[str]) -> int:
    """Parse --methods, pass everything else to evaluate.py's comparison."""
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--methods", required=True, metavar="METHODS",
                        help="comma-separated methods, e.g. manual,rl,ape,evo,deletion")
    known, rest = parser.parse_known_args(argv)
    if "--compare" in rest:
        raise UserError("give the methods with --methods, not --compare")
    return evaluate.run(["--compare", known.methods, *rest])


def main(argv=None) -> int:
    """Entry point; a UserError prints one `error:` line to stderr and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return 0
    return run_cli(lambda: compare(argv))


if __name__ == "__main__":
    sys.exit(main())
