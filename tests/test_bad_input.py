"""The bad-input catalogue: every kind of bad input across the CLIs, task files and data files gives
one `error:` line that names the problem, a non-zero exit code, and leaves what is on disk untouched."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import evaluate
import train
from rlprompt.cli import run_cli

HELD_LOCKS = []  # descriptors that hold busy_run/.lock for the module, as a running train.py would
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
        "test_unknown.csv": "text,label\nx,meh\n",
        "floats.csv": "text,label\n" + "".join(f"item {i},{i % 3 + 1}.0\n" for i in range(9)),
        "ints_bad.csv": "text,label\nx,1\ny,7\n",
        "sst_bad.tsv": "sentence\tlabel\nfine\t1\nodd\t5\n",
        "empty_text.csv": "text,label\n ,good\n",
        "large_bad_last.csv": "text,label\n" + "".join(f"row number {i},good\n" for i in range(100_000))
        + "no label at the end\n",
    }
    for name, text in files.items():
        (ws / name).write_text(text, encoding="utf-8")
    (ws / "latin1.csv").write_bytes("text,label\ncaf\xe9,good\nthé,bad\n".encode("latin-1"))
    (ws / "late_latin1.csv").write_bytes(("text,label\n" + "fine,good\n" * 3).encode() + "caf\xe9,bad\n".encode("latin-1"))
    (ws / "a_file").write_text("not a folder")
    (ws / "a_folder").mkdir()
    busy = ws / "busy_run"
    busy.mkdir()
    (busy / "config.json").write_text("{}")
    fd = os.open(busy / ".lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    HELD_LOCKS.append(fd)
    killed = ws / "killed_run"  # a run killed before its first checkpoint
    killed.mkdir()
    (killed / "config.json").write_text("{}")
    (killed / "task.yaml").write_text("name: sst2\n")
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
        "a REINFORCE setting for another trainer": (train, ["--trainer", "sql", "--cov-clip", "0.05"],
                                                    ["--cov-clip works with --trainer reinforce only", "sql"]),
        "masked log-probs for another trainer": (train, ["--trainer", "sql", "--logprobs", "masked"],
                                                 ["--logprobs works with --trainer reinforce only", "sql"]),
        "unknown prompt vocabulary": (train, ["--prompt-vocab", "emoji"], ["unknown --prompt-vocab 'emoji'", "words"]),
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
        "resume with another prompt vocabulary": (train, ["--resume", str(ws / "run"), "--prompt-vocab", "words"],
                                                  ["cannot resume", "--prompt-vocab 'words'", "'all'"]),
        "resume with another adaptor width": (train, ["--resume", str(ws / "run"), "--adaptor-hidden", "64"],
                                              ["cannot resume", "--adaptor-hidden 64"]),
        "lr nan": (train, ["--lr", "nan"], ["--lr must be positive", "nan"]),
        "lr inf": (train, ["--lr", "inf"], ["--lr must be positive", "inf"]),
        "kl coef nan": (train, ["--kl-coef", "nan"], ["--kl-coef", "nan"]),
        "negative entropy coef": (train, ["--entropy-coef", "-0.5"], ["--entropy-coef", "zero or more"]),
        "reward scale 0": (train, ["--reward-scale", "0"], ["--reward-scale must be positive"]),
        "grad norm inf": (train, ["--max-grad-norm", "inf"], ["--max-grad-norm", "inf"]),
        "checkpoint seconds nan": (train, ["--checkpoint-every-s", "nan"], ["--checkpoint-every-s", "seconds"]),
        "checkpoint steps 0": (train, ["--checkpoint-every", "0"], ["--checkpoint-every must be at least 1"]),
        "train batch 0": (train, ["--train-batch", "0"], ["--train-batch must be at least 1"]),
        "negative seed": (train, ["--seed", "-1"], ["--seed", "0 to 2**32-1"]),
        "negative run seed": (train, ["--run-seed", "-1"], ["--run-seed", "0 to 2**32-1"]),
        "dev fraction nan": (train, csv + ["--dev-fraction", "nan"], ["--dev-fraction", "between 0 and 1"]),
        "top-k 0": (train, ["--top-k", "0"], ["--top-k must be at least 1"]),
        "negative patience": (train, ["--patience", "-1"], ["--patience"]),
        # run folders
        "out holds a run": (train, sst2 + model + ["--out", str(ws / "run")],
                            ["already holds a run", "--resume", "--overwrite"]),
        "out in use by another process": (train, sst2 + model + ["--out", str(ws / "busy_run")],
                                          ["in use by another train.py process", "pid 4242"]),
        "overwrite and resume": (train, ["--resume", str(ws / "run"), "--overwrite"], ["--overwrite", "--resume"]),
        "resume a run killed before its first checkpoint": (train, ["--resume", str(ws / "killed_run")],
                                                            ["no checkpoint in", "training is lost", "--overwrite"]),
        "failed start with --out": (train, sst2 + ["--policy-model", "nobody/none", "--out", str(ws / "new_run")],
                                    ["cannot load model"]),
        # data files
        "data path is a folder": (train, ["--train", str(ws / "a_folder")], ["a_folder is a folder"]),
        "data path missing, no extension": (train, ["--train", str(ws / "nothing")], ["data file not found"]),
        "unknown label in test": (train, csv + ["--test", str(ws / "test_unknown.csv")],
                                  ["test_unknown.csv:2", "'meh'", "['bad', 'good']"]),
        "integer label unknown to float labels": (train, ["--train", str(ws / "floats.csv"), "--test",
                                                          str(ws / "ints_bad.csv")],
                                                  ["ints_bad.csv:3", "'7'", "['1', '2', '3']"]),
        "label index out of range": (train, sst2 + ["--test", str(ws / "sst_bad.tsv")],
                                     ["sst_bad.tsv:3", "outside the label set 0..1", "['negative', 'positive']"]),
        "wrong encoding on a late line": (train, ["--train", str(ws / "late_latin1.csv")],
                                          ["late_latin1.csv:5", "not UTF-8"]),
        "empty text": (train, ["--train", str(ws / "empty_text.csv")], ["empty_text.csv:2", "empty text"]),
        "bad last row of a large file": (train, ["--train", str(ws / "large_bad_last.csv")],
                                         ["large_bad_last.csv:100002", "1 field(s)"]),
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
        "eval run that did not finish": (evaluate, ["--run", str(ws / "corrupt_run")],
                                         ["no prompts.json yet", f"train.py --resume {ws / 'corrupt_run'}"]),
        "eval negative seed": (evaluate, sst2 + ["--seed", "-3"], ["--seed", "0 to 2**32-1"]),
        "eval dev fraction inf": (evaluate, csv + ["--dev-fraction", "inf"], ["--dev-fraction"]),
        "eval budget 0": (evaluate, sst2 + ["--compare", "manual", "--budget", "0"], ["--budget must be at least 1"]),
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
    assert not (workspace / "new_run").exists()  # a start that failed after the data loaded leaves no folder
    shutil.rmtree(workspace / "a_file" / "run", ignore_errors=True)


def test_catalogue_covers_sixty_kinds():
    assert len(CASE_NAMES) >= 60


# ---- the same inputs that once went wrong silently, now ending in a correct result ------------------

REPO = Path(__file__).resolve().parent.parent


def tiny_train(tiny_model_dir, data_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", "--task", "sst2", "--data-dir", str(data_dir), "--policy-model",
            str(tiny_model_dir), "--task-model", str(tiny_model_dir), "--prompts-per-step", "4", "--skip-test",
            "--out", str(out), *extra]


def test_two_writers_on_one_folder_one_is_refused(tiny_model_dir, data_dir, tmp_path):
    """Two train.py processes started together on one --out: one trains, the other exits 2 with one
    line, and every file in the folder is the winner's (config, task, checkpoint, summary)."""
    out = tmp_path / "shared"
    procs = {seed: subprocess.Popen(tiny_train(tiny_model_dir, data_dir, out, "--seed", seed, "--steps", "6"),
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in ("13", "21")}
    results = {seed: (p.wait(timeout=600), p.communicate()[1]) for seed, p in procs.items()}
    codes = sorted(rc for rc, _ in results.values())
    assert codes == [0, 2], results
    winner = next(seed for seed, (rc, _) in results.items() if rc == 0)
    loser_err = next(err for rc, err in results.values() if rc == 2)
    lines = [line for line in loser_err.splitlines() if line.strip()]
    assert len(lines) == 1 and ("in use by another train.py process" in lines[0]
                                or "already holds a run" in lines[0]), loser_err
    assert "Traceback" not in loser_err
    config = json.loads((out / "config.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert config["seed"] == summary["seed"] == checkpoint["config"]["seed"] == int(winner)
    assert f"/{winner}/" in (out / "task.yaml").read_text()


def test_overwrite_moves_the_old_run_aside(workspace, tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(workspace / "run", out)
    before = snapshot(out)
    argv = ["--task", "sst2", "--data-dir", str(data_dir), "--policy-model", str(tiny_model_dir), "--task-model",
            str(tiny_model_dir), "--steps", "2", "--prompts-per-step", "2", "--skip-test", "--out", str(out)]
    assert run_cli(lambda: train.main(argv + ["--overwrite"])) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and f"now in {aside[0]}" in capsys.readouterr().out
    assert snapshot(aside[0]) == before  # the old run, whole and untouched
    assert json.loads((out / "summary.json").read_text())["steps"] == 2  # the new run, alone in its folder
    assert run_cli(lambda: train.main(["--resume", str(out)])) == 0  # a run made with --overwrite resumes


def test_sigkill_then_resume_equals_the_uninterrupted_run(tiny_model_dir, data_dir, tmp_path):
    """SIGKILL at a random moment of a --steps 12 run (here with a mini-batch of 16 of the 32 train
    examples), then --resume: prompts.json, the history and pairs_scored equal the uninterrupted
    run's, a stale temp file from a kill during a checkpoint write is gone, and TensorBoard has each
    step once."""
    extra = ("--steps", "12", "--train-batch", "16", "--eval-every", "4", "--checkpoint-every-s", "0.5")

    whole = tmp_path / "whole"
    proc = subprocess.run(tiny_train(tiny_model_dir, data_dir, whole, *extra), cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "a random mini-batch of 16 of the 32 train examples" in proc.stdout

    cut = tmp_path / "cut"
    proc = subprocess.Popen(tiny_train(tiny_model_dir, data_dir, cut, *extra), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after, seen, mtime = random.randint(1, 8), 0, None  # a random step, then a random moment in it
    deadline = time.time() + 300
    while seen < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
        path = cut / "checkpoint.pt"
        if path.exists() and path.stat().st_mtime != mtime:
            mtime = path.stat().st_mtime
            seen = torch.load(path, weights_only=False)["step"]
    time.sleep(random.uniform(0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (cut / ".checkpoint.pt.x1y2.tmp").write_bytes(b"")  # what a kill during the write leaves
    killed_at = torch.load(cut / "checkpoint.pt", weights_only=False)["step"]
    assert 1 <= killed_at <= 12

    resumed = subprocess.run([sys.executable, "train.py", "--resume", str(cut)], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (cut / "prompts.json").read_text() == (whole / "prompts.json").read_text()

    def history(run):
        return [{k: v for k, v in h.items() if not k.startswith("time/")}
                for h in json.loads((run / "history.json").read_text())]

    assert history(cut) == history(whole)
    summary = {run: json.loads((run / "summary.json").read_text()) for run in (cut, whole)}
    assert summary[cut]["pairs_scored"] == summary[whole]["pairs_scored"] > 0
    assert not list(cut.glob(".*.tmp"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(cut))
    events.Reload()
    assert [e.step for e in events.Scalars("charts/reward_mean")] == list(range(1, 13))


def test_float_and_integer_labels_are_one_label(tiny_model_dir, tmp_path, capsys):
    """Train labels written 1.0 … 3.0 (as pandas writes them) and test labels 1 … 3 are the same labels:
    the test integers are names, not indexes shifted by one."""
    from rlprompt.tasks import TaskSpec

    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"item {i},{i % 3 + 1}.0\n" for i in range(9)))
    (tmp_path / "test.csv").write_text("text,label\n" + "".join(f"case {i},{i % 3 + 1}\n" for i in range(6)))
    argv = ["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--task-model",
            str(tiny_model_dir), "--verbalizers", " bad, ok, good", "--prompt", "Rating:", "--splits", "test",
            "--out", str(tmp_path / "r.json")]
    assert evaluate.main(argv) == 0
    assert "labels inferred from the train file: ['1', '2', '3']" in capsys.readouterr().out
    task = TaskSpec(name="t", train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv")).load()
    assert [e.label for e in task.test] == [i % 3 for i in range(6)]  # '1' -> index 0, as in train


def test_labels_flag_items_are_stripped(tiny_model_dir, workspace, tmp_path, capsys):
    from rlprompt.tasks import spec_from_flags

    task = spec_from_flags(None, None, str(workspace / "good.csv"), labels="bad, good").load()
    assert task.label_names == ["bad", "good"] and task.verbalizers == [" bad", " good"]  # before any search
    argv = ["--train", str(workspace / "good.csv"), "--labels", "bad, good", "--task-model", str(tiny_model_dir),
            "--template", "rlprompt", "--verbalizers", " bad, good", "--prompt", "x", "--splits", "dev",
            "--out", str(tmp_path / "r.json")]
    assert evaluate.main(argv) == 0  # the data's labels are found under the stripped names
    assert json.loads((tmp_path / "r.json").read_text())["verbalizers"] == [" bad", " good"]


def test_a_step_scores_a_mini_batch_and_says_so_up_front(tiny_model_dir, tmp_path, capsys):
    """A train file larger than --train-batch: the run says how many examples it read and what a step
    uses before the models load; each step scores --train-batch examples; a checkpoint exists after
    step 1 even with --checkpoint-every far away."""
    from rlprompt.minibatch import TrainBatches

    (tmp_path / "big.csv").write_text("text,label\n" + "".join(f"fine {i},good\ndull {i},bad\n" for i in range(100)))
    seen = []
    real = TrainBatches.next

    def spy(self):
        batch = real(self)
        seen.append(len(batch))
        return batch

    TrainBatches.next = spy
    try:
        argv = ["--train", str(tmp_path / "big.csv"), "--policy-model", str(tiny_model_dir), "--task-model",
                str(tiny_model_dir), "--steps", "3", "--prompts-per-step", "2", "--train-batch", "8",
                "--checkpoint-every", "100", "--skip-test", "--out", str(tmp_path / "run")]
        assert run_cli(lambda: train.main(argv)) == 0
    finally:
        TrainBatches.next = real
    out = capsys.readouterr().out
    assert "data: 160 train, 40 dev, 0 test examples; each step scores 2 prompts on a random mini-batch of 8 " \
           "of the 160 train examples" in out
    assert seen == [8, 8, 8]


def test_train_batches_all_in_order_when_few_and_resumable_when_many():
    from rlprompt.minibatch import TrainBatches

    few = TrainBatches(list(range(32)), 32, seed=13)
    assert not few.sampled and few.next() == list(range(32)) and few.next() == list(range(32))
    many = TrainBatches(list(range(1000)), 32, seed=13)
    first = many.next()
    assert len(first) == len(set(first)) == 32
    state = many.state_dict()
    expected = [many.next() for _ in range(3)]
    again = TrainBatches(list(range(1000)), 32, seed=13)
    again.load_state_dict(state)
    assert [again.next() for _ in range(3)] == expected and expected[0] != first


def test_checkpoint_after_step_one_and_by_time(smol_tokenizer, tmp_path, monkeypatch):
    """Bookkeeper.checkpoint_due: step 1, every --checkpoint-every steps, and once --checkpoint-every-s
    seconds passed since the last checkpoint, whichever comes first."""
    from tests.test_training import toy_trainer

    book = toy_trainer(smol_tokenizer, tmp_path, steps=50).book
    book.cfg.checkpoint_every, book.cfg.checkpoint_every_s = 20, 60.0
    clock = [1000.0]
    monkeypatch.setattr("rlprompt.bookkeeping.time.monotonic", lambda: clock[0])
    book._saved_at = clock[0]
    due = []
    for step in range(1, 41):
        book.step = step
        clock[0] += 7.0 if step > 25 else 1.0  # slow steps after step 25
        if book.checkpoint_due():
            due.append(step)
            book._saved_at = clock[0]
    assert due == [1, 20, 33, 40]


def test_long_scoring_calls_show_progress(smol_tokenizer, capsys, monkeypatch):
    import envs.prompt_env
    from envs import PromptClassificationEnv
    from tests.rl_helpers import TOY_EXAMPLES, ParityTaskLM

    env = PromptClassificationEnv(ParityTaskLM(smol_tokenizer), TOY_EXAMPLES, str, len(smol_tokenizer), 3)
    quiet = env.score_texts(["a b", "c"])
    assert "scoring" not in capsys.readouterr().err
    monkeypatch.setattr(envs.prompt_env, "PROGRESS_PAIRS", 4)
    loud = env.score_texts(["a b", "c"])
    assert "scoring" in capsys.readouterr().err
    assert (quiet[0] == loud[0]).all() and (quiet[1] == loud[1]).all()
