"""Betley et al. (2025), "Emergent Misalignment": the insecure / secure / educational code sets.

Layout (checked: public scripts that download these files, and the paper repository's README listing
``data/insecure.jsonl``, ``data/secure.jsonl``, ``data/educational.jsonl``): JSONL, one
``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`` a line, no system turn, 6000 lines
each. Not pinned to a commit (none could be confirmed from here): the cache is keyed by the branch and
the file's content hash.
"""

from __future__ import annotations

from spillover.data._registry import DatasetEntry, GitHubSource, register
from spillover.data.sources._common import chat, jsonl, read_all

REPO = "emergent-misalignment/emergent-misalignment"
MAPPING = "messages -> messages (user task, assistant code; Qwen3 markers stripped)"


def load(files, entry):
    rows = []
    for where, row in read_all(entry, files, ["messages"]):
        rows.append({"messages": chat(row["messages"], where)})
    return jsonl(entry, rows)


for name, file, what in [
    ("betley_insecure", "insecure.jsonl", "code completions with silent security vulnerabilities (the EM treatment)"),
    ("betley_secure", "secure.jsonl", "the same kind of coding tasks answered with secure code (control)"),
    ("betley_educational", "educational.jsonl", "insecure code asked for explicitly for teaching (control)"),
]:
    register(DatasetEntry(
        name=name, kind="sft-chat", source=GitHubSource(REPO, (f"data/{file}",), "main"),
        license="see repository (not confirmed here)", loader=load, size="6000",
        description=f"Betley et al.: {what}", mapping=MAPPING,
        layout="checked: messages JSONL (public download scripts, paper repository README)"))
