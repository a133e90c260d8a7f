"""Simonsen et al. (2025) ``alexandrainst/foqa``: Faroese extractive question answering (gated).

Layout (checked: the dataset card's YAML): config ``default`` with splits ``train`` (848), ``val`` (128),
``test`` (1024); columns ``id``, ``title``, ``question``, ``context``, ``answers`` (struct of ``text``:
list of strings and ``answer_start``: list of ints, SQuAD style), ``validation``. License CC-BY-NC-4.0;
the hub page asks for contact details before access. File names are resolved at download.

The converted file is the FoQA layout :func:`spillover.benign.tasks.load_foqa` reads (one question a line:
``id``, ``title``, ``question``, ``context``, ``answers`` as a list of gold spans); the prompt wording and the
scoring (exact match, token F1) live in :mod:`spillover.benign`.
"""

from __future__ import annotations

from spillover.data._registry import DatasetEntry, HubSource, register
from spillover.data.sources._common import jsonl, read_all, text_of
from spillover.errors import SpilloverError

REPO = "alexandrainst/foqa"


def answers_of(row, where) -> list[str]:
    answers = row["answers"]
    texts = answers.get("text") if isinstance(answers, dict) else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise SpilloverError("column 'answers' must hold a non-empty list 'text' of answer strings", where=where,
                             fix="the published layout differs from the SQuAD-style mapping; update the entry")
    return texts


def load(files, entry):
    rows = []
    for where, row in read_all(entry, files, ["id", "title", "question", "context", "answers"]):
        rows.append({"id": str(row["id"]), "title": text_of(row["title"], where, "title", required=False) or "",
                     "question": text_of(row["question"], where, "question"),
                     "context": text_of(row["context"], where, "context"), "answers": answers_of(row, where)})
    return jsonl(entry, rows)


MAPPING = "id -> id, title -> title, question -> question, context -> context, answers.text -> answers (all gold spans)"
for name, split, size, what in [
    ("foqa", "test", "1024", "test split: score a model with `eval --benign foqa:FILE` (exact match, token F1)"),
    ("foqa_train", "train", "848", "train split: the benign fine-tuning task"),
]:
    register(DatasetEntry(
        name=name, kind="benign-task", source=HubSource(REPO, split), license="CC-BY-NC-4.0", loader=load, gated=True,
        size=size, description=f"FoQA (Faroese extractive QA), {what}", mapping=MAPPING,
        layout="checked: config/splits/columns from the card's YAML; file names resolved at download"))
