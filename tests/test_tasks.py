"""Task presets, the TSV reader and the one-line UserErrors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlprompt.errors import UserError
from rlprompt.tasks import Example, Task, load_task, read_tsv, validate_template, verbalizer_token_ids


def one_line_error(excinfo, *words: str) -> str:
    """The UserError's message, checked to be one line that names each of `words`."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_sst2_preset_counts(data_dir):
    task = load_task("sst2", data_dir, seed=13)
    assert (len(task.train), len(task.dev), len(task.test)) == (32, 32, 1821)
    assert task.label_names == ["negative", "positive"]
    assert task.verbalizers == [" negative", " positive"]  # the template search's choice, docs/templates.md
    assert "{sentence}" in task.template and "{prompt}" in task.template
    assert task.manual_prompt
    assert {e.label for e in task.train} == {0, 1} and all(e.text for e in task.train)
    assert sum(e.label for e in task.dev) == 16  # 16 shots per class


def test_agnews_has_four_labels(data_dir):
    task = load_task("agnews", data_dir, seed=13)
    assert len(task.label_names) == len(task.verbalizers) == 4
    assert {e.label for e in task.train} == {0, 1, 2, 3}
    assert (len(task.train), len(task.dev)) == (64, 64)


def test_mr_loads_other_seed(data_dir):
    task = load_task("mr", data_dir, seed=42)
    assert (len(task.train), len(task.dev), len(task.test)) == (32, 32, 2000)


def test_preset_verbalizers_are_single_tokens(smol_tokenizer, data_dir):
    for name in ("sst2", "mr", "agnews"):
        task = load_task(name, data_dir)
        assert len(verbalizer_token_ids(smol_tokenizer, task.verbalizers)) == len(task.label_names)


def test_template_and_verbalizer_overrides(data_dir):
    task = load_task("sst2", data_dir, template="Review: {sentence} {prompt} Sentiment:",
                     verbalizers=[" bad", " good"])
    assert task.template.startswith("Review:") and task.verbalizers == [" bad", " good"]


def test_tsv_row_may_start_with_a_quote(tmp_path):
    f = write(tmp_path / "a.tsv", 'sentence\tlabel\n"quoted" start, no csv quoting\t1\nplain\t0\n')
    assert read_tsv(f, 2) == [Example('"quoted" start, no csv quoting', 1), Example("plain", 0)]


# --- bad input: one line that names the problem -------------------------------------------------

def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError) as e:
        load_task("sst2", tmp_path / "nowhere")
    one_line_error(e, "data directory not found", "nowhere")


def test_data_dir_without_the_task(tmp_path):
    with pytest.raises(UserError) as e:
        load_task("sst2", tmp_path)
    one_line_error(e, "not found", "sst-2")


def test_unknown_task(data_dir):
    with pytest.raises(UserError) as e:
        load_task("nope", data_dir)
    one_line_error(e, "unknown task", "nope", "sst2")


def test_unknown_seed(data_dir):
    with pytest.raises(UserError) as e:
        load_task("sst2", data_dir, seed=7)
    one_line_error(e, "seed 7")


@pytest.mark.parametrize("content, words", [
    ("sentence\tlabel\ngood movie\t1\na row without a label\n", ["a.tsv:3", "no TAB"]),
    ("sentence\tlabel\ngood movie\t5\n", ["a.tsv:2", "label 5", "outside the label set"]),
    ("sentence\tlabel\ngood movie\tpositive\n", ["a.tsv:2", "'positive'", "not an integer"]),
    ("sentence\tlabel\ngood movie\t-1\n", ["label -1", "outside"]),
    ("", ["a.tsv", "empty"]),
    ("sentence\tlabel\n", ["a.tsv", "no examples"]),
])
def test_bad_tsv(tmp_path, content, words):
    f = write(tmp_path / "a.tsv", content)
    with pytest.raises(UserError) as e:
        read_tsv(f, 2)
    one_line_error(e, *words)


def test_non_utf8_tsv(tmp_path):
    f = write(tmp_path / "a.tsv", b"sentence\tlabel\ncaf\xe9 cr\xe8me\t1\n")
    with pytest.raises(UserError) as e:
        read_tsv(f, 2)
    one_line_error(e, "a.tsv", "not UTF-8")


def test_missing_tsv(tmp_path):
    with pytest.raises(UserError) as e:
        read_tsv(tmp_path / "gone.tsv", 2)
    one_line_error(e, "not found", "gone.tsv")


def test_bad_file_inside_a_data_dir_is_named(tmp_path, data_dir):
    """load_task on a data folder whose dev file has a bad row names that file and line."""
    shot = tmp_path / "sst-2" / "16-shot" / "13"
    write(shot / "train.tsv", "sentence\tlabel\nfine\t0\nalso fine\t1\n")
    write(shot / "dev.tsv", "sentence\tlabel\nfine\t0\nbroken\tx\n")
    write(tmp_path / "sst-2" / "test.tsv", "sentence\tlabel\nfine\t0\n")
    with pytest.raises(UserError) as e:
        load_task("sst2", tmp_path)
    one_line_error(e, "dev.tsv:3", "'x'")


def test_multi_token_verbalizer(smol_tokenizer):
    with pytest.raises(UserError) as e:
        verbalizer_token_ids(smol_tokenizer, [" terrible", " terribleness"])
    one_line_error(e, "' terribleness'", "exactly one token")


@pytest.mark.parametrize("template, words", [
    ("{prompt} It was", ["{sentence}"]),
    ("{sentence} It was", ["{prompt}"]),
    ("{sentence} {prompt} {prompt}", ["{prompt}", "exactly once"]),
    ("{sentence} {prompt} {label}", ["{label}"]),
])
def test_bad_template(template, words):
    with pytest.raises(UserError) as e:
        validate_template(template)
    one_line_error(e, *words)


def test_task_checks_verbalizer_count():
    with pytest.raises(UserError) as e:
        Task("t", ["neg", "pos"], [" bad"], "{sentence} {prompt} It was")
    one_line_error(e, "1 verbalizers for 2 labels")
