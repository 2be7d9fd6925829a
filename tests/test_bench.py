"""The benchmarks run: a tiny workload of bench/scoring.py prints its JSON line."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlprompt.baselines import DEMO_SEPARATOR, demo_template, pick_demos
from rlprompt.tasks import load_task

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("dtypes", ["bf16", "fp32,bf16"])
def test_scoring_bench_with_any_dtypes(dtypes, data_dir):
    proc = subprocess.run([sys.executable, "bench/scoring.py", "--dtypes", dtypes, "--prompts", "2",
                           "--examples", "2", "--repeats", "1", "--max-rows", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "RLPROMPT_DATA": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for dtype in dtypes.split(","):
        assert result[f"cached_{dtype}_pairs_per_s"] > 0 and f"max_abs_diff_{dtype}" in result
    assert ("bf16_label_agreement" in result) == ("fp32" in dtypes)
    assert result["host_ms_per_call"] > 0
    assert result["max_rows"] == 3  # 4 pairs in two passes, cached and naive alike (max_abs_diff compares them)


def test_position_bench_scores_every_prompt_after_and_before_the_input(tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "position.json"
    proc = subprocess.run([sys.executable, "bench/position.py", "--limit", "4", "--task-model", str(tiny_model_dir),
                           "--dtype", "fp32", "--data-dir", str(data_dir), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["n"] == 4 and doc["prompts"][0] == ""
    assert doc["templates"]["before"]["template"] == "{prompt}\nReview: {sentence}\nSentiment:"
    for row in doc["templates"].values():
        assert len(row["none"]) == len(row["batch"]) == len(doc["prompts"])
        assert all(0 <= acc <= 100 and acc % 25 == 0 for acc in row["none"] + row["batch"])  # 4 examples


def test_position_templates_behind_demonstrations(data_dir):
    spec = importlib.util.spec_from_file_location("position_bench", REPO / "bench" / "position.py")
    position = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(position)
    task = load_task("sst2", data_dir, 13)
    assert position.templates(task, 0, 13) == {"after": task.template,
                                               "before": "{prompt}\nReview: {sentence}\nSentiment:"}
    shots = position.templates(task, 4, 13)
    demos = pick_demos(task.train, 4, 13)
    assert shots["after"] == demo_template(task, demos)  # the 4-shot baseline's own template
    blocks = shots["before"].split(DEMO_SEPARATOR)
    assert blocks[0].startswith("{prompt}\nReview: ") and shots["before"].count("{prompt}") == 1
    assert blocks[-1] == "Review: {sentence}\nSentiment:" and len(blocks) == 5
    for block, demo in zip(blocks, demos):  # every demonstration in the input's own form, with its label
        assert block.removeprefix("{prompt}\n") == f"Review: {demo.text}\nSentiment:{task.verbalizers[demo.label]}"


def test_train_step_bench_profiles_the_steps_after_the_first(tiny_model_dir, data_dir, tmp_path):
    table = tmp_path / "profile.txt"
    proc = subprocess.run([sys.executable, "bench/train_step.py", "--model", str(tiny_model_dir), "--steps", "3",
                           "--prompts-per-step", "4", "--task-dtype", "fp32", "--device", "cpu",
                           "--data-dir", str(data_dir), "--profile", str(table)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 3 and result["median_step_s"] > 0
    profile = result["profile"]
    assert profile["sorted_by"] == "self_cpu_time_total" and "gpu_busy_share" not in profile
    assert 0 < sum(op["share"] for op in profile["top"]) <= 1.001 and all(op["calls"] > 0 for op in profile["top"])
    assert "Self CPU" in table.read_text()


def write_draw(results: Path, label: str, accs: dict, run_seed=None, cpu="AMD EPYC", learns=None, lr=3e-5,
               dtype="bf16"):
    """Quality-bench and learning JSONs of one draw: split -> chosen accuracy (final greedy = chosen - 0.01)."""
    for seed, acc in accs.items():
        result = {"seed": seed, "eval_set": "full-dev", "rl": {"test_acc": acc}, "task_dtype": dtype,
                  "hardware": {"device": "cpu", "cpu": cpu, "fast_bf16": True},
                  "method_config": {"lr": lr, "run_seed": run_seed}}
        (results / "quality" / label).mkdir(parents=True, exist_ok=True)
        (results / "quality" / label / f"sst2__{seed}.json").write_text(json.dumps(result))
        if learns is not None:
            (results / "learning" / label).mkdir(parents=True, exist_ok=True)
            (results / "learning" / label / f"sst2__{seed}.json").write_text(json.dumps(
                {"final_greedy": {"eval_acc": acc - 0.01}, "early_best": {"eval_acc": 0.5}, "learns": learns}))


def redraw(results: Path, *labels: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/redraw.py", "--results", str(results), "--labels", ",".join(labels)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_redraw_bench_pools_the_within_split_spread(tmp_path):
    write_draw(tmp_path, "plain", {13: 0.80, 21: 0.70}, learns=True)
    write_draw(tmp_path, "again", {13: 0.82, 21: 0.74, 42: 0.9}, run_seed=1, learns=False)
    proc = redraw(tmp_path, "plain", "again")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["splits"] == [13, 21]  # only the splits both draws finished
    assert doc["per_draw"]["plain"]["learns"] == 2 and doc["per_draw"]["again"]["learns"] == 0
    # split variances 0.0002 and 0.0008 -> pooled sigma = sqrt(0.0005)
    chosen = doc["noise"]["chosen"]
    assert chosen["within_split_std"] == pytest.approx(0.0005 ** 0.5)
    assert chosen["std_of_a_paired_difference"] == pytest.approx(0.0005 ** 0.5)  # sqrt(2 / 2) = 1
    assert chosen["draw_means_min"] == pytest.approx(0.75) and chosen["draw_means_max"] == pytest.approx(0.78)
    assert "final_greedy" in doc["noise"]


@pytest.mark.parametrize("second, message", [
    ({"run_seed": None}, "same draw"),
    ({"run_seed": 1, "cpu": "Intel Xeon"}, "different machines"),
    ({"run_seed": 1, "dtype": "fp32"}, "different machines"),
    ({"run_seed": 1, "lr": 1e-4}, "different methods"),
], ids=["same run seed", "other CPU", "other precision", "other method"])
def test_redraw_bench_refuses_draws_that_are_not_redraws(tmp_path, second, message):
    write_draw(tmp_path, "plain", {13: 0.80})
    write_draw(tmp_path, "other", {13: 0.81}, **second)
    proc = redraw(tmp_path, "plain", "other")
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("data", [["--train-size", "8", "--dev-size", "8"], ["--shots", "21"]],
                         ids=["glue-train", "16-shot"])
def test_ceiling_bench_scores_every_accepted_prompt_on_the_872(data, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "ceiling.json"
    proc = subprocess.run([sys.executable, "bench/ceiling.py", "--data-dir", str(data_dir), "--task-model",
                           str(tiny_model_dir), "--task-dtype", "fp32", "--option", "max_rounds=2",
                           "--option", "candidates=4", "--option", "grad_batch=4", "--out", str(out), *data],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc == json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["data"] == ("16-shot/21" if "--shots" in data else "glue-train")
    assert (doc["train_size"], doc["dev_size"]) == ((32, 32) if "--shots" in data else (8, 8))
    assert doc["eval_size"] == 872 and len(doc["manual_eval_acc"]) == 6 and doc["rounds"] == 2
    assert doc["start"] == "Overall, what did the"  # the manual prompt cut to 5 tokens
    accs = [doc["eval_acc"], doc["start_eval_acc"], doc["no_prompt_eval_acc"], *doc["manual_eval_acc"].values(),
            *(a["eval_acc"] for a in doc["accepted"])]
    assert all(0 <= a <= 100 for a in accs)
    rewards = [a["train_reward"] for a in doc["accepted"]]
    assert rewards == sorted(rewards)


def test_ceiling_bench_draws_balanced_disjoint_sentences():
    import random

    spec = importlib.util.spec_from_file_location("ceiling_bench", REPO / "bench" / "ceiling.py")
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    from rlprompt.errors import UserError
    from rlprompt.tasks import Example

    pool = [Example(f"word {'x ' * (i % 9)}{i}", i % 2) for i in range(400)]
    rng = random.Random(0)
    train = ceiling.balanced_sample(pool, 20, 5, rng)
    dev = ceiling.balanced_sample(pool, 20, 5, rng, exclude=train)
    for part in (train, dev):
        assert len(part) == 20 and sum(e.label for e in part) == 10
        assert all(len(e.text.split()) >= 5 for e in part)
    assert not {e.text for e in train} & {e.text for e in dev}
    with pytest.raises(UserError, match="only"):
        ceiling.balanced_sample(pool, 400, 5, rng)
