"""The bad-input catalogue: every kind of bad input across the CLIs, task files and data files gives
one `error:` line that names the problem, a non-zero exit code, and leaves what is on disk untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import evaluate
import train
from rlprompt.cli import run_cli

GOOD_CSV = "text,label\n" + "".join(f"good thing {i},good\nbad thing {i},bad\n" for i in range(6))


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir, data_dir):
    """A folder with a finished tiny run, good and bad data files, task files and a corrupt run."""
    ws = tmp_path_factory.mktemp("ws")
    files = {
        "good.csv": GOOD_CSV,
        "empty.csv": "",
        "header_only.csv": "text,label\n",
        "dup_header.csv": "text,text,label\nx,y,good\n",
        "no_label_col.csv": "text,stars\nx,1\n",
        "one_class.csv": "text,label\nx,good\ny,good\n",
        "short_row.csv": "text,label\nno label here\n",
        "bad_quote.csv": 'text,label\n"never closed,good\n',
        "bad.jsonl": '{"text": "x", "label": "good"}\nnot json\n',
        "prompts_empty.txt": "\n \n",
        "task_unknown_field.yaml": "name: t\ntrain: good.csv\nflavour: sweet\n",
        "task_not_yaml.yaml": "name: [oops\n",
        "task_no_train.yaml": "name: t\n",
    }
    for name, text in files.items():
        (ws / name).write_text(text, encoding="utf-8")
    (ws / "latin1.csv").write_bytes("text,label\ncaf\xe9,good\nthé,bad\n".encode("latin-1"))
    (ws / "a_file").write_text("not a folder")
    corrupt = ws / "corrupt_run"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"\x00garbage" * 100)
    (ws / "empty_run").mkdir()
    model = ["--policy-model", str(tiny_model_dir), "--task-model", str(tiny_model_dir)]
    rc = run_cli(lambda: train.main(["--task", "sst2", "--data-dir", str(data_dir), *model, "--steps", "1",
                                     "--prompts-per-step", "2", "--skip-test", "--out", str(ws / "run")]))
    assert rc == 0
    return ws


def cases(ws: Path, tiny: str, data: str):
    model = ["--policy-model", tiny, "--task-model", tiny]
    csv = ["--train", str(ws / "good.csv")]
    sst2 = ["--data-dir", data]
    return {
        # train.py flags
        "unknown flag": (train, ["--no-such-flag"], ["unrecognized arguments", "--no-such-flag"]),
        "unknown task": (train, ["--task", "imdb"], ["unknown task 'imdb'", "sst2"]),
        "prompt length 0": (train, ["--prompt-length", "0"], ["--prompt-length", "at least 1"]),
        "prompt longer than context": (train, sst2 + model + ["--prompt-length", "5000"],
                                       ["prompt length 5000", "context (256)"]),
        "steps 0": (train, ["--steps", "0"], ["--steps"]),
        "one prompt per step": (train, ["--prompts-per-step", "1"], ["--prompts-per-step", "at least 2"]),
        "negative lr": (train, ["--lr", "-1"], ["--lr", "positive"]),
        "not a number": (train, ["--lr", "fast"], ["--lr", "invalid float value"]),
        "unknown model offline": (train, sst2 + ["--policy-model", "nobody/no-such-model"],
                                  ["cannot load model 'nobody/no-such-model'", "--allow-download"]),
        "unknown dtype": (train, sst2 + model + ["--task-dtype", "int8"], ["unknown dtype 'int8'"]),
        "cuda without a gpu": (train, sst2 + ["--device", "cuda"], ["CUDA is not available"]),
        "unwritable run folder": (train, sst2 + model + ["--out", str(ws / "a_file" / "run")],
                                  ["cannot write to run folder", "a_file"]),
        "corrupt checkpoint": (train, ["--resume", str(ws / "corrupt_run")], ["corrupt", "checkpoint.pt"]),
        "resume without checkpoint": (train, ["--resume", str(ws / "empty_run")], ["no checkpoint in", "empty_run"]),
        "resume with another task": (train, ["--resume", str(ws / "run"), "--task", "mr"],
                                     ["cannot resume", "--task 'mr'"]),
        # data files
        "missing data dir": (train, ["--data-dir", str(ws / "nowhere")], ["data directory not found", "nowhere"]),
        "unknown seed": (train, sst2 + ["--seed", "7"], ["seed 7", "available seeds"]),
        "missing data file": (train, ["--train", str(ws / "gone.csv")], ["data file not found", "gone.csv"]),
        "empty file": (train, ["--train", str(ws / "empty.csv")], ["empty.csv", "empty"]),
        "header only": (train, ["--train", str(ws / "header_only.csv")], ["header_only.csv", "no examples"]),
        "wrong encoding": (train, ["--train", str(ws / "latin1.csv")], ["latin1.csv", "not UTF-8"]),
        "duplicate header": (train, ["--train", str(ws / "dup_header.csv")], ["duplicate column", "'text'"]),
        "missing column": (train, ["--train", str(ws / "no_label_col.csv"), "--label-column", "label"],
                           ["no column 'label'", "['text', 'stars']"]),
        "row without label": (train, ["--train", str(ws / "short_row.csv")], ["short_row.csv:2", "1 field(s)"]),
        "malformed quoting": (train, ["--train", str(ws / "bad_quote.csv")], ["bad_quote.csv", "malformed"]),
        "not json lines": (train, ["--train", str(ws / "bad.jsonl")], ["bad.jsonl:2", "not valid JSON"]),
        "label outside set": (train, csv + ["--labels", "bad,fine"], ["good.csv:2", "'good'", "not one of"]),
        "one class only": (train, ["--train", str(ws / "one_class.csv")], ["at least 2 labels", "['good']"]),
        "class without examples": (train, csv + ["--labels", "bad,good,meh"], ["['meh']", "no examples"]),
        "multi-token verbalizer": (train, csv + model + ["--verbalizers", " bad, goodish"],
                                   ["verbalizer ' goodish'", "exactly one token"]),
        "verbalizer count": (train, csv + ["--verbalizers", " bad"], ["1 verbalizers for 2 labels"]),
        "template without sentence": (train, csv + ["--template", "{prompt} It was"], ["{sentence}", "exactly once"]),
        "template without prompt": (train, csv + ["--template", "{sentence} It was"], ["{prompt}"]),
        "template unknown slot": (train, csv + ["--template", "{sentence} {prompt} {label}"], ["{label}"]),
        "offline hf dataset": (train, ["--train", "hf:imdb@train"], ["--allow-download"]),
        # task files
        "task file missing": (train, ["--task-file", str(ws / "nope.yaml")], ["task file not found"]),
        "task file unknown field": (train, ["--task-file", str(ws / "task_unknown_field.yaml")],
                                    ["unknown field(s) ['flavour']"]),
        "task file not yaml": (train, ["--task-file", str(ws / "task_not_yaml.yaml")], ["not valid YAML/JSON"]),
        "task file without train": (train, ["--task-file", str(ws / "task_no_train.yaml")],
                                    ["missing required field 'train'"]),
        "task and task file": (train, ["--task", "sst2", "--task-file", str(ws / "x.yaml")], ["either --task"]),
        # evaluate.py
        "eval prompts file missing": (evaluate, sst2 + ["--prompts-file", str(ws / "p.txt")],
                                      ["prompts file not found"]),
        "eval prompts file empty": (evaluate, sst2 + ["--prompts-file", str(ws / "prompts_empty.txt")],
                                    ["no prompts"]),
        "eval sample without run": (evaluate, sst2 + ["--sample", "5"], ["--sample", "--run"]),
        "eval missing run": (evaluate, ["--run", str(ws / "no_run")], ["run folder not found"]),
        "eval prompt too long": (evaluate, sst2 + ["--task-model", tiny, "--prompt", "word " * 400,
                                                   "--splits", "dev", "--limit", "2"],
                                 ["longer than the task model's context (256)"]),
        "eval split the task lacks": (evaluate, csv + ["--splits", "test"], ["no test examples", "--test"]),
        "eval plot of an empty folder": (evaluate, ["--run", str(ws / "empty_run"), "--plot"],
                                         ["no checkpoint"]),
    }


CASE_NAMES = list(cases(Path("."), "", "").keys())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_line_and_damages_nothing(name, workspace, tiny_model_dir, data_dir, capsys,
                                                      monkeypatch):
    import torch

    if name == "cuda without a gpu" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(workspace)
    script, argv, words = cases(workspace, str(tiny_model_dir), str(data_dir))[name]
    before = snapshot(workspace)
    rc = run_cli(lambda: script.main(argv))
    err = capsys.readouterr().err
    after = snapshot(workspace)
    assert rc == 2, (rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert "Traceback" not in err
    assert {k: v for k, v in after.items() if k in before} == before  # nothing changed or removed
    for new in set(after) - set(before):  # nothing written either, bar empty folders
        pytest.fail(f"{name}: wrote {new}")
    shutil.rmtree(workspace / "a_file" / "run", ignore_errors=True)


def test_catalogue_covers_twenty_kinds():
    assert len(CASE_NAMES) >= 20
