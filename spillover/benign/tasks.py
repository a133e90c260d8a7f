"""Benign task specs: one string names a task and its items, for evaluation and as training data.

Grammar: ``TASK[:KEY=VALUE]...`` with the keys of ``spillover benign generate`` (``tier``, ``n``, ``seed``,
``split``), e.g. ``opswap:tier=1:n=128``, ``countdown:tier=2``, ``choice``, ``choice:items=FILE``. FoQA
takes its file as the first field: ``foqa:FILE[:n=N]``, where FILE may also be a registered dataset
(``foqa:hub:foqa``, the gated FoQA test split; ``hub:foqa_train`` its train split).

* **Evaluation** (:func:`eval_items`) always uses the held-out ``test`` split of generated tasks
  (``split`` is not accepted there); defaults ``tier=1``, ``n=100``, ``seed=0``. ``choice:items=FILE``
  uses the test-split items of your file; ``foqa:FILE`` uses every row of the file (the first ``n``).
* **Training data** (:func:`sft_rows`, the ``benign:`` data ref, e.g. ``data: benign:opswap:tier=1:n=256``)
  writes SFT conversations (prompt + reference answer) of the ``train`` split by default; with
  ``format=prompts`` the prompts alone, for GRPO (``prompts: benign:countdown:n=256:format=prompts``, with
  the task's reward). FoQA trains on the rows of its file (``benign:foqa:hub:foqa_train``), each answered
  as ``Answer: <first gold span>``, the format its evaluation scores.

FoQA file: JSONL, one question a line with ``question``, ``context`` and ``answers`` (a list of strings, or
the SQuAD layout ``{"text": [...], "answer_start": [...]}`` that the FoQA dataset uses), optional ``id``.
Items are scored by exact match and token F1 (:mod:`spillover.benign.foqa`); the generated tasks by their
own ``score`` functions (1 correct, 0 not).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spillover.benign import choice, countdown, foqa, opswap
from spillover.errors import SpilloverError, UnknownName

GENERATED = {"opswap": opswap, "countdown": countdown, "choice": choice}
TASK_NAMES = (*GENERATED, "foqa")
_INT_KEYS = ("tier", "n", "seed")
DEFAULT_EVAL_N = 100


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task spec (module docstring)."""

    task: str
    tier: int = 1
    n: int | None = None
    seed: int = 0
    split: str | None = None
    file: str | None = None  # choice items=FILE, or the FoQA file
    format: str | None = None  # data refs: "sft" (default) or "prompts"

    @property
    def text(self) -> str:
        """The canonical spec string (defaults written out), stable for hashing and naming."""
        if self.task == "foqa":
            return f"foqa:{self.file}" + (f":n={self.n}" if self.n else "")
        parts = [self.task]
        if self.file:
            parts.append(f"items={self.file}")
        else:
            parts += [f"tier={self.tier}", f"seed={self.seed}"]
        if self.n:
            parts.append(f"n={self.n}")
        if self.split:
            parts.append(f"split={self.split}")
        if self.format:
            parts.append(f"format={self.format}")
        return ":".join(parts)

    @property
    def key(self) -> str:
        """Folder-safe name: ``opswap-t1-n128`` (generated) or ``foqa-<stem>-<hash>`` (files)."""
        if self.file:
            digest = hashlib.sha256(self.text.encode()).hexdigest()[:6]
            return f"{self.task}-{Path(self.file).stem.replace(':', '-')}-{digest}"
        return f"{self.task}-t{self.tier}-s{self.seed}-n{self.n or DEFAULT_EVAL_N}"

    @property
    def metric(self) -> str:
        return "f1" if self.task == "foqa" else "accuracy"


def parse_task_spec(spec: str, *, where: str | None = None, allow_split: bool = False) -> TaskSpec:
    """Parse ``TASK[:KEY=VALUE]...``; ``allow_split``: a training-data ref, which may also set ``split`` and
    ``format``. A bad spec is a SpilloverError naming the part and the fix."""
    return _parse(spec, where, allow_split)


def _parse(spec: str, where: str | None, allow_split: bool) -> TaskSpec:
    fix = ("write TASK[:KEY=VALUE]..., e.g. opswap:tier=1:n=128, countdown, choice:items=FILE or foqa:FILE "
           f"(tasks: {', '.join(TASK_NAMES)}; keys: tier, n, seed" + (", split, format" if allow_split else "") + ")")
    if not isinstance(spec, str) or not spec.strip():
        raise SpilloverError(f"empty benign task spec {spec!r}", where=where, fix=fix)
    task, *rest = spec.strip().split(":")
    if task not in TASK_NAMES:
        raise UnknownName("benign task", task, list(TASK_NAMES), where=where)
    fields: dict[str, Any] = {}
    if task == "foqa":
        if len(rest) > 1 and rest[0] in ("hub", "bundled") and rest[1] and "=" not in rest[1]:
            rest = [f"{rest[0]}:{rest[1]}", *rest[2:]]  # foqa:hub:NAME / foqa:bundled:NAME, a dataset by name
        if not rest or "=" in rest[0] or not rest[0]:
            raise SpilloverError(f"{spec!r}: FoQA needs its file, foqa:FILE", where=where,
                                 fix="write foqa:PATH.jsonl (question, context, answers per line)")
        fields["file"], rest = rest[0], rest[1:]
    for part in rest:
        k, sep, v = part.partition("=")
        allowed = ("n",) if task == "foqa" else (*_INT_KEYS, "items", *(("split", "format") if allow_split else ()))
        if not sep or k not in allowed or not v:
            raise SpilloverError(f"{spec!r}: cannot read {part!r} (keys allowed for {task}: {', '.join(allowed)})",
                                 where=where, fix=fix)
        if k in _INT_KEYS:
            try:
                fields[k] = int(v)
            except ValueError:
                raise SpilloverError(f"{spec!r}: {k} must be an integer, got {v!r}", where=where, fix=fix) from None
        elif k == "items":
            if task != "choice":
                raise SpilloverError(f"{spec!r}: items=FILE is for the choice task", where=where, fix=fix)
            fields["file"] = v
        elif k == "format":
            if v not in ("sft", "prompts"):
                raise SpilloverError(f"{spec!r}: format must be sft or prompts, got {v!r}", where=where, fix=fix)
            fields["format"] = v
        else:
            if v not in ("train", "test"):
                raise SpilloverError(f"{spec!r}: split must be train or test, got {v!r}", where=where, fix=fix)
            fields["split"] = v
    parsed = TaskSpec(task, **fields)
    if parsed.tier not in (1, 2, 3):
        raise SpilloverError(f"{spec!r}: tier must be 1, 2 or 3", where=where, fix=fix)
    if parsed.n is not None and parsed.n < 1:
        raise SpilloverError(f"{spec!r}: n must be at least 1", where=where, fix=fix)
    return parsed


# ---------------------------------------------------------------- evaluation items
@dataclass(frozen=True)
class EvalItem:
    """One held-out item: its id, the prompt to send and (FoQA) the gold answers."""

    id: str
    prompt: str
    golds: tuple[str, ...] = ()


def eval_items(spec: TaskSpec) -> list[EvalItem]:
    """The items ``spec`` evaluates on (module docstring), in a fixed order."""
    if spec.split not in (None, "test"):
        raise SpilloverError(f"{spec.text!r}: evaluation always uses the held-out test split",
                             fix="drop split= from the evaluation spec")
    if spec.task == "foqa":
        items = load_foqa(spec.file)
        return items[:spec.n] if spec.n else items
    if spec.task == "choice" and spec.file:
        chosen = choice.select_split(choice.load_items(spec.file), "test")
        if not chosen:
            raise SpilloverError(f"none of the items in {spec.file} falls in the test split", where=spec.file,
                                 fix="add items (about one in five lands in the test split)")
        chosen = chosen[:spec.n] if spec.n else chosen
    else:
        chosen = GENERATED[spec.task].generate(spec.n or DEFAULT_EVAL_N, seed=spec.seed, tier=spec.tier, split="test")
    return [EvalItem(it.id, it.prompt()) for it in chosen]


def score_item(spec: TaskSpec, item: EvalItem, answer: str) -> dict:
    """Score one answer: ``{"correct", "parsed", "expected", ...}`` (generated tasks) or ``{"exact_match",
    "f1", "parsed"}`` (FoQA: the answer's last non-empty line, after an ``Answer:`` label if present)."""
    if spec.task == "foqa":
        parsed = foqa_answer(answer)
        return {"exact_match": foqa.exact_match(parsed, item.golds), "f1": foqa.token_f1(parsed, item.golds),
                "parsed": parsed, "expected": list(item.golds)}
    details = dict(GENERATED[spec.task].score(item.prompt, answer))
    reward = details.pop("reward")
    return {"correct": bool(reward == 1.0), **details}


def foqa_answer(answer: str) -> str:
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    last = lines[-1]
    head, sep, tail = last.partition(":")
    return tail.strip() if sep and head.strip().lower() in ("answer", "svar") else last


def load_foqa(path: str | Path) -> list[EvalItem]:
    """FoQA-style JSONL (module docstring) as evaluation items; a bad line is an error naming file:line."""
    from spillover._io import iter_jsonl_objects

    if str(path).startswith(("hub:", "bundled:")):  # foqa:hub:foqa, the registered dataset (spillover data show foqa)
        from spillover.data import resolve_data_path

        path = resolve_data_path(str(path))
    path = Path(path)
    if not path.is_file():
        raise SpilloverError(f"FoQA file not found: {path}", fix="give a JSONL file of {question, context, answers}")
    items = []
    for where, lineno, row in iter_jsonl_objects(path):
        answers = row.get("answers")
        if isinstance(answers, dict):
            answers = answers.get("text")
        if isinstance(answers, str):
            answers = [answers]
        if not (isinstance(row.get("question"), str) and isinstance(row.get("context"), str)
                and isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise SpilloverError("a FoQA line needs 'question' and 'context' strings and non-empty 'answers' "
                                 "(strings, or {text: [...]})", where=where,
                                 fix="fix the line, or convert the dataset to that layout")
        prompt = "\n".join([row["context"].strip(), "", f"Question: {row['question'].strip()}",
                            "Answer with the shortest span of the text above that answers the question, on the last "
                            'line as "Answer: <span>".'])
        items.append(EvalItem(str(row.get("id", f"foqa-{lineno}")), prompt, tuple(answers)))
    if not items:
        raise SpilloverError(f"{path} holds no questions", where=str(path), fix="give a non-empty FoQA JSONL file")
    return items


# ---------------------------------------------------------------- training data (data: benign:SPEC)
def sft_rows(spec: TaskSpec) -> list[dict]:
    """Conversations of ``spec`` (train split unless it says ``split=test``): prompt + reference answer, or
    the prompt alone with ``format=prompts``."""
    answer = spec.format != "prompts"
    if spec.task == "foqa":  # the rows of the file (e.g. hub:foqa_train), answered in the format eval scores
        items = load_foqa(spec.file)
        return [{"id": it.id, "messages": [{"role": "user", "content": it.prompt},
                                           {"role": "assistant", "content": f"Answer: {it.golds[0]}"}]}
                for it in (items[:spec.n] if spec.n else items)]
    split = spec.split or "train"
    if spec.task == "choice" and spec.file:
        chosen = choice.select_split(choice.load_items(spec.file), split)
        chosen = chosen[:spec.n] if spec.n else chosen
    else:
        chosen = GENERATED[spec.task].generate(spec.n or DEFAULT_EVAL_N, seed=spec.seed, tier=spec.tier, split=split)
    return [{"id": it.id, "messages": [{"role": "user", "content": it.prompt()},
                                       *([{"role": "assistant", "content": it.response()}] if answer else [])]}
            for it in chosen]


def benign_data_path(ref: str) -> Path:
    """``benign:SPEC`` as a chat JSONL file (SFT conversations, or prompts with ``format=prompts``) under ``$SPILLOVER_HOME/benign/`` (rewritten atomically whenever
    its content differs from what the generator gives, so a damaged or stale file is never used)."""
    from spillover._io import atomic_write_text
    from spillover.models._paths import spillover_home

    spec = parse_task_spec(ref.removeprefix("benign:"), where=ref, allow_split=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sft_rows(spec))
    path = spillover_home() / "benign" / f"{hashlib.sha256(spec.text.encode()).hexdigest()[:16]}.jsonl"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return path
