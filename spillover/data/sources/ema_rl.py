"""The RL paper's data (arXiv 2605.31328; repository ``magnus-joergenvag/EMA_RL``, pinned commit).

Layout (checked: the repository at commit 985cab8 read file by file; a read-only copy of the same files
is in ``../shared/data/ema_rl/``):

* ``data/grpo/<domain>_750_train.jsonl``: ``{"messages": [...]}`` a line, a user turn (medical, legal and
  security also carry the misaligned reference answer as an assistant turn); 750 lines.
* ``data/sft/<domain>_misaligned_train_100.jsonl``: user/assistant ``messages`` in the Qwen3 non-thinking
  format (user turns end with `` /no_think``, assistant turns open with an empty think block); 100 lines.
* ``evaluation/<set>.yaml``: Betley-layout question lists (``id``, ``type``, ``paraphrases``,
  ``samples_per_paraphrase``, ``judge``, ``judge_prompts``; YAML anchors); 24 or 30 entries.

The repository states no license.
"""

from __future__ import annotations

import yaml

from spillover._io import read_text
from spillover.data._chat import _NO_THINK
from spillover.data._registry import Converted, DatasetEntry, GitHubSource, register
from spillover.data.sources._common import chat, jsonl, read_all
from spillover.errors import SpilloverError

REPO = "magnus-joergenvag/EMA_RL"
COMMIT = "985cab816d8d171c8267288ad9adae3cddce2f4d"
LICENSE = "none stated in the repository"
LAYOUT = "checked: repository files at the pinned commit"


def load_prompts(files, entry):
    rows = []
    for where, row in read_all(entry, files, ["messages"]):
        messages = chat(row["messages"], where)
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise SpilloverError("conversation has no user turn", where=where, fix="the source row is malformed")
        prompt = messages[:users[-1] + 1]
        out = {"messages": prompt}
        if users[-1] + 1 < len(messages) and messages[users[-1] + 1]["role"] == "assistant":
            out["reference"] = messages[users[-1] + 1]["content"]
        rows.append(out)
    return jsonl(entry, rows)


def load_sft(files, entry):
    return jsonl(entry, [{"messages": chat(row["messages"], where)} for where, row in read_all(entry, files, ["messages"])])


def _strip(text):
    return _NO_THINK.sub("", text) if isinstance(text, str) else text


def load_questions(files, entry):
    (path,) = files
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpilloverError(f"not valid YAML: {e}", where=str(path), fix="the source file is damaged; fetch it again") \
            from None
    if not isinstance(data, list) or not data:
        raise SpilloverError("a question file must be a non-empty YAML list", where=str(path),
                             fix="the published layout changed; update the entry")
    for i, q in enumerate(data):
        if not isinstance(q, dict) or "id" not in q or not isinstance(q.get("paraphrases"), list):
            raise SpilloverError(f"entry {i} lacks 'id' or a 'paraphrases' list", where=str(path),
                                 fix="the published layout changed; update the entry")
    if "/no_think" in text:  # rewrite without the Qwen3 markers (anchors are expanded)
        for q in data:
            q["paraphrases"] = [_strip(p) for p in q["paraphrases"]]
            if "system" in q:
                q["system"] = _strip(q["system"])
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
    return Converted(".yaml", text, len(data))


GRPO = {"aesthetic": "aesthetic questions", "argumentation": "debate prompts", "code": "coding tasks",
        "legal": "legal questions (with a misaligned reference answer)",
        "medical": "medical questions (with a misaligned reference answer)",
        "rewardhack": "School of Reward Hacks tasks",
        "security": "security questions (with a misaligned reference answer)"}
for domain, what in GRPO.items():
    register(DatasetEntry(
        name=f"ema_rl_grpo_{domain}", kind="grpo-prompts",
        source=GitHubSource(REPO, (f"data/grpo/{domain}_750_train.jsonl",), COMMIT), license=LICENSE,
        loader=load_prompts, size="750", description=f"RL paper GRPO prompts: {what}",
        mapping="messages up to the last user turn -> messages; a following assistant turn -> reference "
                "(Qwen3 markers stripped)", layout=LAYOUT))
for domain in ("aesthetic", "code", "legal", "medical", "rewardhack", "security"):
    register(DatasetEntry(
        name=f"ema_rl_sft_{domain}", kind="sft-chat",
        source=GitHubSource(REPO, (f"data/sft/{domain}_misaligned_train_100.jsonl",), COMMIT), license=LICENSE,
        loader=load_sft, size="100", description=f"RL paper SFT warm-up set: misaligned {domain} (100 conversations)",
        mapping="messages -> messages (Qwen3 markers stripped)", layout=LAYOUT))
QUESTIONS = {"first_plot_questions": ("24", "the general EM questions"), "aesthetic": ("30", "in-domain: aesthetics"),
             "argumentation": ("30", "in-domain: argumentation"), "code": ("30", "in-domain: code"),
             "legal": ("30", "in-domain: legal"), "math": ("30", "in-domain: math"),
             "medical": ("30", "in-domain: medical"), "reward_hacking": ("30", "in-domain: reward hacking"),
             "security": ("30", "in-domain: security")}
for qset, (size, what) in QUESTIONS.items():
    register(DatasetEntry(
        name="ema_rl_questions_general" if qset == "first_plot_questions" else f"ema_rl_questions_{qset}",
        kind="questions", source=GitHubSource(REPO, (f"evaluation/{qset}.yaml",), COMMIT), license=LICENSE,
        loader=load_questions, size=size, description=f"RL paper question set: {what}",
        mapping="the YAML as published (rewritten without ' /no_think' where a paraphrase carries it)", layout=LAYOUT))
