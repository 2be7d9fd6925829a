"""A task of the user's own: CSV/TSV/JSONL files, string labels, task files, the dev split, and the
whole path (train.py -> evaluate.py --run, --sample, --plot) on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlprompt.errors import UserError
from rlprompt.tasks import Example, TaskSpec, spec_from_flags, split_dev, verbalizer_token_ids

REPO = Path(__file__).resolve().parent.parent
GOOD = ["A joy from start to finish", "Warm, funny and smart", "The best film this year, \"truly\"",
        "I loved every minute", "Superb acting", "A delight"]
BAD = ["A dull, plodding mess", "I walked out", "Boring and far too long", "Flat jokes, flat characters",
       "A waste of time", "Terrible script"]


def write_csv(path: Path, rows: list[tuple[str, str]], header=("review", "stars")) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def review_files(tmp_path):
    train = write_csv(tmp_path / "my_train.csv", [(t, "good") for t in GOOD] + [(t, "bad") for t in BAD])
    test = write_csv(tmp_path / "my_test.csv", [("Great fun", "good"), ("Awful", "bad"), ("Lovely", "good"),
                                                ("Dreadful", "bad")])
    return train, test


def one_line(excinfo, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def test_csv_task_with_string_labels_and_split_dev(review_files):
    train, test = review_files
    spec = spec_from_flags(train=str(train), test=str(test), text_column="review", label_column="stars",
                           labels="bad,good", verbalizers='" terrible"," great"', template="{sentence} {prompt} It was")
    task = spec.load(seed=13)
    assert task.name == "my_train" and task.label_names == ["bad", "good"]
    assert task.verbalizers == [" terrible", " great"]
    assert len(task.train) + len(task.dev) == 12 and len(task.test) == 4
    assert sorted(e.label for e in task.dev) == [0, 1]  # 20% of 6 per class, rounded: one of each
    assert Example('The best film this year, "truly"', 1) in task.train + task.dev  # CSV quoting read
    assert any("split off as dev" in n for n in task.notes)
    assert task.split("test")[1] == Example("Awful", 0)


def test_a_large_train_file_without_dev_gives_a_capped_dev(tmp_path):
    from rlprompt.tasks import MAX_AUTO_DEV

    rows = [(f"review number {i}", "good" if i % 2 else "bad") for i in range(4000)]
    spec = spec_from_flags(train=str(write_csv(tmp_path / "big.csv", rows)), text_column="review",
                           label_column="stars", verbalizers='" terrible"," great"')
    task = spec.load(seed=13)
    assert len(task.dev) == MAX_AUTO_DEV and len(task.train) == 4000 - MAX_AUTO_DEV
    assert any(f"capped at about {MAX_AUTO_DEV}" in n for n in task.notes)


def test_split_dev_is_stratified_and_seeded():
    examples = [Example(f"t{i}", i % 3) for i in range(30)]
    train, dev = split_dev(examples, 0.2, seed=1)
    assert sorted(e.label for e in dev) == [0, 0, 1, 1, 2, 2]
    assert set(train).isdisjoint(dev) and len(train) + len(dev) == 30
    assert split_dev(examples, 0.2, seed=1) == (train, dev)
    assert split_dev(examples, 0.2, seed=2)[1] != dev
    big = [Example(f"t{i}", int(i % 4 == 0)) for i in range(10_000)]  # a quarter of class 1
    train, dev = split_dev(big, 0.2, seed=1, max_dev=500)
    assert len(dev) == 500 and sum(e.label for e in dev) == 125 and len(train) == 9_500
    assert split_dev(examples, 0.2, seed=1, max_dev=500) == split_dev(examples, 0.2, seed=1)  # under the cap


def test_jsonl_and_tsv_integer_labels_three_classes(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"item {i}", "label": i % 3}) for i in range(9)) + "\n")
    task = spec_from_flags(train=str(jsonl), dev=str(jsonl), verbalizers=" red, green, blue").load()
    assert task.label_names == ["0", "1", "2"] and task.verbalizers == [" red", " green", " blue"]
    assert [e.label for e in task.train[:4]] == [0, 1, 2, 0]
    assert any("labels inferred" in n for n in task.notes)
    tsv = tmp_path / "d.tsv"
    tsv.write_text('sentence\tlabel\n"quote first\t2\nplain\t0\nother\t1\n', encoding="utf-8")
    task = spec_from_flags(train=str(tsv), dev=str(tsv), labels="neg,neu,pos").load()
    assert task.train[0] == Example('"quote first', 2)  # integer labels index the names
    assert task.verbalizers == [" neg", " neu", " pos"]


def test_task_file_round_trip(tmp_path, review_files):
    train, test = review_files
    spec = spec_from_flags(train=str(train), test=str(test), labels="bad,good", manual_prompt="Verdict:",
                           text_column="review", label_column="stars")
    for name in ("task.yaml", "task.json"):
        spec.to_file(tmp_path / name)
        again = TaskSpec.from_file(tmp_path / name)
        assert again == spec.with_overrides(train=str(train.resolve()), test=str(test.resolve()))
        assert again.load().manual_prompt == "Verdict:"


def test_task_file_relative_paths_are_relative_to_the_file(tmp_path, review_files):
    sub = tmp_path / "tasks"
    sub.mkdir()
    (sub / "t.yaml").write_text("name: mine\ntrain: ../my_train.csv\nlabels: bad,good\n")
    task = TaskSpec.from_file(sub / "t.yaml").load()
    assert task.name == "mine" and len(task.train) + len(task.dev) == 12


def test_presets_are_task_files(data_dir):
    spec = spec_from_flags(task="agnews", template="{prompt} {sentence} Topic:")
    task = spec.load(data_dir, seed=21)
    assert task.template.startswith("{prompt}") and len(task.label_names) == 4
    assert (len(task.train), len(task.dev), len(task.test)) == (64, 64, 7600)


# --- validation: one line that names the problem -------------------------------------------------

@pytest.mark.parametrize("flags, words", [
    (dict(text_column="body"), ["no column 'body'", "['review', 'stars']"]),
    (dict(label_column="rating"), ["no column 'rating'"]),
    (dict(labels="bad,fine"), ["my_train.csv:2", "'good'", "not one of the labels ['bad', 'fine']"]),
    (dict(labels="bad,good,meh"), ["['meh']", "no examples in the train file"]),
    (dict(template="{prompt} It was"), ["{sentence}"]),
    (dict(labels="bad,bad"), ["distinct"]),
    (dict(dev_fraction=1.5), ["--dev-fraction"]),
])
def test_custom_task_validation(review_files, flags, words):
    train, _ = review_files
    base = dict(train=str(train), text_column="review", label_column="stars")
    with pytest.raises(UserError) as e:
        spec_from_flags(**{**base, **flags}).load()
    one_line(e, *words)


@pytest.mark.parametrize("name, content, words", [
    ("a.csv", "", ["a.csv", "empty"]),
    ("a.csv", "text,text\nx,y\n", ["duplicate column", "'text'"]),
    ("a.csv", "text,label\nonly one field\n", ["a.csv:2", "1 field(s)", "header has 2"]),
    ("a.csv", 'text,label\n"unterminated,1\n', ["a.csv", "malformed"]),
    ("a.csv", "words,number\nx,1\n", ["cannot tell which column holds the text", "--text-column"]),
    ("a.csv", "text,label\n,1\n", ["a.csv:2", "empty text"]),
    ("a.jsonl", '{"text": "x", "label": 1}\n[1, 2]\n', ["a.jsonl:2", "JSON object"]),
    ("a.jsonl", '{"text": "x", "label": 1\n', ["a.jsonl:1", "not valid JSON"]),
    ("a.xlsx", "whatever", ["unknown data file type", ".xlsx"]),
    ("a.csv", "text,label\nonly,one\nsame,one\n", ["needs at least 2 labels", "['one']"]),
])
def test_bad_data_files(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as e:
        spec_from_flags(train=str(path)).load()
    one_line(e, *words)


def test_wrong_encoding_and_missing_file(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(UserError) as e:
        spec_from_flags(train=str(latin)).load()
    one_line(e, "latin.csv", "not UTF-8")
    with pytest.raises(UserError) as e:
        spec_from_flags(train=str(tmp_path / "gone.csv")).load()
    one_line(e, "data file not found", "gone.csv")


@pytest.mark.parametrize("content, words", [
    ("name: x\ntrain: a.csv\ncolour: red\n", ["unknown field(s) ['colour']"]),
    ("train: a.csv\n", ["missing required field 'name'"]),
    ("- just\n- a list\n", ["mapping of fields"]),
    ("name: [unclosed\n", ["not valid YAML/JSON"]),
])
def test_bad_task_files(tmp_path, content, words):
    (tmp_path / "t.yaml").write_text(content)
    with pytest.raises(UserError) as e:
        TaskSpec.from_file(tmp_path / "t.yaml")
    one_line(e, *words)


def test_hf_dataset_needs_allow_download():
    with pytest.raises(UserError) as e:
        spec_from_flags(train="hf:glue:sst2@train").load()
    one_line(e, "--allow-download", "hf:glue:sst2@train")


def test_multi_token_verbalizer_suggests_single_tokens(smol_tokenizer):
    with pytest.raises(UserError) as e:
        verbalizer_token_ids(smol_tokenizer, [" terrible", " greatt"])
    msg = one_line(e, "' greatt'", "exactly one token", "single-token words like it")
    assert "' great'" in msg


# --- the whole path on a tiny model ------------------------------------------------------------

def run(script, args, cwd):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_train_and_evaluate_a_csv_task_end_to_end(review_files, tiny_model_dir, tmp_path):
    train, test = review_files
    run_dir = tmp_path / "runs" / "mine"
    task_flags = ["--train", str(train), "--test", str(test), "--text-column", "review",
                  "--label-column", "stars", "--labels", "bad,good", "--verbalizers", '" terrible"," great"',
                  "--template", "{sentence} {prompt} It was", "--manual-prompt", "My verdict:"]
    model = ["--policy-model", str(tiny_model_dir), "--task-model", str(tiny_model_dir)]
    proc = run("train.py", task_flags + model + ["--steps", "3", "--prompts-per-step", "4", "--eval-every", "1",
                                                 "--out", str(run_dir), "--save-task", str(tmp_path / "mine.yaml")],
               tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "split off as dev" in proc.stdout
    for name in ("prompts.json", "summary.json", "task.yaml", "history.json", "curves.png", "report.md",
                 "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "my_train" and summary["examples"] == {"train": 10, "dev": 2, "test": 4}
    assert [b["name"] for b in summary["baselines"]] == ["no prompt", "manual prompt", "4-shot", "no prompt (batch)",
                                                         "manual prompt (batch)", "4-shot (batch)"]
    assert summary["strongest_baseline"]["test_acc"] == max(b["test_acc"] for b in summary["baselines"])
    assert summary["best_prompt"]["test_acc"] is not None
    assert "| 1 | `" in (run_dir / "report.md").read_text()
    # where the run's time went, phase by phase, and on what machine
    assert list(summary["phases_s"]) == ["setup", "train", "dev_baselines", "test_together", "test_prompts",
                                         "test_baselines"]
    assert all(s >= 0 for s in summary["phases_s"].values()) and summary["phases_s"]["setup"] > 0
    assert summary["hardware"]["device"] == "cpu" and summary["hardware"]["threads"] >= 1
    assert "time: setup " in proc.stdout and "time by phase" in (run_dir / "report.md").read_text()

    # the run's prompts, and 6 prompts sampled from its policy, on the run's own task
    proc = run("evaluate.py", ["--run", str(run_dir), "--sample", "6", "--num-prompts", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run_dir / "results.json").read_text())
    sources = [r["source"] for r in res["results"]]
    assert sources[:3] == ["no prompt", "manual prompt", "4-shot"] and "run #1" in sources
    sampled = [r for r in res["results"] if r["source"].startswith("sample")]
    assert 1 <= len(sampled) <= 6
    assert [r["dev_acc"] for r in sampled] == sorted((r["dev_acc"] for r in sampled), reverse=True)
    assert res["splits"] == {"dev": 2, "test": 4} and res["task"] == "my_train"

    (run_dir / "curves.png").unlink()
    proc = run("evaluate.py", ["--run", str(run_dir), "--plot"], tmp_path)
    assert proc.returncode == 0 and (run_dir / "curves.png").stat().st_size > 10_000, proc.stderr

    # the saved task file is reusable as it is
    proc = run("evaluate.py", ["--task-file", str(tmp_path / "mine.yaml"), "--task-model", str(tiny_model_dir),
                               "--prompt", "Some prompt", "--out", str(tmp_path / "r.json")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["splits"] == {"dev": 2, "test": 4}


@pytest.mark.slow
def test_agnews_prompt_before_sentence_trains(tiny_model_dir, tmp_path, data_dir):
    """Four classes, the prompt in front of the sentence: train.py runs and reports per-class work."""
    proc = run("train.py", ["--task", "agnews", "--data-dir", str(data_dir), "--template", "{prompt} {sentence} Topic:",
                            "--policy-model", str(tiny_model_dir), "--task-model", str(tiny_model_dir),
                            "--steps", "2", "--prompts-per-step", "2", "--eval-every", "2", "--skip-test",
                            "--out", str(tmp_path / "ag")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "ag" / "summary.json").read_text())
    assert summary["task"] == "agnews" and summary["examples"]["train"] == 64
    assert summary["pairs_scored"] >= 2 * 2 * 64
    assert 0 <= summary["best_prompt"]["dev_acc"] <= 1
