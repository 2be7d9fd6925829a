"""Few-shot classification tasks: examples, label names, verbalizers and a template with slots.

A task is described by a task file (YAML or JSON): where its data is, which columns hold text and
label, the label names, one verbalizer token per label, the template and a manual prompt. The presets
`sst2`, `mr` and `agnews` are task files shipped in `rlprompt/presets/`; a user's task is the same
kind of file, or the same fields given as command-line flags (`TaskSpec`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlprompt.datafiles import HF_SCHEME, read_labelled
from rlprompt.errors import UserError
from rlprompt.templates import resolve_template

PRESET_DIR = Path(__file__).parent / "presets"
SEEDS = (13, 21, 42, 87, 100)
NEW_TASK_TEMPLATE = "Input: {sentence} {prompt} Answer:"
MAX_AUTO_DEV = 500  # examples split off as dev when there is no dev file: every dev check scores them all


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled input: `text` fills the template's {sentence} slot, `label` indexes label_names."""

    text: str
    label: int


@dataclass
class Task:
    """A few-shot classification task, loaded. `template` holds `{sentence}` and `{prompt}`."""

    name: str
    label_names: list[str]
    verbalizers: list[str]
    template: str
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    manual_prompt: str = ""
    manual_prompts: list[str] = field(default_factory=list)  # more hand-written prompts (the baseline picks on dev)
    notes: list[str] = field(default_factory=list)  # what was inferred or split off, for the CLI to say

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


def single_token_suggestions(tokenizer, word: str, n: int = 3) -> list[str]:
    """Up to n vocabulary entries that are one token and read most like `word`."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = {}
    for i, piece in enumerate(vocab):
        if piece is not None and i not in tokenizer.all_special_ids:
            text = tokenizer.convert_tokens_to_string([piece])
            if text.strip() and text.startswith(" ") == word.startswith(" "):
                texts.setdefault(text.lower(), text)
    close = difflib.get_close_matches(word.lower(), list(texts), n=n, cutoff=0.5)
    return [texts[c] for c in close]


def verbalizer_token_ids(tokenizer, verbalizers: list[str]) -> list[int]:
    """One token id per verbalizer; a UserError names any verbalizer that is not a single token
    and suggests single-token words that read like it."""
    ids = []
    for word in verbalizers:
        toks = tokenizer(word, add_special_tokens=False).input_ids
        if len(toks) != 1:
            pieces = tokenizer.convert_ids_to_tokens(toks)
            near = single_token_suggestions(tokenizer, word)
            hint = f"; single-token words like it: {', '.join(repr(w) for w in near)}" if near else ""
            raise UserError(f"verbalizer {word!r} is {len(toks)} tokens {pieces} for the task model's "
                            f"tokenizer; each verbalizer must be exactly one token{hint}")
        ids.append(toks[0])
    return ids


def parse_list(text: str | list | None, strip: bool = False) -> list[str] | None:
    """'a,b' or '" terrible"," great"' -> ['a', 'b'] / [' terrible', ' great']: items split on commas,
    surrounding quotes removed (spaces inside quotes kept). Unquoted items lose tabs and newlines, and
    with `strip` (label names) spaces too; verbalizers keep a leading space, which is part of the token."""
    if text is None or isinstance(text, list):
        return text
    if not text.strip():
        return None
    items = []
    for w in text.split(","):
        s = w.strip()
        quoted = len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'"
        items.append(s[1:-1] if quoted else (s if strip else w.strip("\t\n")))
    return items


# ---- labels ------------------------------------------------------------------------------------

def _is_int(s: str) -> bool:
    return bool(re.fullmatch(r"[+-]?\d+", s.strip()))


def canonical_label(raw: str) -> str:
    """One spelling per label: a whole number written as `1`, `1.0`, `+1` or `01` becomes `1` (pandas
    writes integer labels as floats when a column has a gap); anything else is kept as it is."""
    m = re.fullmatch(r"([+-]?)(\d+)(?:\.0*)?", raw.strip())
    if not m:
        return raw
    value = int(m.group(2))
    return str(-value if m.group(1) == "-" else value)


def label_index(raw: str, label_names: list[str] | None, num_labels: int, where: str) -> int:
    """A row's raw label -> its index. Matched against the label names first; when no name is an
    integer, an integer label is an index (the shared data's 0/1 files)."""
    if label_names and raw in label_names:
        return label_names.index(raw)
    names_are_ints = label_names and any(_is_int(n) for n in label_names)
    if not names_are_ints and _is_int(raw):
        i = int(raw)
        if 0 <= i < num_labels:
            return i
        known = f" (the indexes of the labels {label_names})" if label_names else ""
        raise UserError(f"{where}: label {i} is outside the label set 0..{num_labels - 1}{known}")
    if label_names:
        raise UserError(f"{where}: label {raw!r} is not one of the labels {label_names} (one label set for "
                        "train, dev and test: the train file's, unless --labels gives it)")
    raise UserError(f"{where}: label {raw!r} is not an integer")


def infer_labels(raw_labels: list[str]) -> list[str]:
    """Distinct raw labels, sorted (numerically when all are integers)."""
    distinct = set(raw_labels)
    if all(_is_int(x) for x in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def split_dev(examples: list[Example], fraction: float, seed: int,
              max_dev: int | None = None) -> tuple[list[Example], list[Example]]:
    """Stratified split of `examples` into (train, dev): `fraction` of each class (at least one where
    the class has two or more) goes to dev, chosen with a seeded shuffle. With `max_dev`, a dev that
    would be larger gets about `max_dev` examples instead, each class in proportion; the rest stay train."""
    if not 0 < fraction < 1:
        raise UserError(f"--dev-fraction must be between 0 and 1, got {fraction}")
    if max_dev is not None and round(len(examples) * fraction) > max_dev:
        fraction = max_dev / len(examples)
    rng = random.Random(seed)
    train, dev = [], []
    for label in sorted({e.label for e in examples}):
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        k = max(1, round(len(group) * fraction)) if len(group) >= 2 else 0
        dev += group[:k]
        train += group[k:]
    order = {id(e): i for i, e in enumerate(examples)}
    return sorted(train, key=lambda e: order[id(e)]), sorted(dev, key=lambda e: order[id(e)])


# ---- task files ---------------------------------------------------------------------------------

@dataclass
class TaskSpec:
    """The content of a task file. Paths may hold {data_dir} and {seed}; relative paths are relative
    to the task file. `hf:NAME[:CONFIG]@SPLIT` names a Hugging Face dataset split (online only)."""

    name: str
    train: str
    template: str = NEW_TASK_TEMPLATE
    labels: list[str] | None = None  # default: the distinct labels of the train file
    verbalizers: list[str] | None = None  # default: " " + label name
    dev: str | None = None  # default: a stratified share of train
    test: str | None = None
    text_column: str | None = None  # default: sentence, text, review, ... whichever exists
    label_column: str | None = None  # default: label, class, stars, ... whichever exists
    manual_prompt: str = ""
    manual_prompts: list[str] | None = None  # more hand-written prompts; the baseline is the best on dev
    seeds: list[int] | None = None  # the splits that exist, for paths with {seed}
    dev_fraction: float = 0.2

    def __post_init__(self):
        if isinstance(self.template, str):
            self.template = resolve_template(self.template)  # a named template (`rlprompt`) -> its text

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TaskSpec:
        """Read a YAML or JSON task file; relative data paths become relative to its folder."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"task file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"task file {path} is not UTF-8 text") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark else ""
            raise UserError(f"task file {path}{where} is not valid YAML/JSON "
                            f"({getattr(e, 'problem', None) or type(e).__name__})") from None
        if not isinstance(data, dict):
            raise UserError(f"task file {path} must hold a mapping of fields (name, train, labels, ...)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UserError(f"task file {path}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        for required in ("name", "train"):
            if not data.get(required):
                raise UserError(f"task file {path}: missing required field {required!r}")
        if data.get("manual_prompts") is not None:
            if not isinstance(data["manual_prompts"], list):
                raise UserError(f"task file {path}: manual_prompts must be a list of prompts")
            data["manual_prompts"] = [str(x) for x in data["manual_prompts"]]
        for key in ("labels", "verbalizers"):
            if data.get(key) is not None:
                data[key] = parse_list(data[key], strip=key == "labels") if isinstance(data[key], str) \
                    else [str(x) for x in data[key]]
        for key in ("train", "dev", "test"):
            if data.get(key):
                data[key] = _relative_to(str(data[key]), path.parent)
        return cls(**data)

    def to_file(self, path: str | os.PathLike) -> None:
        """Write this spec as a task file (YAML, or JSON for a .json path)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "")}
        for key in ("train", "dev", "test"):  # relative paths were given from the working folder
            if key in data and not data[key].startswith(("{data_dir}", HF_SCHEME)):
                data[key] = str(Path(data[key]).resolve())
        path = Path(path)
        text = json.dumps(data, indent=2, ensure_ascii=False) if path.suffix == ".json" \
            else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        from rlprompt.atomic import atomic_write_text

        try:
            atomic_write_text(path, text)  # --resume and evaluate.py --run read it back
        except OSError as e:
            raise UserError(f"cannot write task file {path}: {e.strerror or e}") from None

    def with_overrides(self, **values) -> TaskSpec:
        """A copy with every non-None value replacing its field."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def resolved(self, data_dir=None, seed: int = 13) -> TaskSpec:
        """A copy whose paths have {data_dir} and {seed} filled in (what a run saves as task.yaml)."""
        uses_seed = any("{seed}" in (p or "") for p in (self.train, self.dev, self.test))
        if uses_seed and self.seeds and seed not in self.seeds:
            raise UserError(f"no 16-shot split for seed {seed}; available seeds: {self.seeds}")
        needs_data = any("{data_dir}" in (p or "") for p in (self.train, self.dev, self.test))
        root = str(resolve_data_dir(data_dir)) if needs_data else ""

        def fill(p):
            return p.replace("{data_dir}", root).replace("{seed}", str(seed)) if p else p

        return dataclasses.replace(self, train=fill(self.train), dev=fill(self.dev), test=fill(self.test),
                                   seeds=None)

    def load(self, data_dir=None, seed: int = 13, allow_download: bool = False) -> Task:
        """Read the data files and build the Task (labels inferred and dev split off when not given)."""
        validate_template(self.template)
        spec = self.resolved(data_dir, seed)
        notes = []
        rows = {s: read_labelled(p, self.text_column, self.label_column, allow_download)
                for s, p in (("train", spec.train), ("dev", spec.dev), ("test", spec.test)) if p}
        for r in rows.values():  # one spelling per label in every file: 1.0 and 1 are the same label
            spelling = {x: canonical_label(x) for x in set(r.labels)}
            r.labels = [spelling[x] for x in r.labels]
        labels = [canonical_label(x) for x in self.labels] if self.labels else None
        if not labels:
            labels = infer_labels(rows["train"].labels)
            notes.append(f"labels inferred from the train file: {labels}")
        if len(labels) != len(set(labels)):
            raise UserError(f"task {self.name!r}: labels must be distinct, got {labels}")
        verbalizers = self.verbalizers or [" " + name for name in labels]
        if not self.verbalizers:
            notes.append(f"verbalizers default to the label names: {verbalizers}")
        examples = {s: [Example(text, label_index(raw, labels, len(labels), where))
                        for where, text, raw in r] for s, r in rows.items()}
        train = examples["train"]
        missing = [labels[i] for i in range(len(labels)) if not any(e.label == i for e in train)]
        if missing:
            raise UserError(f"class(es) {missing} have no examples in the train file {spec.train}")
        dev = examples.get("dev")
        if dev is None:
            capped = round(len(train) * self.dev_fraction) > MAX_AUTO_DEV
            train, dev = split_dev(train, self.dev_fraction, seed, max_dev=MAX_AUTO_DEV)
            share = f"{self.dev_fraction:.0%}" + (f", capped at about {MAX_AUTO_DEV}: every dev check scores "
                                                  "them all" if capped else "")
            notes.append(f"no dev file: {len(dev)} of {len(examples['train'])} train examples split off "
                         f"as dev (stratified, {share}, seed {seed})")
        if not examples.get("test"):
            notes.append("no test file: test accuracy will not be reported")
        return Task(name=self.name, label_names=list(labels), verbalizers=list(verbalizers),
                    template=self.template, train=train, dev=dev, test=examples.get("test", []),
                    manual_prompt=self.manual_prompt, manual_prompts=list(self.manual_prompts or []), notes=notes)


def _relative_to(path: str, folder: Path) -> str:
    if path.startswith(("{data_dir}", HF_SCHEME)) or Path(path).is_absolute():
        return path
    return str(folder / path)


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


def find_spec(task: str) -> TaskSpec:
    """A preset name or a task file path -> its TaskSpec."""
    if task.endswith((".yaml", ".yml", ".json")) or os.sep in task:
        return TaskSpec.from_file(task)
    preset = PRESET_DIR / f"{task}.yaml"
    if not preset.is_file():
        raise UserError(f"unknown task {task!r}; presets are: {', '.join(preset_names())} "
                        "(or give a task file, or --train FILE for a task of your own)")
    return TaskSpec.from_file(preset)


def spec_from_flags(task: str | None = None, task_file: str | None = None, train: str | None = None,
                    **overrides) -> TaskSpec:
    """The task the flags describe: a preset or task file (default sst2) with any field overridden,
    or, with --train and no task, a new task from the user's files."""
    if task and task_file:
        raise UserError("give either --task or --task-file, not both")
    for key in ("labels", "verbalizers"):
        overrides[key] = parse_list(overrides.get(key), strip=key == "labels")
    base = task_file or task
    if base:
        return find_spec(base).with_overrides(train=train, **overrides)
    if train:
        spec = TaskSpec(name=Path(train.split("@")[0]).stem.replace(":", "-") or "task", train=train)
        return spec.with_overrides(**overrides)
    return find_spec("sst2").with_overrides(**overrides)


def load_task(name: str, data_dir=None, seed: int = 13, template: str | None = None,
              verbalizers: list[str] | None = None) -> Task:
    """A preset (`sst2`, `mr`, `agnews`) or task file, with its split `seed` read from the data dir."""
    return find_spec(name).with_overrides(template=template, verbalizers=verbalizers).load(data_dir, seed)


def read_tsv(path: Path, num_labels: int) -> list[Example]:
    """Read a `sentence<TAB>label` file with integer labels 0..num_labels-1 (the shared data layout)."""
    return [Example(text, label_index(raw, None, num_labels, where))
            for where, text, raw in read_labelled(path, "sentence", "label")]
