"""Template and verbalizer search (LM-BFF / AutoPrompt style), scored with no prompt on train+dev only.

Candidates: the written templates of rlprompt/templates.py plus the task's own, and per class the
task LM's single tokens nearest the label name (input-embedding cosine), a few written synonyms and
the task's own verbalizer. Each template is scored once, with every candidate word as a verbalizer
(full-vocabulary log-probs, so any choice of words per class is read off the same scores); every
combination of one word per class is then ranked by accuracy, ties broken by the classification
reward's margin.

    python -m rlprompt.template_search --task sst2 --seed 13          # the ranked table, one seed
    python -m rlprompt.template_search --task sst2 --seed all         # mean over the preset's 5 seeds
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlprompt.errors import UserError
from rlprompt.evaluation import score_examples
from rlprompt.rewards import classification_reward
from rlprompt.tasks import Example, validate_template, verbalizer_token_ids
from rlprompt.templates import NAMED_TEMPLATES, template_name

SYNONYMS = {  # written label words per (lower-cased) label name; only the single-token ones are used
    "negative": ["terrible", "bad", "negative", "awful", "poor"],
    "positive": ["great", "good", "positive", "wonderful", "excellent"],
    "world": ["world", "international", "politics", "global"],
    "sports": ["sports", "sport", "game"],
    "business": ["business", "economy", "finance", "money"],
    "sci/tech": ["tech", "science", "technology", "computer"],
}
SEARCH_EXAMPLES = 512  # train+dev examples a run's search scores: a fixed sample of a larger data file
MAX_COMBINATIONS = 20_000  # verbalizer combinations ranked per template; the candidates are pruned above it


@dataclass
class Candidate:
    """One (template, verbalizers) choice with its no-prompt scores, averaged over the example groups."""

    template: str
    verbalizers: list[str]
    accuracy: float  # mean over groups of the no-prompt accuracy
    margin: float  # mean over groups of the classification reward (RLPrompt's gap, x200/x180)
    per_group: list[float]  # accuracy of each group (seed)

    @property
    def name(self) -> str:
        return template_name(self.template) or "(given)"


def check_candidates(templates: Sequence[str], words: Sequence[Sequence[str]], label_names: Sequence[str],
                     tokenizer) -> None:
    """UserError (one line) for an empty template list, a template without its slots, a class without
    candidate words or a candidate word that is not one token."""
    if not templates:
        raise UserError("no candidate templates to search; give at least one")
    for t in templates:
        validate_template(t)
    if len(words) != len(label_names):
        raise UserError(f"{len(words)} candidate lists for {len(label_names)} labels {list(label_names)}")
    for name, ws in zip(label_names, words):
        if not ws:
            raise UserError(f"no candidate label words for class {name!r}; give at least one")
        verbalizer_token_ids(tokenizer, list(ws))


def _single_token(tokenizer, word: str) -> bool:
    return len(tokenizer(word, add_special_tokens=False).input_ids) == 1


def _word_table(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Ids and texts of the vocabulary entries that read as one word with a leading space (' great')."""
    ids, texts = [], []
    special = set(tokenizer.all_special_ids)
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if piece is None or i in special:
            continue
        text = tokenizer.convert_tokens_to_string([piece])
        if len(text) >= 3 and text[0] == " " and text[1:].isalpha():
            ids.append(i)
            texts.append(text)
    return torch.tensor(ids), texts


def candidate_words(model, tokenizer, label_names: Sequence[str], given: Sequence[str] | None = None,
                    nearest: int = 4) -> list[list[str]]:
    """Per class, single-token label words: the given verbalizer, the label name, written synonyms and
    the `nearest` vocabulary words closest to the label name by input-embedding cosine. A word that
    comes up for several classes stays only with the class whose label name it is closest to."""
    emb = model.get_input_embeddings().weight.detach().float()
    emb = torch.nn.functional.normalize(emb, dim=-1)

    def embed(text: str) -> torch.Tensor:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return torch.nn.functional.normalize(emb[ids].mean(0), dim=-1)

    anchors = torch.stack([embed(" " + name.strip()) for name in label_names])  # (C, d)
    vocab_ids, vocab_texts = _word_table(tokenizer)
    sims = emb[vocab_ids] @ anchors.T  # (N, C)
    per_class = []
    for c, name in enumerate(label_names):
        base = name.strip()
        written = ([given[c]] if given else []) + [" " + base, " " + base.lower(), " " + base.capitalize()]
        written += [" " + w for w in SYNONYMS.get(base.lower(), [])]
        kept = [w for w in dict.fromkeys(written) if _single_token(tokenizer, w)]
        close = (vocab_texts[int(i)] for i in sims[:, c].topk(min(4 * nearest, len(vocab_texts))).indices)
        kept += [w for w in dict.fromkeys(close) if w not in kept and _single_token(tokenizer, w)][:nearest]
        per_class.append(kept)
    owner = {}
    for c, ws in enumerate(per_class):
        for w in ws:
            score = float(embed(w) @ anchors[c])
            if given and w == given[c]:
                score = math.inf
            if w not in owner or score > owner[w][1]:
                owner[w] = (c, score)
    return [[w for w in ws if owner[w][0] == c] for c, ws in enumerate(per_class)]


def _prune(words: list[list[str]], logprobs: list[torch.Tensor], labels: list[torch.Tensor],
           index: dict[str, int], limit: int) -> list[list[str]]:
    """Keep, per class, the words that best separate that class (mean log-prob on its examples minus
    on all examples), fewest first dropped, until the combinations fit in `limit`."""
    def separation(c, w):
        j = index[w]
        return sum(float(lp[y == c, j].mean() - lp[:, j].mean()) for lp, y in zip(logprobs, labels))

    ranked = [sorted(ws, key=lambda w: -separation(c, w)) for c, ws in enumerate(words)]
    keep = max(len(ws) for ws in ranked)
    while keep > 1 and math.prod(min(len(ws), keep) for ws in ranked) > limit:
        keep -= 1
    return [ws[:keep] for ws in ranked]


def rank_verbalizers(template: str, words: list[list[str]], logprobs: list[torch.Tensor],
                     labels: list[torch.Tensor], index: dict[str, int], top: int = 5,
                     limit: int = MAX_COMBINATIONS) -> list[Candidate]:
    """The best `top` combinations (one word per class) for one template's (E, W) candidate log-probs
    of each group, best first."""
    if math.prod(len(ws) for ws in words) > limit:
        words = _prune(words, logprobs, labels, index, limit)
    combos = [c for c in itertools.product(*words) if len(set(c)) == len(c)]
    if not combos:
        raise UserError("the candidate label words leave no choice with a distinct word per class")
    cols = torch.tensor([[index[w] for w in c] for c in combos])  # (K, C)
    accs, margins = [], []
    for lp, y in zip(logprobs, labels):
        picked = lp[:, cols].permute(1, 0, 2)  # (K, E, C)
        reward, acc = classification_reward(picked, y)
        accs.append(acc)
        margins.append(reward)
    acc = torch.stack(accs)  # (G, K)
    margin = torch.stack(margins).mean(0)
    mean = acc.mean(0)
    order = sorted(range(len(combos)), key=lambda k: (-round(float(mean[k]), 6), -float(margin[k])))
    return [Candidate(template, list(combos[k]), float(mean[k]), float(margin[k]),
                      [float(a) for a in acc[:, k]]) for k in order[:top]]


def search(model, tokenizer, groups: Sequence[Sequence[Example]], label_names: Sequence[str],
           templates: Sequence[str], words: Sequence[Sequence[str]], progress: bool = False,
           top_per_template: int = 1) -> list[Candidate]:
    """Score every template with no prompt on each example group (e.g. the train+dev examples of one
    seed) and rank (template, verbalizers) choices by mean accuracy, then margin. Best first."""
    from rlprompt.scorer import build_scorer

    templates = list(dict.fromkeys(templates))
    words = [list(dict.fromkeys(ws)) for ws in words]
    check_candidates(templates, words, label_names, tokenizer)
    if not groups or not all(groups):
        raise UserError("no examples to score the candidates on")
    flat = list(dict.fromkeys(w for ws in words for w in ws))
    index = {w: i for i, w in enumerate(flat)}
    labels = [torch.tensor([e.label for e in g]) for g in groups]
    rows = []
    for t in templates:
        scorer = build_scorer(model, tokenizer, t, flat)
        scorer.check_fits([""], [e.text for g in groups for e in g])
        logprobs = [score_examples(scorer, [""], g, progress=progress, desc=template_name(t) or "template")[0]
                    for g in groups]  # each (E, W)
        rows += rank_verbalizers(t, words, logprobs, labels, index, top=top_per_template)
    return sorted(rows, key=lambda r: (-round(r.accuracy, 6), -r.margin))


def format_table(rows: Sequence[Candidate], n_groups: int) -> str:
    """The ranked candidates as a Markdown table."""
    lines = ["| rank | template | no-prompt acc (train+dev) | margin | verbalizers | per seed |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        per = " ".join(f"{100 * a:.1f}" for a in r.per_group) if n_groups > 1 else ""
        text = r.template.replace("\n", "\\n")
        lines.append(f"| {i} | `{text}` ({r.name}) | {100 * r.accuracy:.1f} | {r.margin:.1f} | "
                     f"{', '.join(repr(w) for w in r.verbalizers)} | {per} |")
    return "\n".join(lines)


# ---- for train.py: a new task, --auto-template, --auto-verbalizers ------------------------------

def wanted(cfg) -> tuple[bool, bool]:
    """(search templates, search verbalizers) for a run config: asked for with --auto-template /
    --auto-verbalizers, or implied for a task of the user's own data that gives no --template /
    --verbalizers. A resumed run keeps the choice saved in its task.yaml."""
    if cfg.resume:
        return False, False
    new_task = bool(cfg.train) and not cfg.task and not cfg.task_file
    return (cfg.auto_template or (new_task and cfg.template is None),
            cfg.auto_verbalizers or (new_task and cfg.verbalizers is None))


def choose_for_task(task, model, tokenizer, templates: bool, verbalizers: bool):
    """(template, verbalizers, ranked candidates) picked on the task's train+dev with no prompt (a fixed
    sample of SEARCH_EXAMPLES of them when there are more); what is not searched stays the task's own."""
    from rlprompt.minibatch import fixed_sample

    template_list = list(dict.fromkeys([task.template] + (list(NAMED_TEMPLATES.values()) if templates else [])))
    given_words = [[w] for w in task.verbalizers]
    words = candidate_words(model, tokenizer, task.label_names, task.verbalizers) if verbalizers else given_words
    examples = fixed_sample(task.train + task.dev, SEARCH_EXAMPLES)
    rows = search(model, tokenizer, [examples], task.label_names, template_list, words)
    return rows[0].template, rows[0].verbalizers, rows


def apply_search(cfg, spec, task, model, tokenizer):
    """(spec, task) with the template and/or verbalizers the search picks, when `wanted(cfg)` asks
    for it; a note in task.notes says what was picked. Unchanged otherwise."""
    import dataclasses

    templates, verbalizers = wanted(cfg)
    if not (templates or verbalizers):
        return spec, task
    template, words, rows = choose_for_task(task, model, tokenizer, templates, verbalizers)
    what = " and ".join(x for x, on in (("template", templates), ("verbalizers", verbalizers)) if on)
    best = rows[0]
    among = f" among {len(rows)} templates" if templates else ""
    scored = len(task.train) + len(task.dev)
    on = ("train+dev" if scored <= SEARCH_EXAMPLES
          else f"a fixed sample of {SEARCH_EXAMPLES} of the {scored:,} train+dev examples")
    note = (f"{what} picked by search{among}, scored with no prompt on {on}: "
            f"template {template!r}" + (f" ({best.name})" if best.name != "(given)" else "")
            + f", verbalizers {words}, accuracy {100 * best.accuracy:.1f}%; fix them with --template/--verbalizers")
    notes = [n for n in task.notes if not (verbalizers and n.startswith("verbalizers default"))] + [note]
    return (spec.with_overrides(template=template, verbalizers=words),
            dataclasses.replace(task, template=template, verbalizers=words, notes=notes))


def search_template(cfg, spec, task):
    """(spec, task, task LM or None) for train.py: when `wanted(cfg)` asks for a search, the task LM is
    loaded (and returned, for the run to reuse) and the picked template/verbalizers applied."""
    if not any(wanted(cfg)):
        return spec, task, None
    from rlprompt.distributed import process_device
    from rlprompt.models import load_lm

    model, tokenizer = load_lm(cfg.task_model, process_device(cfg.device), cfg.task_dtype, cfg.allow_download)
    spec, task = apply_search(cfg, spec, task, model, tokenizer)
    return spec, task, (model, tokenizer)


# ---- command line -------------------------------------------------------------------------------

def parse_words(text: str) -> list[list[str]]:
    """' bad, awful; good, great' -> [[' bad', ' awful'], [' good', ' great']]: classes split on ';',
    words on ',' (quotes keep spaces, as --verbalizers)."""
    from rlprompt.tasks import parse_list

    return [parse_list(group) or [] for group in text.split(";")]


def main(argv=None) -> int:
    import argparse

    from rlprompt.cli import OneLineArgumentParser, quiet_transformers
    from rlprompt.config import TaskArgs, add_arguments
    from rlprompt.models import load_lm
    from rlprompt.tasks import parse_list, spec_from_flags

    p = OneLineArgumentParser(prog="python -m rlprompt.template_search", description=__doc__.splitlines()[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
    p.add_argument("--templates", action="append", metavar="TEMPLATE", help="a template name or text to search "
                   "(repeat the flag; default: all written templates: "
                   f"{', '.join(NAMED_TEMPLATES)}; the task's own is always added)")
    p.add_argument("--candidates", help="label words per class, classes split by ';', e.g. "
                   "'\" bad\",\" awful\";\" good\",\" great\"' (default: nearest tokens + synonyms)")
    p.add_argument("--fixed-verbalizers", action="store_true", help="keep the task's verbalizers, search templates only")
    p.add_argument("--fixed-template", action="store_true", help="keep the task's template, search verbalizers only")
    p.add_argument("--top", type=int, default=3, help="verbalizer choices listed per template (default 3)")
    p.add_argument("--task-model", default="smollm2-135m", help="task LM (default smollm2-135m)")
    p.add_argument("--dtype", default="auto", help="task LM precision (default auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda, … (default auto)")
    p.add_argument("--allow-download", action="store_true", help="allow fetching models from the HF hub")
    add_arguments(p.add_argument_group("task"), TaskArgs)
    p.set_defaults(seed=None)
    p.add_argument("--seeds", default=None, help="comma-separated seeds, or 'all' for the preset's seeds "
                   "(default: --seed, else 13); the accuracy is the mean over them")
    args = p.parse_args(argv)
    spec = spec_from_flags(args.task, args.task_file, args.train, dev=args.dev, test=args.test,
                           text_column=args.text_column, label_column=args.label_column, labels=args.labels,
                           verbalizers=args.verbalizers, template=args.template, dev_fraction=args.dev_fraction)
    if args.seeds == "all":
        seeds = list(spec.seeds or [13])
    elif args.seeds:
        seeds = [int(s) for s in parse_list(args.seeds)]
    else:
        seeds = [args.seed if args.seed is not None else 13]
    tasks = [spec.load(args.data_dir, s, args.allow_download) for s in seeds]
    task = tasks[0]
    for note in task.notes:
        print(f"note: {note}")
    templates = [task.template]
    if not args.fixed_template:
        templates += args.templates if args.templates is not None else list(NAMED_TEMPLATES.values())
    from rlprompt.templates import resolve_template

    templates = [resolve_template(t.replace("\\n", "\n")) for t in templates]
    quiet_transformers()
    model, tok = load_lm(args.task_model, args.device, args.dtype, args.allow_download)
    if args.candidates is not None:
        words = parse_words(args.candidates)
    elif args.fixed_verbalizers:
        words = [[w] for w in task.verbalizers]
    else:
        words = candidate_words(model, tok, task.label_names, task.verbalizers)
    check_candidates(templates, words, task.label_names, tok)
    print(f"{task.name}, seeds {seeds}: {len(dict.fromkeys(templates))} templates; label words per class: "
          + "; ".join(f"{n}: {', '.join(repr(w) for w in ws)}" for n, ws in zip(task.label_names, words)))
    rows = search(model, tok, [t.train + t.dev for t in tasks], task.label_names, templates, words,
                  progress=True, top_per_template=args.top)
    print(format_table(rows, len(seeds)))
    return 0


if __name__ == "__main__":
    from rlprompt.cli import run_cli

    sys.exit(run_cli(main))
