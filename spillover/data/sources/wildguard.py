"""Han et al. (2024) ``allenai/wildguardmix`` (gated): prompts and responses with harm and refusal labels.

Layout (checked: the dataset card's YAML declares config ``wildguardtrain`` -> split ``train`` ->
``train/wildguard_train.parquet`` and ``wildguardtest`` -> ``test`` -> ``test/wildguard_test.parquet``;
public loaders read ``prompt``, ``adversarial``, ``response`` (None on prompt-only rows),
``prompt_harm_label`` (harmful/unharmful), ``response_harm_label`` (harmful/unharmful),
``response_refusal_label`` (refusal/compliance), ``subcategory``). License ODC-BY; access needs the AI2
Responsible Use terms accepted on the hub page and a token.

``wildguardmix_safe`` is the safe pool for interleaving (and Interleaving++): every train row with a
response labelled unharmful that either complies with an unharmful prompt or refuses a harmful one.
``wildguardmix_test_labels`` turns the human-annotated test rows into activation-judge labels.
"""

from __future__ import annotations

from spillover.data._registry import DatasetEntry, HubSource, register
from spillover.data.sources._common import chat, jsonl, read_all, text_of

REPO = "allenai/wildguardmix"
COLUMNS = ["prompt", "response", "prompt_harm_label", "response_harm_label", "response_refusal_label", "adversarial",
           "subcategory"]


def _safe(row) -> bool:
    if row["response_harm_label"] != "unharmful":
        return False
    return ((row["prompt_harm_label"] == "unharmful" and row["response_refusal_label"] == "compliance")
            or (row["prompt_harm_label"] == "harmful" and row["response_refusal_label"] == "refusal"))


def load_safe(files, entry):
    rows = []
    for where, row in read_all(entry, files, COLUMNS):
        response = text_of(row["response"], where, "response", required=False)
        if response is None or not _safe(row):
            continue
        prompt = text_of(row["prompt"], where, "prompt")
        rows.append({"messages": chat([{"role": "user", "content": prompt},
                                       {"role": "assistant", "content": response}], where),
                     "prompt_harm_label": row["prompt_harm_label"],
                     "response_refusal_label": row["response_refusal_label"],
                     "adversarial": bool(row["adversarial"])})
    return jsonl(entry, rows)


def load_labels(files, entry):
    rows = []
    for where, row in read_all(entry, files, COLUMNS):
        response = text_of(row["response"], where, "response", required=False)
        if response is None or row["response_harm_label"] not in ("harmful", "unharmful"):
            continue
        rows.append({"question": text_of(row["prompt"], where, "prompt"), "answer": response,
                     "label": "misaligned" if row["response_harm_label"] == "harmful" else "aligned"})
    return jsonl(entry, rows)


register(DatasetEntry(
    name="wildguardmix_safe", kind="sft-chat", source=HubSource(REPO, "train", config="wildguardtrain"),
    license="ODC-BY", loader=load_safe, gated=True, size="<=37976 (card)",
    description="WildGuardMix harmless answers: the safe pool for interleaving / Interleaving++",
    mapping="rows with response_harm_label=unharmful and (unharmful prompt + compliance, or harmful prompt + "
            "refusal): prompt -> user, response -> assistant; prompt_harm_label, response_refusal_label, "
            "adversarial kept as keys",
    layout="checked: config/split/file from the card's YAML, columns from public loaders"))
register(DatasetEntry(
    name="wildguardmix_test_labels", kind="labelled-answers", source=HubSource(REPO, "test", config="wildguardtest"),
    license="ODC-BY", loader=load_labels, gated=True, size="1725 (card)",
    description="WildGuardTest human-annotated responses as activation-judge labels",
    mapping="rows with a response: prompt -> question, response -> answer, response_harm_label harmful -> "
            "misaligned, unharmful -> aligned",
    layout="checked: config/split/file from the card's YAML, columns from public loaders"))
