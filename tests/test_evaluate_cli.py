"""evaluate.py: a real run on a few examples, and one-line errors (exit 2) for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_evaluate_writes_results_with_baselines(tmp_path, data_dir, tiny_model_dir, capsys):
    """evaluate.py's results file and table, on a tiny model (the embedded one: test_compare's evaluate run)."""
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("Absolutely fantastic movie\n\nThe critic's verdict:\n", encoding="utf-8")
    out = tmp_path / "res" / "out.json"
    rc = evaluate.main(["--task", "sst2", "--data-dir", str(data_dir), "--task-model", str(tiny_model_dir),
                        "--prompt", "Great review",
                        "--prompts-file", str(prompts_file), "--limit", "20", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["task"] == "sst2" and data["splits"] == {"dev": 20, "test": 20}
    from rlprompt.models import dtype_name, parse_dtype

    assert data["dtype"] == dtype_name(parse_dtype("auto", torch.device("cpu")))
    assert data["verbalizers"] == [" negative", " positive"]
    rows = {r["source"]: r for r in data["results"]}
    assert rows["no prompt"]["prompt"] == ""
    from rlprompt.tasks import find_spec

    assert rows["manual prompt"]["prompt"] in find_spec("sst2").manual_prompts  # the best of them on dev
    assert len(rows["4-shot"]["demos"]) == 4 and rows["no prompt (batch)"]["calibration"] == "batch"
    assert [r["prompt"] for r in data["results"] if not r.get("baseline")] == [
        "Great review", "Absolutely fantastic movie", "The critic's verdict:"]
    for r in data["results"]:
        assert r["dev_n"] == r["test_n"] == 20
        assert 0 <= r["dev_acc"] <= 1 and 0 <= r["test_acc"] <= 1
        assert round(r["dev_acc"] * 20) == pytest.approx(r["dev_acc"] * 20)  # a share of 20
    table = capsys.readouterr().out
    assert "[no prompt]" in table and "[manual prompt]" in table and "dev acc (n=20)" in table
    assert "strongest baseline (by test)" in table


def test_evaluate_without_prompts_reports_the_baselines(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "baselines.json"
    rc = evaluate.main(["--task", "sst2", "--data-dir", str(data_dir), "--task-model", str(tiny_model_dir),
                        "--limit", "8", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    assert rows and all(r["baseline"] and r["dev_n"] == 8 for r in rows)


@pytest.mark.slow
def test_evaluate_run_folder(tmp_path, data_dir, tiny_model_dir):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "prompts.json").write_text(json.dumps(
        [{"prompt": "Best one", "dev_acc": 0.9}, {"prompt": "Second", "dev_acc": 0.8},
         {"prompt": "Third", "dev_acc": 0.7}]))
    (run / "config.json").write_text(json.dumps(
        {"task": "mr", "seed": 21, "data_dir": str(data_dir), "task_model": str(tiny_model_dir),
         "task_dtype": "fp32", "template": None, "verbalizers": None}))
    rc = evaluate.main(["--run", str(run), "--num-prompts", "2", "--splits", "dev", "--limit", "4"])
    assert rc == 0
    data = json.loads((run / "results.json").read_text())  # default output: inside the run folder
    assert (data["task"], data["seed"], data["dtype"]) == ("mr", 21, "fp32")
    assert [r["source"] for r in data["results"]] == ["no prompt", "manual prompt", "4-shot", "no prompt (batch)",
                                                      "manual prompt (batch)", "4-shot (batch)", "run #1", "run #2"]
    assert [r["prompt"] for r in data["results"][6:]] == ["Best one", "Second"]
    assert all("test_acc" not in r for r in data["results"])


def _error_of(capsys, argv) -> str:
    rc = evaluate.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, words", [
    (["--task", "nope"], ["unknown task", "nope"]),
    (["--prompts-file", "/no/such/prompts.txt"], ["prompts file not found", "/no/such/prompts.txt"]),
    (["--run", "/no/such/run"], ["run folder not found"]),
    (["--splits", "dev,valid"], ["--splits"]),
    (["--limit", "0"], ["--limit"]),
    (["--seed", "3"], ["seed 3"]),
    (["--template", "{sentence} It was"], ["{prompt}"]),
    (["--dtype", "int8"], ["--dtype", "int8"]),
    (["--no-such-flag"], ["unrecognized arguments"]),
])
def test_bad_input_is_one_line(capsys, data_dir, argv, words):
    err = _error_of(capsys, argv + ["--data-dir", str(data_dir)])
    for w in words:
        assert w in err


def test_bad_prompt_and_run_files(tmp_path, capsys, data_dir):
    d = ["--data-dir", str(data_dir)]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "no prompts" in _error_of(capsys, ["--prompts-file", str(empty)] + d)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9\n")
    assert "not UTF-8" in _error_of(capsys, ["--prompts-file", str(latin)] + d)
    run = tmp_path / "run"
    run.mkdir()
    (run / "prompts.json").write_text("[{\"prompt\": ")
    assert "not valid JSON" in _error_of(capsys, ["--run", str(run)] + d)
    (run / "prompts.json").write_text('[{"text": "x"}]')
    assert '"prompt"' in _error_of(capsys, ["--run", str(run)] + d)


def test_multi_token_verbalizer_is_one_line(capsys, data_dir):
    err = _error_of(capsys, ["--verbalizers", " terribleness, great", "--limit", "1",
                             "--data-dir", str(data_dir)])
    assert "' terribleness'" in err and "one token" in err


@pytest.mark.slow
def test_cli_subprocess_exit_2_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--task", "nope"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
