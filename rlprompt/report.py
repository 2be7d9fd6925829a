"""A training run for people: reward/accuracy/entropy curves as a PNG, and a short Markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlprompt.atomic import atomic_write_text
from rlprompt.checkpoint import load_checkpoint
from rlprompt.errors import UserError

CURVES_PNG = "curves.png"
REPORT_MD = "report.md"
BASELINE_COLORS = {"manual prompt": "tab:red", "no prompt": "tab:gray"}


def smooth(values, weight: float = 0.8) -> np.ndarray:
    """TensorBoard-style exponential moving average, NaNs skipped (they keep the last value)."""
    out, last = [], None
    for v in values:
        if v is not None and np.isfinite(v):
            last = v if last is None else weight * last + (1 - weight) * v
        out.append(np.nan if last is None else last)
    return np.array(out, dtype=float)


def _series(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the history rows that hold `key`."""
    rows = [(h["step"], h[key]) for h in history if key in h and h[key] is not None]
    if not rows:
        return np.array([]), np.array([])
    steps, values = zip(*rows)
    return np.array(steps), np.array(values, dtype=float)


def plot_run_curves(history: list[dict], path: str | Path, baselines: dict[str, float] | None = None,
                title: str = "") -> Path:
    """Write a PNG of the run's curves: reward mean/max with smoothed lines; train accuracy, dev
    accuracy of the greedy prompt and best dev accuracy, with the baselines' dev accuracies (name ->
    accuracy, e.g. manual prompt and no prompt) as reference lines; entropy and KL to the initial
    policy; distinct prompts per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        raise UserError("the run has no training history to plot yet")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    ax = axes[0, 0]
    for key, color, label in (("charts/reward_mean", "tab:blue", "reward mean"),
                              ("charts/reward_max", "tab:orange", "reward max")):
        steps, values = _series(history, key)
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
        ax.plot(steps, smooth(values), color=color, linewidth=2, label=f"{label} (smoothed)")
    ax.set(title="reward per step (train examples)", xlabel="step", ylabel="reward")
    ax.legend(loc="lower right")

    ax = axes[0, 1]
    steps, values = _series(history, "charts/train_acc")
    ax.plot(steps, values, color="tab:green", alpha=0.25, linewidth=1)
    ax.plot(steps, smooth(values), color="tab:green", linewidth=2, label="train accuracy, mean of step (smoothed)")
    steps, values = _series(history, "charts/dev_acc")
    ax.plot(steps, values, "o-", color="tab:purple", markersize=4, label="dev accuracy of the greedy prompt")
    steps, values = _series(history, "charts/best_dev_acc")
    ax.step(steps, values, where="post", color="black", linewidth=1.5, label="best dev accuracy so far")
    for name, acc in (baselines or {}).items():
        ax.axhline(acc, color=BASELINE_COLORS.get(name, "tab:olive"), linestyle="--", label=f"{name} (dev)")
    ax.set(title="accuracy", xlabel="step", ylabel="accuracy", ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)

    ax = axes[1, 0]
    steps, values = _series(history, "losses/entropy")
    ax.plot(steps, values, color="tab:brown", label="entropy per token (nats)")
    steps, values = _series(history, "losses/kl_to_init")
    if len(values):
        ax.plot(steps, values, color="tab:gray", label="KL to initial policy per prompt (nats)")
    ax.set(title="exploration", xlabel="step", ylabel="nats")
    ax.legend(loc="upper right")

    ax = axes[1, 1]
    steps, values = _series(history, "charts/distinct_prompts")
    ax.plot(steps, values, color="tab:cyan", label="distinct prompts per step (share)")
    steps, values = _series(history, "charts/repeated_token_rate")
    ax.plot(steps, values, color="tab:pink", label="prompts repeating a token (share)")
    ax.set(title="diversity of sampled prompts", xlabel="step", ylim=(-0.02, 1.02))
    ax.legend(loc="center right")

    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pct(x) -> str:
    """An accuracy as a percentage with one decimal ("81.3%"), or "–" when it is missing (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}%"


def phases_text(phases_s: dict) -> str:
    """'setup 3 s, train 124 s, ...': a run's wall seconds per phase, as train.py and report.md show them."""
    return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in phases_s.items())


def write_run_report(run_dir: str | Path, summary: dict, prompts: list[dict], history: list[dict]) -> Path:
    """Write curves.png and report.md into the run folder; returns the report's path."""
    run_dir = Path(run_dir)
    cfg = summary.get("config", {})
    mode = summary.get("calibration", "none")  # reference lines scored the way the run's dev curve is
    baselines = {b["name"]: b["dev_acc"] for b in summary.get("baselines", [])
                 if b.get("dev_acc") is not None and b.get("calibration", "none") == mode}
    plot_run_curves(history, run_dir / CURVES_PNG, baselines,
                title=f"{summary.get('task')} — seed {summary.get('seed')}")
    n = summary.get("examples", {})
    template = (summary.get("template") or cfg.get("template") or "").replace("\n", "\\n")  # one line
    lines = [
        f"# Run `{run_dir.name}`: {summary.get('task')}", "",
        f"- task: **{summary.get('task')}** (seed {summary.get('seed')}; {n.get('train', '?')} train, "
        f"{n.get('dev', '?')} dev, {n.get('test', '?')} test examples)",
        f"- policy LM: `{cfg.get('policy_model')}`; task LM: `{cfg.get('task_model')}` "
        f"({summary.get('task_dtype', cfg.get('task_dtype'))})",
        f"- template: `{template}`; calibration: {summary.get('calibration', 'none')}",
        f"- budget: {cfg.get('steps')} steps × {cfg.get('prompts_per_step')} prompts of "
        f"{cfg.get('prompt_length')} tokens; ran {summary.get('steps')} steps ({summary.get('stop_reason')}); "
        f"{summary.get('pairs_scored', '?')} (prompt, example) pairs run through the task LM (train, dev and test)",
        f"- training time: {summary.get('wall_s', 0):.0f} s (wall, summed over resumes); "
        f"skipped (non-finite) steps: {summary.get('skipped_steps', 0)}",
        *([f"- time by phase (this process): {phases_text(summary['phases_s'])}"] if summary.get("phases_s") else []),
        "", "## Best prompts (chosen on dev)", "",
        "| # | prompt | dev acc | test acc | train reward | found at step |", "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(prompts, 1):
        lines.append(f"| {i} | `{r['prompt']}` | {pct(r.get('dev_acc'))} | {pct(r.get('test_acc'))} | "
                     f"{r.get('train_reward', 0):.1f} | {r.get('step')} |")
    lines += ["", "## Baselines (same template and verbalizers)", "", "| baseline | prompt | dev acc | test acc |",
              "|---|---|---|---|"]
    for b in summary.get("baselines", []):
        lines.append(f"| {b['name']} | `{b['prompt']}` | {pct(b.get('dev_acc'))} | {pct(b.get('test_acc'))} |")
    top = summary.get("strongest_baseline")
    if top:
        on_dev = top.get("best_on_dev") or {}
        lines += ["", f"Strongest baseline (best {top['chosen_by']} accuracy): **{top['name']}**; "
                      f"best on dev: {on_dev.get('name', '-')}."]
    lines += ["", "## Curves", "", f"![training curves]({CURVES_PNG})", ""]
    atomic_write_text(run_dir / REPORT_MD, "\n".join(lines))
    return run_dir / REPORT_MD


def run_history(run_dir: str | Path) -> list[dict]:
    """A run's per-step history: history.json when the run finished, else its checkpoint's."""
    run_dir = Path(run_dir)
    if (run_dir / "history.json").is_file():
        try:
            return json.loads((run_dir / "history.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{run_dir / 'history.json'}: not valid JSON ({e.msg})") from None
    return load_checkpoint(run_dir)["history"]
