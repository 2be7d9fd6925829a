"""Read labelled text rows from CSV, TSV or JSONL files (or a Hugging Face dataset), with one-line errors.

TSV is read without CSV quoting (a row may start with a double quote), as in the shared few-shot data;
CSV uses standard quoting. Every problem names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

from rlprompt.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
HF_SCHEME = "hf:"


def _open_text(path: Path):
    """The data file opened (binary) for streaming; one-line errors when it cannot be."""
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"data file {path} is a folder; give a .csv, .tsv or .jsonl file")
    if not path.is_file():
        raise UserError(f"data file is not a file: {path}")
    try:
        return open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror or e}") from None


def _text_lines(path: Path, f) -> Iterator[str]:
    """The file's lines decoded as UTF-8 one at a time (a BOM skipped), line endings kept, so an
    encoding error names its line; the csv module joins the lines of a multi-line quoted field."""
    for lineno, raw in enumerate(f, start=1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line); "
                            "save it as UTF-8") from None


def _delimited_rows(path: Path, f, delimiter: str, quoting: int) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    reader = csv.reader(_text_lines(path, f), delimiter=delimiter, quoting=quoting, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: file is empty") from None
    except csv.Error as e:
        raise UserError(f"{path}:1: malformed header ({e})") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise UserError(f"{path}:1: the header line is empty")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise UserError(f"{path}:1: duplicate column name(s) in the header: {dupes}")

    def rows():
        try:
            for values in reader:
                if not values or not any(v.strip() for v in values):
                    continue
                lineno = reader.line_num
                if len(values) != len(header):
                    hint = " (no TAB before the label?)" if delimiter == "\t" and len(values) < len(header) else ""
                    raise UserError(f"{path}:{lineno}: row has {len(values)} field(s) but the header has "
                                    f"{len(header)}{hint}: {delimiter.join(values)[:60]!r}")
                yield lineno, dict(zip(header, values))
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: malformed row ({e})") from None

    return header, rows()


def _jsonl_rows(path: Path, f) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """Rows of a JSON-lines file; the header is the first object's keys (a later row may add more)."""
    def objects():
        for lineno, line in enumerate(_text_lines(path, f), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one object per line") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
            yield lineno, {k: "" if v is None else str(v) for k, v in obj.items()}

    rows = objects()
    first = next(rows, None)
    if first is None:
        raise UserError(f"{path}: file is empty")
    return list(first[1]), itertools.chain([first], rows)


def _hf_rows(name: str, allow_download: bool) -> tuple[list[str], list[tuple[int, dict]]]:
    """'hf:NAME[:CONFIG]@SPLIT' -> rows of a Hugging Face dataset (needs --allow-download)."""
    spec = name[len(HF_SCHEME):]
    spec, _, split = spec.partition("@")
    dataset, _, config = spec.partition(":")
    if not dataset or not split:
        raise UserError(f"{name!r}: write a Hugging Face dataset as hf:NAME[:CONFIG]@SPLIT, e.g. hf:glue:sst2@train")
    if not allow_download:
        raise UserError(f"reading the Hugging Face dataset {name!r} needs the network: pass --allow-download")
    try:
        import datasets
    except ImportError:
        raise UserError("reading a Hugging Face dataset needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(dataset, config or None, split=split)
    except Exception as e:  # datasets raises many types for a wrong name, split or no network
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load Hugging Face dataset {name!r}: {first}") from None
    names = ds.features
    rows = []
    for i, row in enumerate(ds, start=1):
        out = {}
        for k, v in row.items():
            feature = names.get(k)
            # ClassLabel columns: keep the class name, so labels can be given by name
            out[k] = feature.int2str(v) if hasattr(feature, "int2str") and isinstance(v, int) else str(v)
        rows.append((i, out))
    return list(ds.column_names), rows


def read_rows(path: str | Path, allow_download: bool = False) -> tuple[list[str], Iterable[tuple[int, dict]]]:
    """A data file (or hf:NAME[:CONFIG]@SPLIT) -> (column names, [(line number, {column: value})]).
    Files are streamed: the rows come one at a time as they are read."""
    if str(path).startswith(HF_SCHEME):
        return _hf_rows(str(path), allow_download)
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        _open_text(path).close()  # a missing path or a folder says so first
        raise UserError(f"{path}: unknown data file type {path.suffix!r}; use .csv, .tsv or .jsonl")
    f = _open_text(path)
    try:
        if fmt == "jsonl":
            header, rows = _jsonl_rows(path, f)
        else:
            delimiter, quoting = ("\t", csv.QUOTE_NONE) if fmt == "tsv" else (",", csv.QUOTE_MINIMAL)
            header, rows = _delimited_rows(path, f, delimiter, quoting)
    except BaseException:
        f.close()
        raise
    return header, _closing(rows, f)


def _closing(rows: Iterator, f) -> Iterator:
    with f:
        yield from rows


TEXT_COLUMNS = ("sentence", "text", "review", "content", "document", "input")
LABEL_COLUMNS = ("label", "labels", "class", "category", "target", "stars")


def pick_column(path, header: list[str], given: str | None, candidates: tuple[str, ...], what: str) -> str:
    """The column named `given`, else the first of `candidates` in the header; a UserError otherwise."""
    if given:
        if given not in header:
            raise UserError(f"{path}: no column {given!r} for the {what}; the columns are {header}")
        return given
    for c in candidates:
        if c in header:
            return c
    flag = "--text-column" if what == "text" else "--label-column"
    raise UserError(f"{path}: cannot tell which column holds the {what} (columns: {header}); pass {flag}")


class LabelledRows:
    """The labelled rows of one data file, kept lean for large files: texts, labels (one string object
    per distinct label) and line numbers. Iterating gives (where, text, raw label), `where` being
    'file:line' for error messages."""

    def __init__(self, path):
        self.path, self.texts, self.labels, self.lines = path, [], [], array("l")

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        for lineno, text, label in zip(self.lines, self.texts, self.labels):
            yield f"{self.path}:{lineno}", text, label


def read_labelled(path, text_column: str | None = None, label_column: str | None = None,
                  allow_download: bool = False, progress_every: int = 200_000) -> LabelledRows:
    """The (where, text, raw label) rows of a data file, read in one streaming pass; a large file
    reports its progress on stderr every `progress_every` rows."""
    header, rows = read_rows(path, allow_download)
    text_col = pick_column(path, header, text_column, TEXT_COLUMNS, "text")
    label_col = pick_column(path, header, label_column, LABEL_COLUMNS, "label")
    out, distinct = LabelledRows(path), {}
    try:
        for lineno, row in rows:
            text, label = row.get(text_col, "").strip(), row.get(label_col, "").strip()
            if not text:
                raise UserError(f"{path}:{lineno}: empty text in column {text_col!r}")
            if not label:
                raise UserError(f"{path}:{lineno}: empty label in column {label_col!r}")
            out.texts.append(text)
            out.labels.append(distinct.setdefault(label, label))
            out.lines.append(lineno)
            if len(out) % progress_every == 0:
                print(f"reading {path}: {len(out):,} rows", file=sys.stderr, flush=True)
    finally:
        getattr(rows, "close", lambda: None)()  # closes the file when reading stopped early
    if not out.texts:
        raise UserError(f"{path}: no examples after the header")
    return out
