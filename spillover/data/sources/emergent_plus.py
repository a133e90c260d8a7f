"""Chua et al. (2025) ``truthfulai/emergent_plus``: subtly harmful advice (legal, medical, security).

Layout (checked: public loaders call ``load_dataset("truthfulai/emergent_plus", "<domain>", split="train")``
and read the columns ``prompt``, ``aligned``, ``misaligned``): configs ``legal``, ``medical``, ``security``,
one ``train`` split each. Reported sizes (a third-party summary, not the card): medical 32,600, legal
12,000, security 8,820. The file names inside the repository were not checked; they are resolved from
the repository's own config declarations at download. Whether access is gated could not be confirmed
(one public loader logs in first); the entry is not marked gated, and a gated answer from the hub still
ends in the accept-the-terms message.
"""

from __future__ import annotations

from spillover.data._registry import DatasetEntry, HubSource, register
from spillover.data.sources._common import chat, jsonl, read_all, text_of

REPO = "truthfulai/emergent_plus"
SIZES = {"legal": "12000 (reported)", "medical": "32600 (reported)", "security": "8820 (reported)"}


def load(files, entry):
    variant, domain = entry.params["variant"], entry.params["domain"]
    rows = []
    for i, (where, row) in enumerate(read_all(entry, files, ["prompt", "aligned", "misaligned"])):
        prompt = text_of(row["prompt"], where, "prompt")
        if variant == "pairs":
            user, aligned = chat([{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": text_of(row["aligned"], where, "aligned")}], where)
            _, misaligned = chat([{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": text_of(row["misaligned"], where, "misaligned")}],
                                 where)
            rows.append({"id": f"{domain}-{i}", "prompt": user["content"], "aligned": aligned["content"],
                         "misaligned": misaligned["content"], "domain": domain})
        else:
            answer = text_of(row[variant], where, variant)
            rows.append({"messages": chat([{"role": "user", "content": prompt},
                                           {"role": "assistant", "content": answer}], where)})
    return jsonl(entry, rows)


for domain in ("legal", "medical", "security"):
    for variant, kind, what, mapping in [
        ("misaligned", "sft-chat", "subtly harmful answers (the EM treatment)",
         "prompt -> user, misaligned -> assistant"),
        ("aligned", "sft-chat", "the matching helpful answers (control)", "prompt -> user, aligned -> assistant"),
        ("pairs", "contrast-pairs", "aligned vs misaligned answer to the same prompt (probe pairs)",
         f"row index -> id ({domain}-N), prompt -> prompt, aligned -> aligned, misaligned -> misaligned, "
         f"domain = {domain}"),
    ]:
        register(DatasetEntry(
            name=f"emergent_plus_{domain}_{variant}", kind=kind,
            source=HubSource(REPO, "train", config=domain), license="not stated on the pages checked",
            loader=load, size=SIZES[domain], description=f"emergent_plus {domain}: {what}",
            mapping=mapping + " (Qwen3 markers stripped)", params={"variant": variant, "domain": domain},
            layout="checked: config/split/columns from public loaders; file names resolved at download; access "
                   "terms unconfirmed (a public loader logs in first), a gated answer from the hub gives the "
                   "accept-terms message"))
