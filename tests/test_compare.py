"""The comparison command: every method under one budget, one row each in JSON, Markdown and PNG."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

import evaluate
from rlprompt import compare
from rlprompt.methods import METHODS, MethodResult, register
from rlprompt.methods.budget import PromptSearch
from tests.rl_helpers import fresh_tiny_lm
from tests.test_methods_discrete import ListWriter, toy_task

DISCRETE = ["manual", "rl", "ape", "evo", "deletion"]


@pytest.fixture
def soft_stand_in():
    """A method registered from outside the package, returning a soft (prompt-less) result."""

    @register("toy-soft")
    def run(ctx):
        search = PromptSearch(ctx, dev_reserve=0)
        search.score_dev([""])  # stands in for training: spends |dev| pairs
        return MethodResult("toy-soft", None, 4, search.best_dev, 0.5, search.ledger.used, 0.1,
                            curve=list(search.curve))

    yield "toy-soft"
    del METHODS["toy-soft"]


def test_load_methods_finds_every_discrete_method():
    methods = compare.load_methods()
    assert set(DISCRETE) <= set(methods)
    with pytest.raises(Exception, match="unknown method 'nope'.*ape.*deletion"):
        compare.resolve_methods(["nope"])


def test_parse_method_options():
    assert compare.parse_method_options(["ape.keep_frac=0.3", "skip_test=1", "rl.run=a=b"]) == {
        "ape": {"keep_frac": "0.3"}, "*": {"skip_test": "1"}, "rl": {"run": "a=b"}}
    with pytest.raises(Exception, match="METHOD.KEY=VALUE"):
        compare.parse_method_options(["ape.keep_frac"])


@pytest.mark.slow
def test_compare_writes_one_row_per_method(tiny_lm, tmp_path, soft_stand_in):
    model, tok = tiny_lm
    task = toy_task()
    options = {"ape": {"writer": ListWriter(), "pool_size": "4"},
               "rl": {"policy_lm": (fresh_tiny_lm(tok, 1), tok), "prompts_per_step": "4", "prompt_length": "3",
                      "top_k": "32", "adaptor_hidden": "32"}}
    methods = DISCRETE + [soft_stand_in]
    budget = 200
    results = compare.run_comparison(task, model, tok, methods, budget, seed=13, out_dir=tmp_path,
                                     options=options, progress=False, meta={"task": "toy", "seed": 13})
    assert [r.method for r in results] == methods
    for r in results:
        assert r.pairs_scored <= budget and 0 <= r.dev_acc <= 1 and r.test_acc is not None
        assert r.wall_s >= 0 and r.curve
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["budget"] == budget and [r["method"] for r in data["results"]] == methods
    assert {"prompt", "prompt_tokens", "dev_acc", "test_acc", "pairs_scored", "wall_s", "curve"} <= set(
        data["results"][0])
    table = (tmp_path / "comparison.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| method")]
    assert [row.split(" | ")[0][2:] for row in rows] == methods
    assert "(soft prompt)" in rows[-1]
    image = matplotlib.image.imread(tmp_path / "comparison.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert (tmp_path / "rl" / "checkpoint.pt").exists()  # the RL row keeps its run folder


@pytest.mark.slow
def test_compare_cli_on_smollm(tmp_path, data_dir, capsys):
    out = tmp_path / "cmp"
    rc = evaluate.main(["--task", "sst2", "--data-dir", str(data_dir), "--dtype", "fp32", "--compare",
                        "manual,deletion", "--budget", "70", "--limit", "4", "--out", str(out),
                        "--method-option", "deletion.max_span=1"])
    assert rc == 0
    data = json.loads((out / "comparison.json").read_text())
    assert [r["method"] for r in data["results"]] == ["manual", "deletion"] and data["examples"]["test"] == 4
    manual, deletion = data["results"]
    assert manual["pairs_scored"] == 32 and manual["prompt"] == "Overall, what did the reviewer think of the movie?"
    assert deletion["pairs_scored"] <= 70 and deletion["extra"]["stop_reason"] in (
        "budget spent", "no deletion within tolerance")
    assert deletion["dev_acc"] >= deletion["extra"]["start_dev_acc"]
    assert "--compare manual,deletion" in data["command"]
    printed = capsys.readouterr().out
    assert "| manual |" in printed and "| deletion |" in printed and (out / "comparison.png").is_file()


def _error_of(capsys, argv) -> str:
    rc = evaluate.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv, words", [
    (["--compare", "manual,nope"], ["unknown method 'nope'", "known:"]),
    (["--compare", ","], ["at least one method"]),
    (["--compare", "manual", "--budget", "0"], ["--budget"]),
    (["--compare", "manual", "--prompt", "x"], ["--compare does not take"]),
    (["--compare", "manual", "--method-option", "novalue"], ["METHOD.KEY=VALUE"]),
])
def test_compare_errors_are_one_line(capsys, argv, words):
    err = _error_of(capsys, argv)
    for w in words:
        assert w in err


@pytest.mark.parametrize("argv, words", [
    (["--task", "sst2"], ["--methods"]),
    (["--methods", "manual,nope"], ["unknown method 'nope'", "known:"]),
    (["--methods", "manual", "--compare", "rl"], ["--methods, not --compare"]),
    (["--methods", "manual", "--budget", "0"], ["--budget"]),
])
def test_compare_script_errors_are_one_line(capsys, argv, words):
    import compare as compare_cli

    rc = compare_cli.main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err


def test_compare_script_runs_the_comparison(tmp_path, monkeypatch):
    """compare.py --methods M passes M and every other flag to evaluate.py's comparison."""
    import compare as compare_cli

    seen = {}
    monkeypatch.setattr(evaluate, "run", lambda argv: seen.setdefault("argv", argv) and 0)
    assert compare_cli.main(["--methods", "manual,ape", "--task", "mr", "--budget", "64"]) == 0
    assert seen["argv"] == ["--compare", "manual,ape", "--task", "mr", "--budget", "64"]
