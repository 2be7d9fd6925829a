"""Calibrated scoring (rlprompt/calibration.py) and the baselines (rlprompt/baselines.py): the vectors,
the wrapper, the k-shot demos, the strongest baseline, and the round trip train.py --calibration batch ->
prompts.json -> evaluate.py --run on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
from rlprompt.baselines import Baselines, demo_template, manual_candidates, pick_demos, strongest
from rlprompt.calibration import CalibratedScorer, apply, check_mode, estimate, saved_vectors, unlabeled_inputs
from rlprompt.config import TrainConfig
from rlprompt.errors import UserError
from rlprompt.tasks import Example, Task

REPO = Path(__file__).resolve().parent.parent


class BiasedScorer:
    """A toy scorer: every prompt leans to class 1 by `bias` nats; inputs named 'pos …' add +1 nat to
    class 1, 'neg …' add +1 nat to class 0. Counts the pairs it scores."""

    def __init__(self, bias: float = 3.0):
        self.bias = bias
        self.verbalizer_ids = torch.tensor([0, 1])
        self.pairs_scored = 0

    def score(self, prompts, sentences):
        out = torch.zeros(len(prompts), len(sentences), 2)
        for e, s in enumerate(sentences):
            out[:, e, 1] = self.bias + (1.0 if s.startswith("pos") else -1.0 if s.startswith("neg") else 0.0)
        self.pairs_scored += len(prompts) * len(sentences)
        return torch.log_softmax(out, -1)


UNLABELED = ["pos a", "neg b", "pos c", "neg d"]


def test_batch_vector_is_the_mean_log_softmax_and_removes_the_bias():
    scorer = BiasedScorer()
    raw = scorer.score(["p"], UNLABELED)
    vec = estimate(scorer, "batch", ["p"], UNLABELED)
    assert torch.allclose(vec, torch.log_softmax(raw, -1).mean(1))
    assert raw.argmax(-1).tolist() == [[1, 1, 1, 1]]  # biased: always class 1
    assert apply(raw, vec).argmax(-1).tolist() == [[1, 0, 1, 0]]  # calibrated: follows the input


def test_batch_calibration_samples_a_large_train_split_once_and_keeps_small_ones_whole():
    small = [Example(f"s{i}", i % 2) for i in range(32)]
    assert unlabeled_inputs(small) == [e.text for e in small]  # the presets: every train input, in order
    large = [Example(f"t{i}", i % 2) for i in range(10_000)]
    sample = unlabeled_inputs(large, limit=128)
    assert len(set(sample)) == 128 and sample == unlabeled_inputs(large, limit=128)  # fixed: the same each call
    assert sorted(sample, key=lambda t: int(t[1:])) == sample  # file order
    assert sample != [e.text for e in large[:128]]  # a sample across the file, not its head
    scorer = CalibratedScorer(BiasedScorer(), "batch", sample)
    scorer.score(["p"], ["pos z"])
    assert scorer.pairs_scored == 1 + 128  # a new prompt's vector costs the sample, not the 10,000


def test_per_call_view_calibrates_each_call_on_its_own_inputs_at_no_extra_pairs():
    from types import SimpleNamespace

    from rlprompt.build import reward_scorer

    inner = BiasedScorer()
    scorer = CalibratedScorer(inner, "batch", UNLABELED)
    view = scorer.per_call_view()
    batch = ["pos q", "neg r", "neg s", "neg t"]
    out = view.score(["p"], batch)
    assert inner.pairs_scored == 4  # no estimation pass on UNLABELED
    raw = torch.log_softmax(inner.score(["p"], batch), -1)
    assert torch.allclose(out, raw - raw.mean(1, keepdim=True))
    assert scorer._vectors == {}  # the view never writes the shared vectors
    cfg = SimpleNamespace(train_batch=32)
    small, large = [Example("x", 0)] * 32, [Example("x", 0)] * 1000
    assert reward_scorer(cfg, scorer, small) is scorer  # the presets: the train split is the estimation set
    assert reward_scorer(cfg, scorer, large).per_call
    assert reward_scorer(cfg, inner, large) is inner  # uncalibrated: nothing to do


def test_contextual_vector_comes_from_content_free_inputs():
    scorer = BiasedScorer()
    vec = estimate(scorer, "contextual", ["p"], UNLABELED)
    neutral = torch.log_softmax(torch.tensor([0.0, 3.0]), -1)  # "N/A", "" and "[MASK]" carry no sentiment
    assert torch.allclose(vec[0], neutral)
    assert torch.equal(estimate(scorer, "none", ["p", "q"], UNLABELED), torch.zeros(2, 2))


def test_calibrated_scorer_remembers_vectors_and_uses_saved_ones():
    inner = BiasedScorer()
    scorer = CalibratedScorer(inner, "batch", UNLABELED, vectors={"saved": [0.0, 100.0]})
    out = scorer.score(["p", "saved"], UNLABELED)
    assert inner.pairs_scored == 8  # scoring the estimation set itself gives the vector: no second pass
    assert out[0].argmax(-1).tolist() == [1, 0, 1, 0]
    assert out[1].argmax(-1).tolist() == [0, 0, 0, 0]  # the saved vector, not a new estimate
    assert scorer.calibration("saved") == {"mode": "batch", "vector": [0.0, 100.0]}
    scorer.score(["p"], ["pos z"])
    assert inner.pairs_scored == 9  # p's vector is remembered
    assert scorer.pairs_scored == inner.pairs_scored  # other attributes pass through


def test_pairs_banked_on_a_wrapped_scorer_keep_counting_new_pairs():
    """What a resume does (`scorer.pairs_scored += earlier`): the count must stay the model scorer's,
    or the pairs scored after the resume go uncounted."""
    from types import SimpleNamespace

    from rlprompt.distributed import ShardedScorer

    inner = BiasedScorer()
    sharded = ShardedScorer(inner, SimpleNamespace(process_index=0, num_processes=1))
    for scorer in (CalibratedScorer(inner, "batch", UNLABELED), sharded, CalibratedScorer(sharded, "batch", UNLABELED)):
        inner.pairs_scored = 0
        scorer.pairs_scored += 100
        scorer.score(["p"], UNLABELED)
        assert scorer.pairs_scored == inner.pairs_scored == 104


def test_unwrapping_a_calibrated_sharded_scorer_keeps_the_calibration_on_the_local_scorer():
    from types import SimpleNamespace

    from rlprompt.distributed import ShardedScorer, unwrap_scorer

    local = BiasedScorer()
    sharded = ShardedScorer(local, SimpleNamespace(process_index=0, num_processes=2))
    scorer = CalibratedScorer(sharded, "batch", UNLABELED, vectors={"saved": [0.0, 100.0]})
    unwrapped = unwrap_scorer(scorer)  # what trl's processes score with
    assert isinstance(unwrapped, CalibratedScorer) and unwrapped.scorer is local
    assert (unwrapped.mode, unwrapped.unlabeled) == ("batch", UNLABELED)
    assert unwrapped.calibration("saved") == {"mode": "batch", "vector": [0.0, 100.0]}
    plain = CalibratedScorer(local, "batch", UNLABELED)
    assert unwrap_scorer(plain) is plain and unwrap_scorer(sharded) is local


def test_bad_calibration_input_is_one_line():
    with pytest.raises(UserError, match="unknown calibration 'bogus'; use none, batch, contextual"):
        check_mode("bogus")
    with pytest.raises(UserError, match="unknown calibration"):
        TrainConfig(calibration="bogus")
    with pytest.raises(UserError, match="no batch calibration vector.*drop --calibration"):
        saved_vectors([{"prompt": "x"}], "batch", 2, "run/prompts.json")
    with pytest.raises(UserError, match="3 values for 2 verbalizers"):
        saved_vectors([{"prompt": "x", "calibration": {"mode": "batch", "vector": [1, 2, 3]}}], "batch", 2, "r")
    with pytest.raises(UserError, match="no train examples"):
        estimate(BiasedScorer(), "batch", ["p"], [])


def _task(n=8):
    make = lambda tag: [Example(f"{'pos' if i % 2 else 'neg'} {tag} {i}", i % 2) for i in range(n)]  # noqa: E731
    return Task(name="toy", label_names=["neg", "pos"], verbalizers=[" bad", " good"],
                template="{sentence} {prompt} It was", train=make("train"), dev=make("dev"), test=make("test"),
                manual_prompt="first", manual_prompts=["first", "second", "third"])


def test_demos_are_balanced_seeded_and_rendered_with_the_gold_verbalizer():
    task = _task()
    demos = pick_demos(task.train, 4, seed=13)
    assert sorted(d.label for d in demos) == [0, 0, 1, 1]
    assert demos == pick_demos(task.train, 4, seed=13)
    assert any(pick_demos(task.train, 4, seed=s) != demos for s in (21, 42, 87))
    template = demo_template(task, demos[:2])
    first = demos[0]
    assert template.startswith(f"{first.text} It was{task.verbalizers[first.label]}\n\n")
    assert template.endswith("\n\n{sentence} {prompt} It was")
    assert manual_candidates(task) == ["first", "second", "third"]


def test_baselines_rows_and_strongest_on_a_tiny_lm(tiny_lm):
    from rlprompt.scorer import build_scorer

    model, tok = tiny_lm
    task = _task()
    scorer = build_scorer(model, tok, task.template, task.verbalizers)
    rows = Baselines(scorer, task, seed=13).rows({"dev": task.dev, "test": task.test})
    assert [r["name"] for r in rows] == ["no prompt", "manual prompt", "4-shot",
                                         "no prompt (batch)", "manual prompt (batch)", "4-shot (batch)"]
    assert rows[1]["prompt"] in manual_candidates(task) and len(rows[2]["demos"]) == 4
    assert all(0 <= r["dev_acc"] <= 1 and 0 <= r["test_acc"] <= 1 for r in rows)
    top = strongest(rows)
    assert top["test_acc"] == max(r["test_acc"] for r in rows) and top["chosen_by"] == "test"
    assert top["best_on_dev"]["dev_acc"] == max(r["dev_acc"] for r in rows)
    assert strongest([{**r, "test_acc": None} for r in rows])["chosen_by"] == "dev"


def test_best_on_dev_breaks_ties_without_looking_at_test():
    rows = [{"name": "no prompt", "dev_acc": 0.8, "test_acc": 0.70},
            {"name": "4-shot", "dev_acc": 0.8, "test_acc": 0.90},
            {"name": "manual prompt", "dev_acc": 0.7, "test_acc": 0.95}]
    top = strongest(rows)
    assert top["name"] == "manual prompt" and top["chosen_by"] == "test"
    assert top["best_on_dev"]["name"] == "no prompt"  # tied on dev: the first (simplest), not the best on test


def test_manual_prompt_is_chosen_on_dev():
    class Prefers(BiasedScorer):  # only the prompt "second" reads the input; the others always say class 1
        def score(self, prompts, sentences):
            out = super().score(prompts, sentences)
            for p, prompt in enumerate(prompts):
                if prompt != "second":
                    out[p] = torch.log_softmax(torch.tensor([0.0, 5.0]), -1)
            return out

    task = _task()
    assert Baselines(Prefers(bias=0.0), task, seed=13, k=0).manual_prompt() == "second"


# ---- the round trip: a prompt trained with --calibration batch is evaluated with its saved vector ----

def run(script, args, cwd):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_calibration_round_trip_train_to_evaluate(tiny_model_dir, data_dir, tmp_path):
    run_dir = tmp_path / "cal"
    model = ["--policy-model", str(tiny_model_dir), "--task-model", str(tiny_model_dir)]
    proc = run("train.py", ["--task", "sst2", "--data-dir", str(data_dir), "--calibration", "batch", "--steps", "2",
                            "--prompts-per-step", "4", "--eval-every", "1", "--skip-test", "--out", str(run_dir)]
               + model, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "strongest baseline" in proc.stdout
    rows = json.loads((run_dir / "prompts.json").read_text())
    assert all(r["calibration"]["mode"] == "batch" and len(r["calibration"]["vector"]) == 2 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["calibration"] == "batch" and summary["strongest_baseline"]["chosen_by"] == "dev"
    assert {"no prompt", "manual prompt", "4-shot", "no prompt (batch)"} <= {b["name"] for b in summary["baselines"]}

    # evaluate.py --run scores the run's prompts with the vectors saved in prompts.json
    proc = run("evaluate.py", ["--run", str(run_dir), "--num-prompts", "1", "--splits", "dev"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run_dir / "results.json").read_text())
    first = next(r for r in res["results"] if r["source"] == "run #1")
    assert res["calibration"] == "batch" and first["calibration"] == rows[0]["calibration"]

    # a vector edited in prompts.json is the one used: +1000 nats on class 1 makes every answer class 0
    rows[0]["calibration"]["vector"] = [0.0, 1000.0]
    (run_dir / "prompts.json").write_text(json.dumps(rows))
    proc = run("evaluate.py", ["--run", str(run_dir), "--num-prompts", "1", "--splits", "dev"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run_dir / "results.json").read_text())
    first = next(r for r in res["results"] if r["source"] == "run #1")
    dev_labels = [int(line.rsplit("\t", 1)[1]) for line in
                  (data_dir / "sst-2/16-shot/13/dev.tsv").read_text().splitlines()[1:]]
    assert first["dev_acc"] == pytest.approx(dev_labels.count(0) / len(dev_labels))


def test_calibration_flag_on_a_run_without_vectors(tmp_path, data_dir, capsys):
    run_dir = tmp_path / "plain"
    run_dir.mkdir()
    (run_dir / "prompts.json").write_text(json.dumps([{"prompt": "Best one"}]))
    (run_dir / "config.json").write_text(json.dumps({"task": "sst2", "seed": 13, "data_dir": str(data_dir)}))
    rc = evaluate.main(["--run", str(run_dir), "--calibration", "batch", "--splits", "dev", "--limit", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "no batch calibration vector" in err and "drop --calibration" in err
    rc = evaluate.main(["--task", "sst2", "--calibration", "bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: unknown calibration 'bogus'") and err.count("\n") == 1
