"""Few-shot classification tasks: examples, label names, verbalizers and a template with slots."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlprompt.errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"
SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class Example:
    """One labelled input: `text` fills the template's {sentence} slot, `label` indexes label_names."""

    text: str
    label: int


@dataclass
class Task:
    """A few-shot classification task. `template` holds `{sentence}` and `{prompt}`."""

    name: str
    label_names: list[str]
    verbalizers: list[str]
    template: str
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    manual_prompt: str = ""

    def __post_init__(self):
        validate_template(self.template)
        if len(self.label_names) < 2:
            raise UserError(f"task {self.name!r} needs at least 2 labels, got {self.label_names}")
        if len(self.verbalizers) != len(self.label_names):
            raise UserError(f"task {self.name!r}: {len(self.verbalizers)} verbalizers for "
                            f"{len(self.label_names)} labels; give one verbalizer per label")
        if len(set(self.verbalizers)) != len(self.verbalizers):
            raise UserError(f"task {self.name!r}: verbalizers must be distinct, got {self.verbalizers}")

    def split(self, name: str) -> list[Example]:
        """The examples of split `name` ('train', 'dev' or 'test')."""
        if name not in ("train", "dev", "test"):
            raise UserError(f"unknown split {name!r}; use train, dev or test")
        return getattr(self, name)


def validate_template(template: str) -> None:
    """Raise a UserError unless the template has exactly one {sentence} and one {prompt} slot."""
    for slot in ("{sentence}", "{prompt}"):
        if template.count(slot) != 1:
            raise UserError(f"template {template!r} must contain {slot} exactly once")
    leftover = re.findall(r"\{[^{}]*\}", template.replace("{sentence}", "").replace("{prompt}", ""))
    if leftover:
        raise UserError(f"template {template!r} has unknown slot(s) {leftover}; "
                        "only {sentence} and {prompt} are filled")


def verbalizer_token_ids(tokenizer, verbalizers: list[str]) -> list[int]:
    """One token id per verbalizer; a UserError names any verbalizer that is not a single token."""
    ids = []
    for word in verbalizers:
        toks = tokenizer(word, add_special_tokens=False).input_ids
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            raise UserError(f"verbalizer {word!r} is {len(toks)} tokens {pieces} for the task model's "
                            "tokenizer; each verbalizer must be exactly one token")
        ids.append(toks[0])
    return ids


def read_tsv(path: Path, num_labels: int) -> list[Example]:
    """Read a `sentence<TAB>label` file with a header and no CSV quoting (the shared data layout)."""
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not lines:
        raise UserError(f"{path}: file is empty")
    examples = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if "\t" not in line:
            raise UserError(f"{path}:{lineno}: row has no TAB-separated label: {line[:60]!r}")
        text, label = line.rsplit("\t", 1)
        try:
            label_id = int(label)
        except ValueError:
            raise UserError(f"{path}:{lineno}: label {label!r} is not an integer") from None
        if not 0 <= label_id < num_labels:
            raise UserError(f"{path}:{lineno}: label {label_id} is outside the label set "
                            f"0..{num_labels - 1}")
        examples.append(Example(text.strip(), label_id))
    if not examples:
        raise UserError(f"{path}: no examples after the header")
    return examples


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $RLPROMPT_DATA, else ../shared/data (from here or the repo), else an error."""
    candidates = [data_dir] if data_dir else []
    if not data_dir and os.environ.get("RLPROMPT_DATA"):
        candidates.append(os.environ["RLPROMPT_DATA"])
    if not candidates:
        repo = Path(__file__).resolve().parent.parent
        candidates += [Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]
    for c in candidates:
        if Path(c).is_dir():
            return Path(c)
    raise UserError(f"data directory not found (tried {', '.join(str(c) for c in candidates)}); "
                    "pass --data-dir or set RLPROMPT_DATA")


def preset_names() -> list[str]:
    """Names of the task presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_task(name: str, data_dir=None, seed: int = 13, template: str | None = None,
              verbalizers: list[str] | None = None) -> Task:
    """A preset task (`sst2`, `mr`, `agnews`) with its 16-shot split `seed` read from the data dir."""
    preset_file = PRESET_DIR / f"{name}.yaml"
    if not preset_file.is_file():
        raise UserError(f"unknown task {name!r}; presets are: {', '.join(preset_names())}")
    spec = yaml.safe_load(preset_file.read_text())
    if seed not in SEEDS:
        raise UserError(f"no 16-shot split for seed {seed}; available seeds: {list(SEEDS)}")
    root = resolve_data_dir(data_dir) / spec["data_subdir"]
    if not root.is_dir():
        raise UserError(f"task data folder not found: {root}")
    n = len(spec["label_names"])
    shot = root / "16-shot" / str(seed)
    return Task(
        name=spec["name"],
        label_names=list(spec["label_names"]),
        verbalizers=list(verbalizers or spec["verbalizers"]),
        template=template or spec["template"],
        train=read_tsv(shot / "train.tsv", n),
        dev=read_tsv(shot / "dev.tsv", n),
        test=read_tsv(root / "test.tsv", n),
        manual_prompt=spec.get("manual_prompt", ""),
    )
