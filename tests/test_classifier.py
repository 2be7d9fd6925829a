"""PromptClassifier: a found prompt used from Python, from a run folder or a prompt card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprompt import PromptClassifier
from rlprompt.classifier import export_card
from rlprompt.errors import UserError
from rlprompt.evaluation import evaluate_prompts
from rlprompt.models import load_lm
from rlprompt.scorer import build_scorer
from rlprompt.tasks import Example

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "{sentence} {prompt} It was"
VERBALIZERS = [" terrible", " great"]
LABELS = ["negative", "positive"]
PROMPT = "Overall the film"
TEXTS = ["a gripping , beautiful film .", "dull and far too long .", "the cast is wonderful",
         "i wanted my money back", "one of the best this year", "a mess from start to finish",
         "warm , funny and smart", "boring"] * 5
EXAMPLES = [Example(t, i % 2) for i, t in enumerate(TEXTS)]


def write_run(root: Path, task_model: str, rows: list[dict], label_names=LABELS) -> Path:
    """A finished run folder as train.py leaves it (the files PromptClassifier reads)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "prompts.json").write_text(json.dumps(rows))
    summary = {"task": "toy", "template": TEMPLATE, "verbalizers": VERBALIZERS, "seed": 13, "task_dtype": "fp32",
               "examples": {"train": 8, "dev": 8, "test": len(EXAMPLES)},
               "config": {"task_model": task_model, "task_dtype": "auto", "seed": 13}}
    if label_names:
        summary["label_names"] = label_names
    (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    """(run folder, test accuracy of its best prompt scored the way train.py scores it)."""
    model, tok = load_lm(str(tiny_model_dir), "cpu", "fp32")
    scorer = build_scorer(model, tok, TEMPLATE, VERBALIZERS)
    acc = evaluate_prompts(scorer, [PROMPT, ""], EXAMPLES, progress=False)[0]["accuracy"]
    rows = [{"prompt": PROMPT, "dev_acc": 0.625, "test_acc": acc}, {"prompt": "", "dev_acc": 0.5, "test_acc": None}]
    return write_run(tmp_path_factory.mktemp("run"), str(tiny_model_dir), rows), acc


def test_from_run_reproduces_the_runs_test_accuracy(tiny_run):
    run, acc = tiny_run
    clf = PromptClassifier.from_run(run, device="cpu")
    assert (clf.prompt, clf.dtype, clf.label_names) == (PROMPT, "fp32", LABELS)
    predicted = clf.predict([e.text for e in EXAMPLES])
    assert set(predicted) <= set(LABELS)
    hits = [p == LABELS[e.label] for p, e in zip(predicted, EXAMPLES)]
    assert abs(np.mean(hits) - acc) < 1e-3
    proba = clf.predict_proba([e.text for e in EXAMPLES])
    assert proba.shape == (len(EXAMPLES), 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert [LABELS[i] for i in proba.argmax(1)] == predicted


def test_batches_do_not_change_the_answer(tiny_run):
    run, _ = tiny_run
    texts = [e.text for e in EXAMPLES[:16]]
    clf = PromptClassifier.from_run(run, device="cpu", batch_size=64)
    one_batch = clf.predict_proba(texts)
    loaded = dict(model=clf.model, tokenizer=clf.tokenizer)  # the same task LM, fresh scorers
    small = PromptClassifier.from_run(run, batch_size=3, **loaded).predict_proba(texts)
    one_by_one = np.concatenate([PromptClassifier.from_run(run, **loaded).predict_proba([t]) for t in texts[:4]])
    assert np.allclose(one_batch, small, atol=1e-5) and np.allclose(one_batch[:4], one_by_one, atol=1e-5)
    assert clf.predict([]) == [] and clf.predict_proba([]).shape == (0, 2)
    assert clf(texts[0]) == clf.predict([texts[0]])


def test_card_round_trip_and_evaluate_export(tiny_run, tmp_path):
    run, acc = tiny_run
    clf = PromptClassifier.from_run(run, device="cpu")
    clf.save(tmp_path / "card.json")
    card = json.loads((tmp_path / "card.json").read_text())
    assert card["format"] == "rlprompt.prompt-card/1"
    assert {k: card[k] for k in ("prompt", "template", "verbalizers", "label_names", "dtype", "test_acc")} == {
        "prompt": PROMPT, "template": TEMPLATE, "verbalizers": VERBALIZERS, "label_names": LABELS, "dtype": "fp32",
        "test_acc": acc}
    assert card["calibration"] == {"mode": "none"} and card["dev_acc"] == 0.625 and card["test_n"] == len(EXAMPLES)
    again = PromptClassifier.from_card(tmp_path / "card.json", device="cpu")
    texts = [e.text for e in EXAMPLES[:8]]
    assert np.allclose(again.predict_proba(texts), clf.predict_proba(texts), atol=1e-6)

    import evaluate

    assert evaluate.main(["--run", str(run), "--export", str(tmp_path / "exported.json")]) == 0
    assert json.loads((tmp_path / "exported.json").read_text()) == export_card(run)
    assert PromptClassifier.from_card(tmp_path / "exported.json", device="cpu").predict(texts) == clf.predict(texts)


def test_calibration_offsets_are_subtracted(tiny_model_dir, tiny_run, tmp_path):
    run, _ = tiny_run
    texts = [e.text for e in EXAMPLES[:8]]
    plain = PromptClassifier.from_run(run, device="cpu")
    raw = plain.logits(texts)
    vector = [float(raw[:, 0].mean() - raw[:, 1].mean()), 0.0]  # pushes the two classes toward balance
    rows = [{"prompt": PROMPT, "dev_acc": 0.5, "test_acc": None, "calibration": {"mode": "batch", "vector": vector}}]
    calibrated = PromptClassifier.from_run(write_run(tmp_path / "cal", str(tiny_model_dir), rows), device="cpu",
                                           model=plain.model, tokenizer=plain.tokenizer)
    expected = torch.log_softmax(raw, -1) - torch.tensor(vector)
    assert torch.allclose(calibrated.logits(texts), expected, atol=1e-5)
    assert np.allclose(calibrated.predict_proba(texts), torch.softmax(raw - torch.tensor(vector), -1).numpy(), atol=1e-6)
    assert calibrated.card()["calibration"] == {"mode": "batch", "vector": vector}


def test_old_run_reads_labels_from_task_yaml(tiny_model_dir, tmp_path):
    run = write_run(tmp_path / "old", str(tiny_model_dir), [{"prompt": PROMPT, "dev_acc": 0.5}], label_names=None)
    (run / "task.yaml").write_text("name: toy\ntrain: train.tsv\nlabels: [neg, pos]\n")
    assert export_card(run)["label_names"] == ["neg", "pos"]


@pytest.mark.parametrize("change, words", [
    (lambda card: card.pop("template"), "lacks template"),
    (lambda card: card.update(calibration={"mode": "batch", "vector": [1.0]}), "vector of 2 numbers"),
    (lambda card: card.update(verbalizers=[" great"]), "one verbalizer per label"),
    (lambda card: card.update(template="{sentence} It was"), "{prompt}"),
])
def test_bad_cards_are_one_line_errors(tiny_run, change, words):
    card = export_card(tiny_run[0])
    change(card)
    with pytest.raises(UserError, match=words.replace("{", r"\{").replace("}", r"\}")):
        PromptClassifier.from_card(card, device="cpu")


def test_bad_export_requests(tiny_run, tmp_path, capsys):
    import evaluate

    with pytest.raises(UserError, match="rank must be 1..2"):
        export_card(tiny_run[0], rank=3)
    assert evaluate.main(["--export", str(tmp_path / "c.json")]) == 2
    assert "need --run" in capsys.readouterr().err
    assert evaluate.main(["--run", str(tmp_path), "--export", str(tmp_path / "c.json")]) == 2
    assert "prompts.json" in capsys.readouterr().err


@pytest.mark.slow
def test_classifier_reproduces_a_real_runs_test_accuracy(tmp_path, data_dir):
    """A short real train.py run on the embedded SmolLM2 (default precision), its test set cut to 100
    SST-2 test examples and no baselines so the run's own test scoring stays fast (train.py's dev
    baselines on the real model: test_reliability's offline run); from_run must give the same accuracy."""
    lines = (data_dir / "sst-2" / "test.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "test.tsv").write_text("\n".join(lines[:101]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "--task", "sst2", "--data-dir", str(data_dir),
                           "--test", str(tmp_path / "test.tsv"), "--steps", "1", "--prompts-per-step", "2",
                           "--eval-every", "1", "--no-baselines", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    best = json.loads((out / "prompts.json").read_text())[0]
    clf = PromptClassifier.from_run(out, device="cpu")
    examples = [line.split("\t") for line in lines[1:101]]
    predicted = clf.predict([text for text, _ in examples])
    acc = np.mean([p == clf.label_names[int(label)] for p, (_, label) in zip(predicted, examples)])
    assert abs(acc - best["test_acc"]) <= 0.001, (acc, best)
