"""Template and verbalizer search: named templates, candidate label words, the ranking (checked against
the evaluation path), bad input, and train.py picking both for a task of the user's own data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlprompt.errors import UserError
from rlprompt.tasks import Example, spec_from_flags
from rlprompt.template_search import candidate_words, format_table, parse_words, search
from rlprompt.templates import NAMED_TEMPLATES

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = [Example(t, 1) for t in ("A joy", "Warm and funny", "Superb acting", "I loved it")] + \
           [Example(t, 0) for t in ("A dull mess", "I walked out", "Boring", "A waste of time")]


def test_named_templates_resolve_and_unknown_names_fail_in_one_line():
    assert spec_from_flags(task="sst2", template="rlprompt").template == "{sentence} {prompt} It was"
    assert spec_from_flags(task="sst2", template="review").template == NAMED_TEMPLATES["review"]
    with pytest.raises(UserError) as e:
        spec_from_flags(task="sst2", template="reviewz")
    assert "\n" not in str(e.value) and "rlprompt" in str(e.value)


def test_candidate_words_are_single_distinct_tokens(tiny_lm):
    model, tok = tiny_lm
    words = candidate_words(model, tok, ["negative", "positive"], [" terrible", " great"], nearest=3)
    assert words[0][0] == " terrible" and words[1][0] == " great"  # the task's own verbalizer first
    assert " bad" in words[0] and " good" in words[1]  # written synonyms
    flat = [w for ws in words for w in ws]
    assert len(flat) == len(set(flat))  # no word serves two classes
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in flat)


def test_search_ranks_by_the_accuracy_the_evaluation_path_reports(tiny_lm):
    from rlprompt.evaluation import evaluate_prompts
    from rlprompt.scorer import build_scorer

    model, tok = tiny_lm
    templates = [NAMED_TEMPLATES["rlprompt"], NAMED_TEMPLATES["review"]]
    words = [[" bad", " terrible"], [" good", " great"]]
    groups = [EXAMPLES, EXAMPLES[2:6]]
    rows = search(model, tok, groups, ["negative", "positive"], templates, words, top_per_template=4)
    assert len(rows) == 8  # 2 templates x 4 combinations
    keys = [(-round(r.accuracy, 6), -r.margin) for r in rows]
    assert keys == sorted(keys)
    for r in rows[:3]:
        scorer = build_scorer(model, tok, r.template, r.verbalizers)
        accs = [evaluate_prompts(scorer, [""], g, progress=False)[0]["accuracy"] for g in groups]
        assert r.per_group == pytest.approx(accs)
        assert r.accuracy == pytest.approx(sum(accs) / 2)
    assert "| 1 | `" in format_table(rows, 2)


@pytest.mark.parametrize("templates, words, message", [
    (["{sentence} {prompt} It was"], [[" bad"], [" goodish"]], "exactly one token"),
    (["{prompt} It was"], [[" bad"], [" good"]], "{sentence}"),
    (["{sentence} {prompt} It was"], [[" bad"], []], "no candidate label words for class 'positive'"),
    ([], [[" bad"], [" good"]], "no candidate templates"),
])
def test_bad_candidates_fail_in_one_line(tiny_lm, templates, words, message):
    model, tok = tiny_lm
    with pytest.raises(UserError) as e:
        search(model, tok, [EXAMPLES], ["negative", "positive"], templates, words)
    assert "\n" not in str(e.value) and message in str(e.value)


def test_a_runs_search_scores_a_fixed_sample_of_a_large_data_file(monkeypatch):
    from rlprompt import template_search
    from rlprompt.tasks import Example, Task

    seen = []

    def fake_search(model, tokenizer, groups, *args, **kwargs):
        seen.append(groups[0])
        return [template_search.Candidate("{sentence} {prompt}", [" a", " b"], 1.0, 0.0, [1.0])]

    monkeypatch.setattr(template_search, "search", fake_search)
    big = [Example(f"s{i}", i % 2) for i in range(5000)]
    task = Task(name="big", label_names=["a", "b"], verbalizers=[" a", " b"], template="{sentence} {prompt}",
                train=big[:4000], dev=big[4000:])
    template_search.choose_for_task(task, None, None, templates=False, verbalizers=False)
    template_search.choose_for_task(task, None, None, templates=False, verbalizers=False)
    assert len(seen[0]) == template_search.SEARCH_EXAMPLES and seen[0] == seen[1]  # the same sample each time
    assert {e.text for e in seen[0]} <= {e.text for e in big} and seen[0][-1].text != "s511"  # across the file
    small = Task(name="small", label_names=["a", "b"], verbalizers=[" a", " b"], template="{sentence} {prompt}",
                 train=big[:32], dev=big[32:64])
    template_search.choose_for_task(small, None, None, templates=False, verbalizers=False)
    assert seen[2] == big[:64]  # a few-shot task: every example


def test_parse_words():
    assert parse_words('" bad"," awful";" good"') == [[" bad", " awful"], [" good"]]


def write_reviews(path: Path) -> Path:
    good = ["A joy from start to finish", "Warm, funny and smart", "I loved every minute", "Superb acting",
            "A delight", "Great fun"]
    bad = ["A dull, plodding mess", "I walked out", "Boring and far too long", "A waste of time",
           "Terrible script", "Flat jokes"]
    path.write_text("review,stars\n" + "".join(f"{t.replace(',', '')},good\n" for t in good)
                    + "".join(f"{t.replace(',', '')},bad\n" for t in bad), encoding="utf-8")
    return path


def run(args, cwd):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_new_task_without_template_gets_one_picked_and_said(tiny_model_dir, tmp_path):
    train = write_reviews(tmp_path / "reviews.csv")
    out = tmp_path / "run"
    tiny = str(tiny_model_dir)
    proc = run([str(REPO / "train.py"), "--train", str(train), "--policy-model", tiny, "--task-model", tiny,
                "--task-dtype", "fp32", "--steps", "2", "--prompts-per-step", "2", "--eval-every", "1",
                "--out", str(out), "--save-task", str(tmp_path / "mine.yaml")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [line for line in proc.stdout.splitlines() if "picked by search" in line]
    assert len(notes) == 1 and notes[0].startswith("note: template and verbalizers picked by search"), proc.stdout
    assert "verbalizers default" not in proc.stdout
    saved = yaml.safe_load((out / "task.yaml").read_text())
    assert saved["template"] in NAMED_TEMPLATES.values()
    assert repr(saved["template"]) in notes[0] and str(saved["verbalizers"]) in notes[0]
    assert yaml.safe_load((tmp_path / "mine.yaml").read_text())["template"] == saved["template"]

    # evaluate.py on the same data without --template picks the same template and verbalizers
    proc = run([str(REPO / "evaluate.py"), "--train", str(train), "--task-model", tiny, "--dtype", "fp32",
                "--prompt", "Overall:", "--splits", "dev"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line for line in proc.stdout.splitlines() if "picked by search" in line] == notes, proc.stdout
    assert f"template {saved['template']!r}" in proc.stdout

    # the printed ranking, and a given template with given verbalizers: no search, no note
    proc = run(["-m", "rlprompt.template_search", "--train", str(train), "--task-model", tiny,
                "--templates", "rlprompt", "--templates", "review", "--top", "1"], REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| `") == 3  # the task's own template and the two named ones
    proc = run([str(REPO / "train.py"), "--train", str(train), "--template", "rlprompt", "--verbalizers",
                " bad, good", "--policy-model", tiny, "--task-model", tiny, "--steps", "1", "--prompts-per-step",
                "2", "--out", str(tmp_path / "run2"), "--skip-test"], tmp_path)
    assert proc.returncode == 0 and "picked by search" not in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_template_search_cli_bad_candidates_one_line(tiny_model_dir, tmp_path):
    train = write_reviews(tmp_path / "reviews.csv")
    proc = run(["-m", "rlprompt.template_search", "--train", str(train), "--task-model", str(tiny_model_dir),
                "--candidates", '" bad";" goodish"'], REPO)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: verbalizer ' goodish'")
    assert len(proc.stderr.strip().splitlines()) == 1
