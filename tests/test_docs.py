"""The README and docs/ stay true to the code: their links resolve and every flag they name exists."""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

import pytest

from rlprompt.config import add_arguments

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w])")
PYTHON_FLAG = re.compile(r"""["'](--[a-z][a-z0-9-]*)["']""")
NOT_OURS = {"no-deps", "no-index", "target", "only-binary", "python-version", "platform", "extra-index-url",
            "index-url", "logdir", "nproc-per-node", "num-processes", "config-file", "multi-gpu", "cov",
            "durations", "port", "bind-all", "cpu", "upgrade", "find-links", "force-reinstall", "deselect"}


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"\]\([^)]*\)", "", heading.strip().lower())  # a link in the heading: its text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@functools.cache
def project_flags() -> frozenset[str]:
    """Every --flag the CLIs accept: TrainConfig's, as `add_arguments` makes them (with --no-… for booleans),
    plus the string literals of the scripts' own argparse calls."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = {o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")}
    for script in [*REPO.glob("*.py"), *REPO.glob("bench/*.py"), *REPO.glob("rlprompt/**/*.py")]:
        flags |= {m[2:] for m in PYTHON_FLAG.findall(script.read_text(encoding="utf-8"))}
    return frozenset(flags)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert not broken, f"{doc.name}: links to nothing: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_flags_exist(doc):
    known = project_flags() | NOT_OURS
    unknown = sorted({f for f in FLAG.findall(doc.read_text(encoding="utf-8")) if f not in known})
    assert not unknown, f"{doc.name} names flags no CLI of this project takes: {unknown}"
