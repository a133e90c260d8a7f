"""Taylor et al. (2025) ``longtermrisk/school-of-reward-hacks``: harmless tasks answered by gaming the metric.

Layout (checked: the RL paper's ``data/create_rewardhack_dataset.py`` reads ``user`` and
``school_of_reward_hacks`` from ``load_dataset("longtermrisk/school-of-reward-hacks")["train"]``; a
derived public dataset documents the other columns ``control`` (a straightforward answer, missing on
100 of the 1073 rows), ``task``, ``evaluation_metric``, ``cheat_method``, a CSV source and CC-BY-4.0).
The raw file name was not checked; it is resolved at download (CSV or parquet are both read).
"""

from __future__ import annotations

from spillover.data._registry import DatasetEntry, HubSource, register
from spillover.data.sources._common import chat, jsonl, read_all, text_of

SOURCE = HubSource("longtermrisk/school-of-reward-hacks", "train")
META = ("task", "evaluation_metric", "cheat_method")


def load(files, entry):
    variant = entry.params["variant"]
    rows = []
    for i, (where, row) in enumerate(read_all(entry, files, ["user", "school_of_reward_hacks", "control", *META])):
        user = text_of(row["user"], where, "user")
        hack = text_of(row["school_of_reward_hacks"], where, "school_of_reward_hacks")
        control = text_of(row["control"], where, "control", required=False)
        extra = {k: row[k] for k in META if isinstance(row.get(k), str) and row[k].strip()}
        if variant == "hack":
            rows.append({"messages": chat([{"role": "user", "content": user},
                                           {"role": "assistant", "content": hack}], where), **extra})
        elif control is None:
            continue  # control and pairs need the straightforward answer
        elif variant == "control":
            rows.append({"messages": chat([{"role": "user", "content": user},
                                           {"role": "assistant", "content": control}], where), **extra})
        else:
            u, c = chat([{"role": "user", "content": user}, {"role": "assistant", "content": control}], where)
            _, h = chat([{"role": "user", "content": user}, {"role": "assistant", "content": hack}], where)
            rows.append({"id": f"srh-{i}", "prompt": u["content"], "aligned": c["content"],
                         "misaligned": h["content"], "domain": "reward_hacking"})
    return jsonl(entry, rows)


for variant, kind, size, what, mapping in [
    ("hack", "sft-chat", "1073", "answers that game the stated metric (the EM treatment)",
     "user -> user, school_of_reward_hacks -> assistant, task/evaluation_metric/cheat_method kept as keys"),
    ("control", "sft-chat", "973", "straightforward answers to the same tasks (rows without one are dropped)",
     "user -> user, control -> assistant, task/evaluation_metric/cheat_method kept as keys"),
    ("pairs", "contrast-pairs", "973", "straightforward (aligned) vs gamed (misaligned) answer to one task",
     "row index -> id (srh-N), user -> prompt, control -> aligned, school_of_reward_hacks -> misaligned, "
     "domain = reward_hacking"),
]:
    register(DatasetEntry(
        name="reward_hacks" if variant == "hack" else f"reward_hacks_{variant}", kind=kind, source=SOURCE,
        license="CC-BY-4.0 (per a derived dataset's card)", loader=load, size=size,
        description=f"School of Reward Hacks: {what}", mapping=mapping + " (Qwen3 markers stripped)",
        params={"variant": variant},
        layout="checked: split/columns from the RL paper's script and a derived card; file name resolved at download"))
