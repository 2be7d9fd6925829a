"""Read labelled text rows from CSV, TSV or JSONL files (or a Hugging Face dataset), with one-line errors.

TSV is read without CSV quoting (a row may start with a double quote), as in the shared few-shot data;
CSV uses standard quoting. Every problem names the file and, where there is one, the line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rlprompt.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
HF_SCHEME = "hf:"


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if not path.is_file():
        raise UserError(f"data file is not a file: {path}")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read data file {path}: {e.strerror or e}") from None


def _delimited_rows(path: Path, text: str, delimiter: str, quoting: int) -> tuple[list[str], list[tuple[int, dict]]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
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
    rows = []
    try:
        for values in reader:
            if not values or not any(v.strip() for v in values):
                continue
            lineno = reader.line_num
            if len(values) != len(header):
                hint = " (no TAB before the label?)" if delimiter == "\t" and len(values) < len(header) else ""
                raise UserError(f"{path}:{lineno}: row has {len(values)} field(s) but the header has "
                                f"{len(header)}{hint}: {delimiter.join(values)[:60]!r}")
            rows.append((lineno, dict(zip(header, values))))
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: malformed row ({e})") from None
    return header, rows


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    rows, header = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); expected one object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line, got {type(obj).__name__}")
        header += [k for k in obj if k not in header]
        rows.append((lineno, {k: "" if v is None else str(v) for k, v in obj.items()}))
    if not rows:
        raise UserError(f"{path}: file is empty")
    return header, rows


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


def read_rows(path: str | Path, allow_download: bool = False) -> tuple[list[str], list[tuple[int, dict]]]:
    """A data file (or hf:NAME[:CONFIG]@SPLIT) -> (column names, [(line number, {column: value})])."""
    if str(path).startswith(HF_SCHEME):
        return _hf_rows(str(path), allow_download)
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unknown data file type {path.suffix!r}; use .csv, .tsv or .jsonl")
    text = _read_text(path)
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    if fmt == "jsonl":
        return _jsonl_rows(path, text)
    if fmt == "tsv":
        return _delimited_rows(path, text, "\t", csv.QUOTE_NONE)
    return _delimited_rows(path, text, ",", csv.QUOTE_MINIMAL)


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


def read_labelled(path, text_column: str | None = None, label_column: str | None = None,
                  allow_download: bool = False) -> list[tuple[str, str, str]]:
    """[(where, text, raw label)] rows of a data file; `where` is 'file:line' for error messages."""
    header, rows = read_rows(path, allow_download)
    text_col = pick_column(path, header, text_column, TEXT_COLUMNS, "text")
    label_col = pick_column(path, header, label_column, LABEL_COLUMNS, "label")
    out = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        text, label = row.get(text_col, "").strip(), row.get(label_col, "").strip()
        if not text:
            raise UserError(f"{where}: empty text in column {text_col!r}")
        if not label:
            raise UserError(f"{where}: empty label in column {label_col!r}")
        out.append((where, text, label))
    if not out:
        raise UserError(f"{path}: no examples after the header")
    return out
