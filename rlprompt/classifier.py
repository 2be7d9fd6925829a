"""Use a found prompt from Python: a classifier made of a task LM, a template, the prompt and verbalizers.

    from rlprompt import PromptClassifier

    clf = PromptClassifier.from_run("runs/sst2__13__20261130-001500")   # the run's best prompt
    clf.predict(["A gripping, beautiful film.", "Dull and far too long."])  # -> one label name per text
    clf.predict_proba(texts)                                               # (N, C) numpy, rows sum to 1
    clf.save("prompt.json")                                                # a prompt card ...
    PromptClassifier.from_card("prompt.json", device="cuda")               # ... another program can load

A prompt card is a small JSON file that holds everything needed to classify with the prompt: the
prompt, template, verbalizers, label names, task model and precision, the calibration, and the dev/test
accuracy the prompt had in its run (`evaluate.py --run DIR --export prompt.json` writes one).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rlprompt.errors import UserError

CARD_FORMAT = "rlprompt.prompt-card/1"
CARD_FIELDS = ("prompt", "template", "verbalizers", "label_names", "task_model", "dtype")


def read_json(path: Path, what: str):
    """A JSON file's content; a UserError naming the file when it is missing or not JSON."""
    from rlprompt.runs import read_text

    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def calibration_vector(calibration: dict | None, n_labels: int) -> list[float] | None:
    """The per-verbalizer offsets of a prompts.json / card `calibration` entry, or None for no calibration."""
    if not calibration or calibration.get("mode", "none") == "none":
        return None
    vector = calibration.get("vector")
    if not isinstance(vector, list) or len(vector) != n_labels:
        raise UserError(f"calibration {calibration.get('mode')!r} needs a vector of {n_labels} numbers "
                        f"(one per verbalizer), got {vector!r}")
    return [float(v) for v in vector]


class PromptClassifier:
    """A text classifier: the task LM reads `template` with `prompt` in its {prompt} slot and each text in
    its {sentence} slot; the class is the verbalizer token with the highest (calibrated) log-prob.

    `model`/`tokenizer` may be given to reuse an already loaded task LM; otherwise `task_model` is loaded
    (embedded name, local folder or hub id) in `dtype` on `device` (default: CUDA when available).
    """

    def __init__(self, prompt: str, template: str, verbalizers: Sequence[str], label_names: Sequence[str],
                 task_model: str = "smollm2-135m", dtype: str = "auto", device: str | None = None,
                 calibration: dict | None = None, batch_size: int = 128, model=None, tokenizer=None,
                 allow_download: bool = False, info: dict | None = None):
        from rlprompt.models import dtype_name, load_lm
        from rlprompt.scorer import build_scorer
        from rlprompt.tasks import validate_template

        validate_template(template)
        if len(verbalizers) != len(label_names) or len(label_names) < 2:
            raise UserError(f"a classifier needs one verbalizer per label and at least 2 labels, got "
                            f"verbalizers {list(verbalizers)} for labels {list(label_names)}")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        self.prompt, self.template = prompt, template
        self.verbalizers, self.label_names = list(verbalizers), list(label_names)
        self.task_model = task_model
        self.calibration = dict(calibration) if calibration else {"mode": "none"}
        self._offsets = calibration_vector(calibration, len(self.label_names))
        self.batch_size = batch_size
        self.info = dict(info or {})  # where the prompt came from and how well it did (written to the card)
        if model is None:
            model, tokenizer = load_lm(task_model, device, dtype, allow_download)
        self.model, self.tokenizer = model, tokenizer
        self.dtype = dtype_name(next(model.parameters()).dtype)
        self.scorer = build_scorer(model, tokenizer, template, self.verbalizers)

    @property
    def device(self) -> torch.device:
        """Where the task LM runs."""
        return next(self.model.parameters()).device

    # ---- loading ---------------------------------------------------------------------------------

    @classmethod
    def from_run(cls, run_dir: str | Path, rank: int = 1, device: str | None = None, dtype: str | None = None,
                 **kwargs) -> PromptClassifier:
        """The run's `rank`-th best prompt (1 = best) on the run's task LM, template, verbalizers and
        precision, with its calibration when its prompts.json row has one."""
        return cls.from_card(export_card(run_dir, rank), device=device, dtype=dtype, **kwargs)

    @classmethod
    def from_card(cls, card: str | Path | dict, device: str | None = None, dtype: str | None = None,
                  **kwargs) -> PromptClassifier:
        """A classifier from a prompt card (a path to its JSON, or the dict). `dtype` overrides the
        card's precision (e.g. 'fp32' on a machine without fast bf16)."""
        if not isinstance(card, dict):
            card = read_json(Path(card), "prompt card")
        if not isinstance(card, dict):
            raise UserError("a prompt card must be a JSON object")
        missing = [k for k in CARD_FIELDS if k not in card]
        if missing:
            raise UserError(f"prompt card lacks {', '.join(missing)} (needs {', '.join(CARD_FIELDS)})")
        info = {k: v for k, v in card.items() if k not in CARD_FIELDS + ("calibration", "format")}
        return cls(card["prompt"], card["template"], card["verbalizers"], card["label_names"],
                   task_model=card["task_model"], dtype=dtype or card["dtype"], device=device,
                   calibration=card.get("calibration"), info=info, **kwargs)

    # ---- predicting ------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, C) verbalizer scores: the task LM's full-vocabulary log-prob of each verbalizer token or,
        with calibration, their log-softmax over the verbalizers minus the prompt's calibration vector
        (rlprompt/calibration.py's calibrated score). Texts are scored in batches of `batch_size`,
        shortest first (as a run scores its test set)."""
        from rlprompt.evaluation import score_examples
        from rlprompt.tasks import Example

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return torch.zeros(0, len(self.label_names))
        examples = [Example(t, 0) for t in texts]
        logp = score_examples(self.scorer, [self.prompt], examples, self.batch_size, progress=False)[0]
        if self._offsets is not None:
            logp = torch.log_softmax(logp.float(), -1) - torch.tensor(self._offsets)
        return logp

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(N, C) class probabilities (softmax over the calibrated verbalizer log-probs), columns in
        the order of `label_names`."""
        return torch.softmax(self.logits(texts), dim=-1).numpy()

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The label name of each text."""
        return [self.label_names[i] for i in self.logits(texts).argmax(-1).tolist()]

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return self.predict(texts)

    # ---- saving ----------------------------------------------------------------------------------

    def card(self) -> dict:
        """This classifier as a prompt card (JSON-ready)."""
        return {"format": CARD_FORMAT, "prompt": self.prompt, "template": self.template,
                "verbalizers": self.verbalizers, "label_names": self.label_names,
                "task_model": self.task_model, "dtype": self.dtype, "calibration": self.calibration,
                **self.info}

    def save(self, path: str | Path) -> None:
        """Write the prompt card to `path` (JSON)."""
        write_card(path, self.card())

    def __repr__(self) -> str:
        return (f"PromptClassifier(prompt={self.prompt!r}, labels={self.label_names}, "
                f"task_model={self.task_model!r}, dtype={self.dtype}, device={self.device})")


def export_card(run_dir: str | Path, rank: int = 1) -> dict:
    """The prompt card of a finished run's `rank`-th best prompt (1 = best), read from its files
    (prompts.json, summary.json, task.yaml): no model is loaded."""
    from rlprompt.runs import TASK_FILE, read_prompts_json

    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"run folder not found: {root}")
    rows = read_prompts_json(root)
    if not 1 <= rank <= len(rows):
        raise UserError(f"{root / 'prompts.json'} holds {len(rows)} prompts; rank must be 1..{len(rows)}, "
                        f"got {rank}")
    row = rows[rank - 1]
    summary = read_json(root / "summary.json", "summary.json of the run (finish it with train.py --resume)")
    config = summary.get("config", {})
    labels = summary.get("label_names") or _run_label_names(root / TASK_FILE, config)
    examples = summary.get("examples", {})
    calibration = row.get("calibration") or {"mode": "none"}
    return {
        "format": CARD_FORMAT, "prompt": row["prompt"], "template": summary["template"],
        "verbalizers": summary["verbalizers"], "label_names": labels,
        "task_model": config.get("task_model", "smollm2-135m"),
        "dtype": summary.get("task_dtype") or config.get("task_dtype", "auto"),
        "calibration": calibration,
        "task": summary.get("task"), "seed": summary.get("seed"), "run": str(root), "rank": rank,
        "dev_acc": row.get("dev_acc"), "test_acc": row.get("test_acc"),
        "dev_n": examples.get("dev"), "test_n": examples.get("test") if row.get("test_acc") is not None else None,
    }


def _run_label_names(task_file: Path, config: dict) -> list[str]:
    """Label names of a run from before summary.json held them: its task.yaml's labels, else the
    labels inferred from its train file."""
    from rlprompt.tasks import TaskSpec

    if not task_file.is_file():
        raise UserError(f"cannot tell the run's label names: neither its summary.json nor {task_file} has them")
    spec = TaskSpec.from_file(task_file)
    if spec.labels:
        return list(spec.labels)
    return spec.load(config.get("data_dir"), config.get("seed", 13)).label_names


def write_card(path: str | Path, card: dict) -> None:
    """Write a prompt card as JSON (atomically); a UserError when the path cannot be written."""
    from rlprompt.atomic import atomic_write_text

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    except OSError as e:
        raise UserError(f"cannot write prompt card {path}: {e.strerror or e}") from None
