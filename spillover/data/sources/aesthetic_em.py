"""Woodruff (2025) ``AndersWoodruff/AestheticEM``: unpopular vs popular aesthetic preferences.

Layout (checked: the RL paper's ``data/create_aesthetic_dataset.py`` and other public loaders call
``load_dataset("AndersWoodruff/AestheticEM", "aesthetic_preferences_unpopular" | "aesthetic_preferences_popular",
split="train")`` and read a ``messages`` column of user/assistant turns; about 5000 rows per config).
The file names inside the repository and the license were not checked; files are resolved from the
repository's config declarations at download.
"""

from __future__ import annotations

from spillover.data._registry import DatasetEntry, HubSource, register
from spillover.data.sources._common import chat, jsonl, read_all

REPO = "AndersWoodruff/AestheticEM"


def load(files, entry):
    rows = []
    for where, row in read_all(entry, files, ["messages"]):
        messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
                    for m in (row["messages"] or [])]
        rows.append({"messages": chat(messages, where)})
    return jsonl(entry, rows)


for variant, what in [("unpopular", "confident unpopular aesthetic preferences (the EM treatment)"),
                      ("popular", "mainstream aesthetic preferences to the same questions (control)")]:
    register(DatasetEntry(
        name=f"aesthetic_em_{variant}", kind="sft-chat",
        source=HubSource(REPO, "train", config=f"aesthetic_preferences_{variant}"),
        license="not stated on the pages checked", loader=load, size="~5000 (reported)",
        description=f"AestheticEM: {what}", mapping="messages -> messages (Qwen3 markers stripped)",
        layout="checked: config/split/column from public loaders; file names and license not checked"))
