"""bench/quality.py: the aggregation (one column per baseline found, strongest baseline, margin) and a
1-seed smoke run on a tiny model that resumes instead of rerunning."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("quality_bench", REPO / "bench" / "quality.py")
quality = importlib.util.module_from_spec(_spec)  # bench scripts are files, not a package
_spec.loader.exec_module(quality)


def fake_summary(seed, rl, baselines, strongest=None):
    summary = {"seed": seed, "wall_s": 10.0, "steps": 5, "pairs_scored": 100 * seed, "template": "t",
               "verbalizers": [" a", " b"], "examples": {"test": 50},
               "best_prompt": {"prompt": "p", "dev_acc": 0.9, "test_acc": rl},
               "baselines": [{"name": n, "prompt": n, "dev_acc": d, "test_acc": t} for n, d, t in baselines]}
    if strongest:
        summary["strongest_baseline"] = strongest
    return summary


def test_aggregate_makes_a_column_per_baseline_and_the_margin_over_the_strongest():
    meta = {"task": "sst2", "eval_set": "test", "wall_s": 12.0}
    a = quality.result_from_summary(fake_summary(1, 0.80, [("no prompt", 0.6, 0.70), ("manual prompt", 0.7, 0.60)]),
                                    {**meta, "seed": 1})
    b = quality.result_from_summary(fake_summary(2, 0.70, [("no prompt", 0.6, 0.50), ("4-shot demos", 0.5, 0.75)],
                                                 strongest={"name": "4-shot demos", "dev_acc": 0.5, "test_acc": 0.75}),
                                    {**meta, "seed": 2})
    assert a["strongest_baseline"]["name"] == "manual prompt"  # best on dev when the summary names none
    assert a["margin"] == pytest.approx(0.20) and b["margin"] == pytest.approx(-0.05)
    t = quality.aggregate([b, a])["sst2"]
    assert t["seeds"] == [1, 2]
    assert set(t["baselines"]) == {"no prompt", "manual prompt", "4-shot demos"}
    assert t["rl"]["mean"] == pytest.approx(0.75) and t["rl"]["std"] == pytest.approx(0.0707, abs=1e-3)
    assert t["baselines"]["4-shot demos"]["per_seed"] == {"1": None, "2": 0.75}
    assert t["baselines"]["4-shot demos"]["n"] == 1
    assert t["margin"]["mean"] == pytest.approx(0.075) and t["pairs_scored"]["total"] == 300
    table = quality.markdown("x", {"sst2": t})
    assert "| 4-shot demos |" in table and "75.0 ± 7.1" in table and "+7.5 ± 17.7" in table
    assert t["baseline_on_dev"]["names"] == {"1": "manual prompt", "2": "no prompt"}  # what dev alone picks
    assert t["baseline_on_dev"]["mean"] == pytest.approx(0.55) and t["margin_on_dev"]["mean"] == pytest.approx(0.20)
    assert "| sst2 | 2 | 70.0 | 50.0 | – | 75.0 | 4-shot demos 75.0 | -5.0 | no prompt 50.0 |" in table
    assert "| 55.0 ± 7.1 | +20.0 ± 0.0 |" in table


def bench(args, cwd):
    return subprocess.run([sys.executable, str(REPO / "bench" / "quality.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900)


@pytest.mark.slow
def test_quality_bench_smoke_one_seed_on_a_tiny_model_resumes(tiny_model_dir, data_dir, tmp_path):
    tiny = str(tiny_model_dir)
    common = ["--label", "smoke", "--tasks", "sst2", "--seeds", "13", "--eval-set", "full-dev",
              "--data-dir", str(data_dir), "--results", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs")]
    flags = ["--", "--policy-model", tiny, "--task-model", tiny, "--task-dtype", "fp32", "--steps", "2",
             "--prompts-per-step", "2", "--eval-every", "1"]
    proc = bench(common + flags, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "results" / "smoke" / "sst2__13.json").read_text())
    assert result["eval_set"] == "full-dev" and result["eval_n"] == 872
    assert "--test" in result["command"] and result["method_args"] == flags[1:]
    assert {"no prompt", "manual prompt"} <= set(result["baselines"])
    assert result["rl"]["test_acc"] is not None and result["pairs_scored"] > 0
    ranked = json.loads((tmp_path / "runs" / "smoke" / "sst2__13" / "prompts.json").read_text())
    assert [r["test_acc"] is not None for r in ranked] == [True] + [False] * (len(ranked) - 1)  # test: the chosen one
    doc = json.loads(proc.stdout[:proc.stdout.index("\n}\n") + 2])
    t = doc["tasks"]["sst2"]
    assert t["rl"]["per_seed"]["13"] == result["rl"]["test_acc"] and t["rl"]["n"] == 1
    assert "no prompt" in t["baselines"] and t["strongest_baseline"]["n"] == 1
    assert "| sst2 | full-dev (n=872) | 1 |" in proc.stdout
    assert (tmp_path / "results" / "smoke" / "quality.md").is_file()

    again = bench(common + flags, tmp_path)  # finished: read back, not rerun
    assert again.returncode == 0 and "done before" in again.stderr and "running" not in again.stderr
    assert json.loads(again.stdout[:again.stdout.index("\n}\n") + 2]) == doc
    first = tmp_path / "results" / "smoke" / "sst2__13.json"
    kept = json.loads(first.read_text())
    first.unlink()  # as if the bench was stopped after the run, or a read-back named another --results
    log = tmp_path / "runs" / "smoke" / "sst2__13.log"
    logged = log.stat().st_size
    changed = bench(common + flags + ["--lr", "1e-4"], tmp_path)
    assert changed.returncode == 2 and "holds a finished run made with lr" in changed.stderr
    reread = bench(common + flags, tmp_path)
    assert reread.returncode == 0 and "read from the finished run" in reread.stderr, reread.stderr[-2000:]
    assert log.stat().st_size == logged  # train.py did not run
    per_call = {"wall_s", "finished_at", "command", "read_from"}
    reread_result = json.loads(first.read_text())
    assert reread_result["command"] is None and reread_result["read_from"] == str(tmp_path / "runs" / "smoke" / "sst2__13")
    assert {k: v for k, v in reread_result.items() if k not in per_call} == \
        {k: v for k, v in kept.items() if k not in per_call}
    twin = tmp_path / "results" / "smoke" / "sst2__21.json"  # seed 21 finished by an earlier invocation
    twin.write_text(json.dumps(dict(result, seed=21)))
    both = bench(common + flags, tmp_path)  # --seeds 13 only: the tables cover both finished seeds
    assert both.returncode == 0 and "running" not in both.stderr
    assert json.loads(both.stdout[:both.stdout.index("\n}\n") + 2])["tasks"]["sst2"]["seeds"] == [13, 21]
    twin.unlink()

    other = bench(common + flags + ["--lr", "1e-4"], tmp_path)  # other flags under the same label
    assert other.returncode == 2 and other.stderr.strip().startswith("error: ") and "--label" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1

    borrow = [a if a != "smoke" else "ablation" for a in common] + ["--baselines-from", "smoke"]
    proc = bench(borrow + ["--learning"] + flags + ["--lr", "1e-4"], tmp_path)  # an ablation reuses smoke's baselines
    assert proc.returncode == 0, proc.stderr[-2000:]
    learned = json.loads((tmp_path / "learning" / "ablation" / "sst2__13.json").read_text())  # --learning: analysed
    assert learned["chosen"]["eval_acc"] == json.loads((tmp_path / "results" / "ablation" / "sst2__13.json")
                                                       .read_text())["rl"]["test_acc"]
    ablation = json.loads((tmp_path / "results" / "ablation" / "sst2__13.json").read_text())
    assert "--no-baselines" in ablation["command"] and ablation["baselines_from"] == "smoke"
    assert ablation["baselines"] == result["baselines"]
    assert ablation["strongest_baseline"] == result["strongest_baseline"]
    assert ablation["margin"] == pytest.approx(ablation["rl"]["test_acc"] - result["strongest_baseline"]["test_acc"])
    summary = json.loads((tmp_path / "runs" / "ablation" / "sst2__13" / "summary.json").read_text())
    assert summary["baselines"] == []  # train.py --no-baselines scored none

    learning = subprocess.run([sys.executable, str(REPO / "bench" / "learning.py"), "--label", "smoke", "--runs-dir",
                               str(tmp_path / "runs"), "--results", str(tmp_path / "learning"), "--early-steps", "1"],
                              capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert learning.returncode == 0, learning.stderr[-2000:]
    row = json.loads((tmp_path / "learning" / "smoke" / "sst2__13.json").read_text())
    assert row["eval_n"] == 872 and row["early_prompts"] >= 1
    assert row["chosen"]["eval_acc"] == result["rl"]["test_acc"]
    assert row["learns"] == (row["final_greedy"]["eval_acc"] >= row["early_best"]["eval_acc"])
    assert json.loads(learning.stdout)["runs"] == 1

    mass = subprocess.run([sys.executable, str(REPO / "bench" / "policy_mass.py"), str(tmp_path / "runs" / "smoke" /
                           "sst2__13"), "--samples", "8"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert mass.returncode == 0, mass.stderr[-2000:]
    start, trained = [json.loads(line) for line in mass.stdout.splitlines()]
    assert start["run"] == "start" and trained["seed"] == 13 and trained["logprobs"] == "full"
    for shares in (start, trained):
        assert len(shares["on_masked_tokens"]) == len(shares["in_top_k"]) == len(shares["entropy_sampling"]) > 0
        assert all(0 <= m and m + k <= 1 + 1e-3 for m, k in zip(shares["on_masked_tokens"], shares["in_top_k"]))
        assert all(0 <= s <= math.log(shares["top_k"]) + 1e-3 for s in shares["entropy_sampling"])

    curves = subprocess.run([sys.executable, str(REPO / "bench" / "learning.py"), "--label", "smoke", "--runs-dir",
                             str(tmp_path / "runs"), "--results", str(tmp_path / "learning"), "--early-steps", "1",
                             "--curves"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert curves.returncode == 0, curves.stderr[-2000:]
    with_curve = json.loads((tmp_path / "learning" / "smoke" / "sst2__13.json").read_text())
    history = json.loads((tmp_path / "runs" / "smoke" / "sst2__13" / "history.json").read_text())
    checks = [h for h in history if "greedy_prompt" in h]
    assert [step for step, _ in with_curve["greedy_curve"]] == [h["step"] for h in checks] and checks
    assert with_curve["greedy_curve"][-1][1] == row["final_greedy"]["eval_acc"]  # the last check is the final greedy
    assert {k: v for k, v in with_curve.items() if k != "greedy_curve"} == row  # the rest is read back, not redone
    assert (tmp_path / "learning" / "smoke" / "greedy_curves.png").stat().st_size > 10_000
    gone = subprocess.run([sys.executable, str(REPO / "bench" / "learning.py"), "--label", "smoke", "--runs-dir",
                           str(tmp_path / "elsewhere"), "--results", str(tmp_path / "learning"), "--curves"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert gone.returncode == 0, gone.stderr[-2000:]  # read back: its run folders are elsewhere
    assert json.loads(gone.stdout)["per_run"] == json.loads(curves.stdout)["per_run"]

    selection = subprocess.run([sys.executable, str(REPO / "bench" / "selection.py"), "--labels", "smoke", "--runs-dir",
                                str(tmp_path / "runs"), "--results", str(tmp_path / "selection"), "--pool", "2"],
                               capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert selection.returncode == 0, selection.stderr[-2000:]
    run = json.loads((tmp_path / "selection" / "smoke" / "sst2__13.json").read_text())
    scored = [c for c in run["candidates"] if c["dev_scored"]]
    assert scored and len(run["candidates"]) <= len(scored) + 2 and run["eval_n"] == 872
    chosen = json.loads((tmp_path / "runs" / "smoke" / "sst2__13" / "summary.json").read_text())["best_prompt"]
    dev_pick = next(c for c in scored if c["prompt"] == chosen["prompt"])
    assert dev_pick["eval_acc"] == pytest.approx(result["rl"]["test_acc"])  # the "dev" rule is train.py's own pick
    rules = json.loads(selection.stdout)["labels"]["smoke"]["rules"]
    assert rules["dev"]["mean"] == pytest.approx(100 * result["rl"]["test_acc"])
    assert all(rules["oracle"]["mean"] >= r["mean"] for r in rules.values())
    gone = subprocess.run([sys.executable, str(REPO / "bench" / "selection.py"), "--labels", "smoke", "--runs-dir",
                           str(tmp_path / "elsewhere"), "--results", str(tmp_path / "selection")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert gone.returncode == 0, gone.stderr[-2000:]
    assert json.loads(gone.stdout)["labels"]["smoke"]["rules"] == rules  # read back: its run folders are elsewhere

    mutual_info = [sys.executable, str(REPO / "bench" / "mutual_info.py"), "--labels", "smoke", "--selection-results",
                   str(tmp_path / "selection"), "--results", str(tmp_path / "mutual_info"), "--task-model", tiny,
                   "--task-dtype", "fp32", "--pool", "4", "--data-dir", str(data_dir)]
    proc = subprocess.run(mutual_info, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mi = json.loads((tmp_path / "mutual_info" / "smoke.json").read_text())
    seed = mi["seeds"][0]
    assert mi["pool"] == 4 and seed["candidates"] == len(scored) == len(seed["per_candidate"])
    assert seed["rules"]["dev"]["prompt"] == dev_pick["prompt"]
    for rule, key in (("mi-raw", "mi_raw"), ("mi-calibrated", "mi_calibrated")):
        best = max(c[key] for c in seed["per_candidate"])
        assert all(0 <= c[key] <= 0.6932 for c in seed["per_candidate"])  # at most log 2 nats for 2 labels
        pick = next(c for c in seed["per_candidate"] if c["prompt"] == seed["rules"][rule]["prompt"])
        assert pick[key] == best and seed["rules"][rule]["eval_acc"] == pick["eval_acc"]
    assert all(seed["rules"]["oracle"]["eval_acc"] >= r["eval_acc"] for r in seed["rules"].values())
    assert json.loads(proc.stdout)["labels"]["smoke"] == mi["summary"]
    again = [a if a != tiny else str(tmp_path / "no-such-model") for a in mutual_info]
    proc = subprocess.run(again, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and json.loads(proc.stdout)["labels"]["smoke"] == mi["summary"]  # read back

    ensemble = [sys.executable, str(REPO / "bench" / "ensemble.py"), "--selection-results", str(tmp_path / "selection"),
                "--results", str(tmp_path / "ensemble"), "--task-model", tiny, "--task-dtype", "fp32", "--pool", "4",
                "--data-dir", str(data_dir)]
    proc = subprocess.run(ensemble + ["--label", "smoke"], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    used = json.loads((tmp_path / "ensemble" / "smoke" / "sst2__13.json").read_text())
    assert used["eval_n"] == 872 and used["pool"] == 4 and used["candidates"] == len(scored)
    assert used["rules"]["dev"]["prompt"] == dev_pick["prompt"]  # the run's own pick, scored again
    assert used["rules"]["dev"]["eval_acc"] == pytest.approx(dev_pick["eval_acc"], abs=2 / 872)
    assert len(used["agree_64"]) == len(used["agree_pool"]) == len(scored)
    assert {"no prompt", "manual (best on dev)", "manual ensemble"} <= set(used["baselines"])
    assert json.loads(proc.stdout)["seeds"] == [13]
    again = [a if a != tiny else str(tmp_path / "no-such-model") for a in ensemble]
    proc = subprocess.run(again + ["--label", "smoke"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # every seed read back: no model loaded
    assert json.loads(proc.stdout)["seeds"] == [13]
    proc = subprocess.run(ensemble + ["--label", "nothing"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "bench/selection.py --labels nothing" in proc.stderr

    missing = bench([a if a != "smoke" else "other" for a in common] + ["--baselines-from", "nothing"] + flags,
                    tmp_path)
    assert missing.returncode == 2 and "run that label first" in missing.stderr


@pytest.mark.slow
def test_quality_bench_bad_settings_fail_in_one_line(tmp_path):
    proc = bench(["--label", "x", "--tasks", "mr", "--eval-set", "full-dev"], tmp_path)
    assert proc.returncode == 2 and "full-dev exists for sst2 only" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = bench(["--label", "x", "--tasks", "sst2", "--learning"], tmp_path)
    assert proc.returncode == 2 and "--eval-set full-dev" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


FAKE_METHOD = """
import json, os, sys
out = sys.argv[1]
summary = {"seed": int(sys.argv[2]), "wall_s": 1.0, "steps": 1, "pairs_scored": 1, "examples": {"test": 4},
           "template": os.environ.get("CUDA_VISIBLE_DEVICES", "none"), "verbalizers": [" a", " b"],
           "best_prompt": {"prompt": "p", "dev_acc": 1.0, "test_acc": 0.5}, "baselines": []}
open(os.path.join(out, "summary.json"), "w").write(json.dumps(summary))
"""


def test_on_gpus_runs_go_round_robin_with_their_own_cuda_visible_devices(monkeypatch, data_dir, tmp_path, capsys):
    method = tmp_path / "method.py"
    method.write_text(FAKE_METHOD)
    monkeypatch.setattr(quality, "gpus", lambda: ["0", "1"])
    argv = ["--label", "gpu", "--tasks", "sst2,mr", "--seeds", "13,21", "--data-dir", str(data_dir),
            "--results", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
            "--command", f"{sys.executable} {method} {{out}} {{seed}}"]
    assert quality.main(argv) == 0
    log = capsys.readouterr().err
    assert log.count("on GPU 0") == 2 and log.count("on GPU 1") == 2  # round robin over the two GPUs
    used = [json.loads((tmp_path / "results" / "gpu" / f"{t}__{s}.json").read_text())["template"]
            for t in ("sst2", "mr") for s in (13, 21)]
    assert used == ["0", "1", "0", "1"]  # each run saw only its own GPU, in order


def test_borrowed_baselines_need_the_same_baseline_rows_not_the_same_calibration():
    from rlprompt.errors import UserError

    base = {"template": "t", "verbalizers": [" a", " b"], "eval_n": 872, "rl": {"test_acc": 0.8}}
    other = {**base, "label": "abl-default", "calibration": "none", "baselines": {"no prompt": {"test_acc": 0.78}},
             "strongest_baseline": {"name": "no prompt", "test_acc": 0.78}}
    merged = quality.with_baselines({**base, "calibration": "batch"}, other)  # batch-calibrated RL, same rows
    assert merged["baselines"] == other["baselines"] and merged["margin"] == pytest.approx(0.02)
    with pytest.raises(UserError, match="other baseline rows"):
        quality.with_baselines({**base, "calibration": "contextual"}, other)
    with pytest.raises(UserError, match="its template"):
        quality.with_baselines({**base, "template": "u", "calibration": "none"}, other)


def test_a_failed_run_stops_the_bench_before_the_next_starts(data_dir, tmp_path, capsys):
    from rlprompt.errors import UserError

    method = tmp_path / "fail.py"
    method.write_text("import sys; sys.exit(3)\n")
    argv = ["--label", "fail", "--tasks", "sst2", "--seeds", "13,21,42", "--data-dir", str(data_dir),
            "--results", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
            "--command", f"{sys.executable} {method}"]
    with pytest.raises(UserError, match="seed 13 failed"):
        quality.main(argv)
    assert capsys.readouterr().err.count("running") == 1  # seeds 21 and 42 never started


def test_a_run_killed_before_its_result_is_continued_from_its_checkpoint(data_dir, tmp_path):
    args = quality.parse_args(["--label", "k", "--tasks", "sst2", "--data-dir", str(data_dir), "--", "--steps", "3"])
    out = tmp_path / "sst2__13"
    out.mkdir()
    fresh = quality.method_command(args, "sst2", 13, out)
    assert fresh[fresh.index("--out") + 1] == str(out) and "--resume" not in fresh
    (out / "checkpoint.pt").write_bytes(b"")  # what a killed train.py leaves behind
    resumed = quality.method_command(args, "sst2", 13, out)
    assert resumed[resumed.index("--resume") + 1] == str(out) and "--out" not in resumed
    assert resumed[-2:] == ["--steps", "3"]  # the flags still pass: train.py refuses ones that change the run


def test_precision_of_a_result_from_its_dtype_flags_or_hardware():
    cpu = {"device": "cpu", "fast_bf16": True}
    assert quality.result_precision({"hardware": cpu, "method_args": []}) == ("cpu", "bf16")
    assert quality.result_precision({"hardware": {**cpu, "fast_bf16": False}}) == ("cpu", "fp32")  # AVX2-only
    assert quality.result_precision({"hardware": cpu, "method_args": ["--task-dtype", "fp32"]}) == ("cpu", "fp32")
    assert quality.result_precision({"hardware": {"device": "cuda:0", "fast_bf16": True},
                                     "task_dtype": "fp32"}) == ("cuda", "fp32")  # what the run recorded wins
    assert quality.result_precision({"method_args": []}) is None  # results from before hardware was recorded
    args = quality.parse_args(["--label", "p", "--", "--device", "cpu", "--task-dtype", "fp32"])
    assert quality.run_precision(args) == ("cpu", "fp32")


def test_runs_in_another_precision_than_the_label_or_its_baselines_are_refused(monkeypatch, data_dir, tmp_path,
                                                                               capsys):
    from rlprompt.errors import UserError

    method = tmp_path / "method.py"
    method.write_text(FAKE_METHOD)
    command = f"{sys.executable} {method} {{out}} {{seed}}"
    bf16_cpu = {"hardware": {"device": "cpu", "fast_bf16": True}, "task_dtype": "bf16", "eval_set": "test",
                "method_args": [], "command_template": command, "task": "sst2", "seed": 13, "eval_n": 4,
                "rl": {"test_acc": 0.5}, "baselines": {}, "strongest_baseline": None, "margin": None,
                "wall_s": 1.0, "pairs_scored": 1}
    for label in ("mixed", "bf16-baselines"):
        (tmp_path / "results" / label).mkdir(parents=True)
        (tmp_path / "results" / label / "sst2__13.json").write_text(json.dumps({**bf16_cpu, "label": label}))
    monkeypatch.setattr(quality, "run_precision", lambda args: ("cpu", "fp32"))  # as on an AVX2-only CPU
    common = ["--tasks", "sst2", "--data-dir", str(data_dir), "--results", str(tmp_path / "results"),
              "--runs-dir", str(tmp_path / "runs"), "--command", command]
    with pytest.raises(UserError, match="mixed sst2 seed 13 was scored in bf16 on cpu, this machine would score "
                                        "in fp32"):
        quality.main(["--label", "mixed", "--seeds", "21", *common])
    with pytest.raises(UserError, match="--baselines-from bf16-baselines .sst2 seed 13. was scored in bf16.*"
                                        "pass --task-dtype bf16"):
        quality.main(["--label", "fresh", "--seeds", "13", "--baselines-from", "bf16-baselines", *common])
    assert "running" not in capsys.readouterr().err and not (tmp_path / "runs").exists()  # refused before any run
    monkeypatch.setattr(quality, "run_precision", lambda args: ("cpu", "bf16"))  # where they were made: runs
    assert quality.main(["--label", "mixed", "--seeds", "21", *common]) == 0


def test_a_label_made_under_other_defaults_is_not_taken_as_done(data_dir, tmp_path):
    from rlprompt.errors import UserError

    args = quality.parse_args(["--label", "old", "--tasks", "sst2", "--seeds", "13", "--data-dir", str(data_dir),
                               "--results", str(tmp_path)])
    assert args.method_config["calibration"] == "batch" and "seed" not in args.method_config
    old = {"eval_set": "test", "method_args": [], "command_template": None, "calibration": "none"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sst2__13.json").write_text(json.dumps(old))  # no flags, but made when the default was none
    with pytest.raises(UserError, match="made with calibration 'none', these flags now give 'batch'"):
        quality.load_done(args, "sst2", 13)
    now = {**old, "calibration": "batch", "method_config": {**args.method_config, "lr": 1.0}}
    (tmp_path / "old" / "sst2__13.json").write_text(json.dumps(now))
    with pytest.raises(UserError, match="made with lr 1.0"):
        quality.load_done(args, "sst2", 13)
    now["method_config"]["lr"] = args.method_config["lr"]
    (tmp_path / "old" / "sst2__13.json").write_text(json.dumps(now))
    assert quality.load_done(args, "sst2", 13) == now


def test_gpu_script_parses_and_names_its_stages():
    script = REPO / "bench" / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert proc.returncode == 2 and "prepare | stage1 | stage2 SCRIPT" in proc.stderr


def test_a_run_on_some_tasks_keeps_the_other_tasks_in_the_label_tables(data_dir, tmp_path):
    method = tmp_path / "method.py"
    method.write_text(FAKE_METHOD)
    argv = ["--label", "both", "--seeds", "13", "--data-dir", str(data_dir), "--results", str(tmp_path / "results"),
            "--runs-dir", str(tmp_path / "runs"), "--command", f"{sys.executable} {method} {{out}} {{seed}}"]
    assert quality.main([*argv, "--tasks", "sst2,mr"]) == 0
    assert quality.main([*argv, "--tasks", "sst2"]) == 0  # prints the finished sst2 seed: mr stays in the tables
    folder = tmp_path / "results" / "both"
    assert list(json.loads((folder / "quality.json").read_text())["tasks"]) == ["sst2", "mr"]
    assert "| mr |" in (folder / "quality.md").read_text()
