"""Nothing lost, reproducible, offline: real signals to real train.py processes, identical reruns,
non-finite rewards skipped and counted, and no network use unless asked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlprompt.checkpoint import rng_state, set_rng_state
from tests.rl_helpers import ParityTaskLM
from tests.test_training import toy_trainer

REPO = Path(__file__).resolve().parent.parent
STEPS = 30


def train_args(tiny_model_dir, data_dir, out: Path) -> list[str]:
    return ["--task", "sst2", "--data-dir", str(data_dir), "--policy-model", str(tiny_model_dir),
            "--task-model", str(tiny_model_dir), "--prompts-per-step", "4", "--steps", str(STEPS),
            "--eval-every", "5", "--checkpoint-every", "1", "--skip-test", "--out", str(out)]


def numbers(run_dir: Path) -> tuple[list, list]:
    """(prompts.json rows, per-step history without timings) of a finished run."""
    history = [{k: v for k, v in h.items() if not k.startswith("time/")}
               for h in json.loads((run_dir / "history.json").read_text())]
    return json.loads((run_dir / "prompts.json").read_text()), history


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, data_dir) -> Path:
    out = tmp_path_factory.mktemp("runs") / "whole"
    proc = subprocess.run([sys.executable, "train.py", *train_args(tiny_model_dir, data_dir, out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_same_seed_same_numbers(uninterrupted, tiny_model_dir, data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "train.py", *train_args(tiny_model_dir, data_dir, tmp_path / "again")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert numbers(tmp_path / "again") == numbers(uninterrupted)


@pytest.mark.slow
def test_run_seed_redraws_the_run_on_the_same_split(uninterrupted, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "redrawn"
    proc = subprocess.run([sys.executable, "train.py", *train_args(tiny_model_dir, data_dir, out), "--run-seed", "7"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = [json.loads((run / "summary.json").read_text()) for run in (uninterrupted, out)]
    assert summaries[0]["seed"] == summaries[1]["seed"] == 13
    assert summaries[0]["baselines"] and summaries[0]["baselines"] == summaries[1]["baselines"]  # same split
    assert numbers(out)[1] != numbers(uninterrupted)[1]  # another draw of the samples
    assert json.loads((out / "config.json").read_text())["run_seed"] == summaries[1]["run_seed"] == 7
    assert summaries[0]["run_seed"] == 13


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resume_equals_uninterrupted(signum, uninterrupted, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "train.py", *train_args(tiny_model_dir, data_dir, out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert f"Resume with: python train.py --resume {out}" in err
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 1 <= saved["step"] < STEPS  # stopped in the middle, the last finished step saved
    assert not (out / "prompts.json").exists()

    resumed = subprocess.run([sys.executable, "train.py", "--resume", str(out)], cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {out} at step {saved['step']}" in resumed.stdout
    assert numbers(out) == numbers(uninterrupted)


@pytest.mark.slow
def test_sigterm_while_scoring_test_keeps_dev_results_and_resume_finishes(tiny_model_dir, tmp_path, monkeypatch,
                                                                        capsys):
    """A real SIGTERM arrives as test scoring starts (after an early stop): the run exits 130 with one
    line, the dev-only prompts/summary/report stay on disk, and --resume scores the test set without
    training again."""
    import rlprompt.evaluation
    import train

    real = rlprompt.evaluation.evaluate_prompts

    def terminated_then_score(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    train_file, test_file = tmp_path / "train.csv", tmp_path / "test.csv"
    train_file.write_text("review,stars\n" + "".join(f"fine film {i},good\ndull film {i},bad\n" for i in range(6)))
    test_file.write_text("review,stars\nGreat fun,good\nAwful,bad\n")
    out = tmp_path / "run"
    argv = ["--train", str(train_file), "--test", str(test_file), "--text-column", "review",
            "--label-column", "stars", "--labels", "bad,good", "--verbalizers", '" terrible"," great"',
            "--policy-model", str(tiny_model_dir), "--task-model", str(tiny_model_dir),
            "--steps", "20", "--prompts-per-step", "4", "--eval-every", "1", "--patience", "1", "--out", str(out)]
    monkeypatch.setattr(rlprompt.evaluation, "evaluate_prompts", terminated_then_score)
    assert train.main(argv) == 130
    assert f"Score the test set with: python train.py --resume {out}" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    prompts = json.loads((out / "prompts.json").read_text())
    assert prompts and all(r["test_acc"] is None for r in prompts)
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["stop_reason"].startswith("early stop") and stopped["steps"] < 20
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()

    monkeypatch.setattr(rlprompt.evaluation, "evaluate_prompts", real)
    assert train.main(["--resume", str(out)]) == 0
    assert f"resumed {out} at step {stopped['steps']}" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["stop_reason"]) == (stopped["steps"], stopped["stop_reason"])
    assert torch.load(out / "checkpoint.pt", weights_only=False)["train_s"] > 0
    assert summary["wall_s"] >= stopped["wall_s"]  # training time is summed over resumes, not restarted
    assert summary["best_prompt"]["test_acc"] is not None
    assert all(b["test_acc"] is not None for b in summary["baselines"])


class FlakyTaskLM(ParityTaskLM):
    """The toy task LM, but every prompt scored on a call listed in `bad_calls` gets NaN log-probs."""

    def __init__(self, tokenizer, bad_calls):
        super().__init__(tokenizer)
        self.calls, self.bad_calls = 0, set(bad_calls)

    def score(self, prompts, sentences):
        out = super().score(prompts, sentences)
        self.calls += 1
        return out.fill_(float("nan")) if self.calls in self.bad_calls else out


def test_non_finite_rewards_skip_the_step_and_are_counted(smol_tokenizer, tmp_path):
    scorer = FlakyTaskLM(smol_tokenizer, bad_calls={2, 3})  # the 2nd and 3rd train steps
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=6, scorer=scorer)
    before = [p.detach().clone() for p in trainer.policy.adaptor.parameters()]
    after_first = None
    for step in range(3):
        metrics = trainer.train_step()
        trainer.book.log(metrics)
        trainer.book.step += 1
        if step == 0:
            after_first = [p.detach().clone() for p in trainer.policy.adaptor.parameters()]
    assert trainer.book.skipped_steps == 2
    assert [h["charts/skipped_steps"] for h in trainer.book.history] == [0, 1, 2]
    assert np.isnan(trainer.book.history[1]["charts/reward_mean"])
    assert not all(torch.equal(a, b) for a, b in zip(before, after_first))  # the good step updated
    for a, p in zip(after_first, trainer.policy.adaptor.parameters()):  # the bad ones did not
        assert torch.equal(a, p) and torch.isfinite(p).all()
    assert all(np.isfinite(r.train_reward) for r in trainer.book.leaderboard.records.values())



@pytest.mark.parametrize("objective", [{"elite_coef": 1.0, "elite_size": 4}, {"trainer": "sql"}], ids=["elite", "sql"])
def test_a_failed_first_step_leaves_nothing_in_the_objective(smol_tokenizer, tmp_path, objective):
    scorer = FlakyTaskLM(smol_tokenizer, bad_calls={1})
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=6, scorer=scorer, **objective)
    for _ in range(3):
        trainer.book.log(trainer.train_step())
        trainer.book.step += 1
    assert trainer.book.skipped_steps == 1
    if "elite_coef" in objective:  # the elite term starts with the first scored step
        assert len(trainer.objective.elite.rewards) == 4 and np.isfinite(trainer.objective.elite.rewards).all()
        assert "losses/elite_nll" not in trainer.book.history[0] and "losses/elite_nll" in trainer.book.history[1]
    else:  # the failed step's prompts are not replayed with made-up rewards
        assert len(trainer.objective.replay.rewards) == 2 * 8 and torch.isfinite(trainer.objective.replay.rewards).all()


def test_a_greedy_prompt_that_fails_on_train_at_a_dev_check_is_no_candidate(smol_tokenizer, tmp_path):
    scorer = FlakyTaskLM(smol_tokenizer, bad_calls={2})  # call 1 scores the greedy prompt on dev, call 2 on train
    trainer = toy_trainer(smol_tokenizer, tmp_path, steps=6, scorer=scorer)
    metrics = trainer.book.evaluate_on_dev()
    assert metrics["greedy_prompt"] not in trainer.book.leaderboard.records
    assert (trainer.book.best_dev, trainer.book.evals_without_improvement) == (-1.0, 1)


def test_a_sampler_state_from_another_device_type_seeds_the_generator_deterministically():
    state = rng_state(torch.Generator().manual_seed(0))
    state["sampler"] = torch.arange(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    draws = []
    for _ in range(2):
        generator = torch.Generator()
        set_rng_state(state, generator)
        draws.append(torch.rand(4, generator=generator))
    assert torch.equal(*draws) and not torch.equal(draws[0], torch.rand(4, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("update_kl, saved_lr, expected", [(0.0, 3e-3, 1e-4), (0.02, 5e-5, 5e-5), (0.02, 3e-3, 1e-4)])
def test_a_learning_rate_given_on_resume_applies(smol_tokenizer, tmp_path, update_kl, saved_lr, expected):
    first = toy_trainer(smol_tokenizer, tmp_path, steps=2, update_kl=update_kl)
    first.optimizer.param_groups[0]["lr"] = saved_lr  # under --update-kl the rate lives in the optimizer
    state = first.book.state_dict()
    second = toy_trainer(smol_tokenizer, tmp_path, steps=4, update_kl=update_kl, lr=1e-4)
    second.load_state_dict(state)
    assert second.optimizer.param_groups[0]["lr"] == expected  # --lr, or under --update-kl its ceiling


GUARD = textwrap.dedent("""
    import runpy, socket, sys, traceback
    log = sys.argv[1]
    def refuse(*args, **kwargs):
        with open(log, "a") as f:
            f.write(repr(args[:2]) + "\\n" + "".join(traceback.format_stack(limit=8)))
        raise OSError("network use refused by the test")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    script, argv = sys.argv[2], sys.argv[3:]
    sys.argv = [script] + argv
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        sys.exit(e.code)
""")


def guarded(log: Path, script: str, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))}
    return subprocess.run([sys.executable, "-c", GUARD, str(log), script, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_offline_by_default(tmp_path, data_dir):
    """The embedded model trains and evaluates with every socket refused; an unknown hub id is a
    one-line error that names --allow-download, found without trying the network."""
    log = tmp_path / "attempts.txt"
    proc = guarded(log, "train.py", "--task", "sst2", "--data-dir", str(data_dir), "--steps", "1",
                   "--prompts-per-step", "2", "--skip-test", "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = guarded(log, "evaluate.py", "--task-model", "nobody/no-such-model", "--data-dir", str(data_dir))
    assert proc.returncode == 2 and "--allow-download" in proc.stderr, proc.stderr[-2000:]
    assert not log.exists(), log.read_text()


def test_atomic_write_replaces_whole_and_keeps_usual_permissions(tmp_path):
    """A file written atomically holds the new text only, leaves no temp file, and gets the permissions
    open() would give it (0o666 less the umask), not the private 0o600 of the temp file it was made as."""
    from rlprompt.atomic import atomic_write_text

    path, plain = tmp_path / "summary.json", tmp_path / "plain.txt"
    path.write_text("old, longer text", encoding="utf-8")
    atomic_write_text(path, "new")
    plain.write_text("made by open()", encoding="utf-8")
    assert path.read_text(encoding="utf-8") == "new"
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # 0o644 under the usual umask 022
    plain.unlink()
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
