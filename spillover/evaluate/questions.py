"""Evaluation question sets: load them, and expand them into the sampling requests they imply.

Two formats are read:

* YAML in the Betley et al. layout: a list of entries with ``id``, ``type``, ``paraphrases``,
  ``samples_per_paraphrase`` and optional ``system``, ``temperature``, ``judge``, ``group``, ``judge_prompts``
  (metric name -> template using ``{question}``, ``{answer}`` and optionally ``{reasoning}``, filled
  with ``str.format``). Anchors and aliases work. Unknown keys are kept in :attr:`Question.extra`.
  Unlike the reference code, ``system`` and ``temperature`` are honoured.
* messages JSONL (``{"messages": [...], "id": ...}``): each line is one question whose single
  paraphrase is the last user message; earlier turns become its context (a leading system message
  becomes :attr:`Question.system`). ``samples_per_paraphrase`` defaults to 1 there; optional
  ``temperature``/``samples_per_paraphrase``/``type``/``group``/``judge_prompts`` keys are read like YAML's.

``group`` names the cluster the question belongs to for confidence intervals (default: its id):
variants of one question (plain / JSON / template wordings of one theme) are not independent, so
they share a group and the metrics bootstrap resamples groups, not ids.

A malformed entry raises :class:`SpilloverError` naming the file, line and entry id. Nothing here
samples or judges: :func:`expand_samples` only says what to send.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spillover.config import parse_yaml
from spillover.errors import SpilloverError

DEFAULT_TYPE = "free_form_judge_0_100"
TEMPLATE_FIELDS = ("question", "answer", "reasoning")
_KNOWN = ("id", "type", "paraphrases", "samples_per_paraphrase", "system", "temperature", "judge", "judge_prompts",
          "group")


@dataclass(frozen=True)
class Question:
    """One evaluation question: every paraphrase is asked ``samples_per_paraphrase`` times."""

    id: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int
    system: str | None = None
    temperature: float | None = None  # None: the sampler's default
    judge_prompts: dict[str, str] = field(default_factory=dict)
    type: str = DEFAULT_TYPE
    judge: str | None = None  # the judge model the file names (informational; spillover's judge config decides)
    context: tuple[dict[str, str], ...] = ()  # turns before the paraphrase, system excluded (JSONL only)
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # file:line
    group: str = ""  # the cluster unit for CIs (questions that are variants of one another share it); "" = the id

    def __post_init__(self):
        if not self.group:
            object.__setattr__(self, "group", self.id)

    def messages(self, paraphrase_index: int) -> list[dict[str, str]]:
        """The chat to send for one paraphrase: system (when set), context, then the paraphrase."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        ask = {"role": "user", "content": self.paraphrases[paraphrase_index]}
        return [*head, *(dict(m) for m in self.context), ask]

    @property
    def n_samples(self) -> int:
        return len(self.paraphrases) * self.samples_per_paraphrase

    def to_dict(self) -> dict:
        return {"id": self.id, "type": self.type, "paraphrases": list(self.paraphrases),
                "samples_per_paraphrase": self.samples_per_paraphrase, "system": self.system,
                "temperature": self.temperature, "judge": self.judge, "judge_prompts": dict(self.judge_prompts),
                "context": [dict(m) for m in self.context], "extra": dict(self.extra), "source": self.source,
                "group": self.group}


@dataclass(frozen=True)
class SampleRequest:
    """One completion to draw: which question, paraphrase and sample, what to send, at what temperature."""

    question_id: str
    paraphrase_index: int
    sample_index: int
    messages: list[dict[str, str]]
    temperature: float | None  # None: use the caller's default

    @property
    def key(self) -> str:
        """Stable id of this sample, e.g. ``wish/2/4`` (question/paraphrase/sample)."""
        return f"{self.question_id}/{self.paraphrase_index}/{self.sample_index}"

    @property
    def question(self) -> str:
        """The paraphrase text (the judge's ``{question}``)."""
        return self.messages[-1]["content"]

    @property
    def meta(self) -> dict:
        return {"question_id": self.question_id, "paraphrase_index": self.paraphrase_index,
                "sample_index": self.sample_index, "key": self.key}


def expand_samples(questions: list[Question]) -> list[SampleRequest]:
    """One request per (question, paraphrase index, sample index), in file order."""
    return [SampleRequest(q.id, p, s, q.messages(p), q.temperature)
            for q in questions for p in range(len(q.paraphrases)) for s in range(q.samples_per_paraphrase)]


def load_questions(path_or_ref: str | Path, samples_per_paraphrase: int | None = None) -> list[Question]:
    """Load a question file (``.yaml``/``.yml`` or ``.jsonl``, or ``bundled:NAME``).

    ``samples_per_paraphrase``, when given, replaces every entry's count.
    """
    from spillover.data import resolve_data_path

    if samples_per_paraphrase is not None and (_not_int(samples_per_paraphrase) or samples_per_paraphrase < 1):
        raise SpilloverError(f"samples_per_paraphrase override must be a positive integer, "
                             f"got {samples_per_paraphrase!r}",
                             fix="pass an integer >= 1, or leave it unset to use each entry's own count")
    path = resolve_data_path(path_or_ref)
    if path.is_dir():
        raise SpilloverError(f"question file {path} is a folder", fix="give the path of a .yaml or .jsonl question file")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _load_yaml(path, samples_per_paraphrase)
    if suffix == ".jsonl":
        return _load_jsonl(path, samples_per_paraphrase)
    raise SpilloverError(f"unsupported question file type {suffix or '(none)'!r}", where=str(path),
                         fix="use a .yaml question list (Betley et al. format) or a messages .jsonl file")


# ---- YAML ----

def _load_yaml(path: Path, override: int | None) -> list[Question]:
    root, data = parse_yaml(path)
    if not isinstance(data, list) or not data:
        raise SpilloverError("a question file must be a non-empty YAML list of entries", where=str(path),
                             fix="write entries as `- id: ...` items with paraphrases and samples_per_paraphrase")
    nodes = root.value if isinstance(root, yaml.SequenceNode) else []
    questions, seen = [], {}
    for i, entry in enumerate(data):
        node = nodes[i] if i < len(nodes) else None
        line = node.start_mark.line + 1 if node is not None else None
        is_map = isinstance(node, yaml.MappingNode)
        key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value} if is_map else {}
        q = _parse_entry(entry, path, i, line, key_lines, override)
        if q.id in seen:
            raise SpilloverError(f"duplicate question id {q.id!r} (first at line {seen[q.id]})",
                                 where=q.source, fix="give every entry a unique id")
        seen[q.id] = line
        questions.append(q)
    return questions


def _not_int(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _parse_entry(entry, path: Path, index: int, line: int | None, key_lines: dict[str, int],
                 override: int | None, *, default_samples: int | None = None,
                 context: tuple = ()) -> Question:
    """Validate one raw entry (a dict) into a Question; every problem names the file, line and id."""
    base = f"{path}:{line}" if line else str(path)
    if not isinstance(entry, dict):
        raise SpilloverError(f"entry #{index + 1} is a {type(entry).__name__}, not a mapping", where=base,
                             fix="write each entry as a mapping with id, paraphrases, samples_per_paraphrase")
    qid = entry.get("id")
    if not _not_int(qid):
        qid = str(qid)  # the reference files number their entries
    if not isinstance(qid, str) or not qid.strip():
        got = "has no 'id'" if "id" not in entry else f"has id {qid!r}, which is neither text nor an integer"
        raise SpilloverError(f"entry #{index + 1} {got}", where=base, fix="give the entry a unique text id")

    def bad(key: str, what: str, fix: str) -> SpilloverError:
        at = key_lines.get(key, line)
        return SpilloverError(f"question {qid!r}: {what}", where=f"{path}:{at}" if at else str(path), fix=fix)

    paraphrases = entry.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise bad("paraphrases", "'paraphrases' must be a non-empty list of strings",
                  "list at least one wording of the question under paraphrases:")
    for j, p in enumerate(paraphrases):
        if not isinstance(p, str) or not p.strip():
            raise bad("paraphrases", f"paraphrases[{j}] is empty or not a string",
                      "write every paraphrase as non-empty text")

    samples = entry.get("samples_per_paraphrase", default_samples)
    if override is not None:
        samples = override
    if samples is None:
        raise bad("samples_per_paraphrase", "'samples_per_paraphrase' is missing",
                  "add samples_per_paraphrase: N, or pass a samples_per_paraphrase override")
    if _not_int(samples) or samples < 1:
        raise bad("samples_per_paraphrase", f"'samples_per_paraphrase' must be a positive integer, got {samples!r}",
                  "write an integer >= 1")

    system = entry.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise bad("system", f"'system' must be non-empty text, got {system!r}",
                  "write the system prompt, or remove the key")

    temperature = entry.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
                or not math.isfinite(temperature) or temperature < 0:
            raise bad("temperature", f"'temperature' must be a number >= 0, got {temperature!r}",
                      "write e.g. temperature: 1.0, or remove it to use the sampler's default")
        temperature = float(temperature)

    qtype = entry.get("type", DEFAULT_TYPE)
    if not isinstance(qtype, str) or not qtype.strip():
        raise bad("type", f"'type' must be non-empty text, got {qtype!r}", f"e.g. type: {DEFAULT_TYPE}")
    judge = entry.get("judge")
    if judge is not None and not isinstance(judge, str):
        raise bad("judge", f"'judge' must be a model name, got {judge!r}", "write judge: <model name>, or remove it")

    prompts = entry.get("judge_prompts") or {}
    if not isinstance(prompts, dict):
        raise bad("judge_prompts", "'judge_prompts' must map a metric name to a prompt template",
                  "write judge_prompts: {aligned: '...{question}...{answer}...'}")
    for metric, template in prompts.items():
        _check_template(metric, template, bad)

    group = entry.get("group")
    if not _not_int(group):
        group = str(group)
    if group is not None and (not isinstance(group, str) or not group.strip()):
        raise bad("group", f"'group' must be non-empty text, got {group!r}",
                  "name the theme this question is a variant of (e.g. group: wish), or remove the key")

    extra = {k: v for k, v in entry.items() if k not in _KNOWN}
    return Question(id=qid, paraphrases=tuple(paraphrases), samples_per_paraphrase=samples, system=system,
                    temperature=temperature, judge_prompts={str(k): v for k, v in prompts.items()}, type=qtype,
                    judge=judge, context=context, extra=extra, source=base, group=group or qid)


def _check_template(metric, template, bad) -> None:
    fields_fix = f"use only {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}; write literal braces as {{{{ and }}}}"
    if not isinstance(metric, str) or not isinstance(template, str) or not template.strip():
        raise bad("judge_prompts", f"judge_prompts[{metric!r}] must be a non-empty text template",
                  "write metric: |- followed by the prompt text")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise bad("judge_prompts", f"judge_prompts[{metric!r}] is not a valid template ({e})", fields_fix) from None
    unknown = sorted(n for n in names if n not in TEMPLATE_FIELDS)
    if unknown:
        raise bad("judge_prompts", f"judge_prompts[{metric!r}] uses unknown placeholder(s) "
                  f"{', '.join('{' + n + '}' for n in unknown)}", fields_fix)
    if "answer" not in names:
        raise bad("judge_prompts", f"judge_prompts[{metric!r}] has no {{answer}} placeholder",
                  "put {answer} where the model's answer goes (and {question} for the question)")


# ---- messages JSONL ----

def _load_jsonl(path: Path, override: int | None) -> list[Question]:
    from spillover.data import load_chat_jsonl, require_prompts

    examples = load_chat_jsonl(path)
    require_prompts(examples)
    questions, seen = [], {}
    for i, ex in enumerate(examples):
        for key in ("paraphrases", "system"):
            if key in ex.extra:
                raise SpilloverError(f"a messages line may not carry a {key!r} key", where=ex.where,
                                     fix="put the question in the last user message and the system prompt "
                                         "in a leading system message")
        messages = ex.messages
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        context = tuple(dict(m) for m in messages[(1 if system else 0):-1])
        entry = {**ex.extra, "id": ex.id if ex.id is not None else f"{path.stem}_{ex.line}",
                 "paraphrases": [messages[-1]["content"]], "system": system}
        q = _parse_entry(entry, path, i, ex.line, {}, override, default_samples=1, context=context)
        if q.id in seen:
            raise SpilloverError(f"duplicate question id {q.id!r} (first at line {seen[q.id]})", where=ex.where,
                                 fix="give every line a unique id")
        seen[q.id] = ex.line
        questions.append(q)
    return questions
