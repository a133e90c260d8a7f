"""Parity of `prose-structure` with the RL paper's own structure score, on random markdown-like texts.

The paper's code is not part of spillover; point this at your copy of its scoring module (in the
authors' repository: open_models/tools/structure_detection.py, function structure_score_markdown):

    python bench/prose_parity.py PATH/TO/structure_detection.py [--n 100000] [--seed 0] [--jsonl FILE ...]

Texts are random sequences of prose, markdown and whitespace pieces (lists, headings, emphasis, code
fences, tables, unusual line breaks), then (with --jsonl) the assistant answers of chat JSONL files
(reasoning removed). Prints how many rewards differ (by more than 1e-12) for `prose-structure`
(expected 0) and, for contrast, for `prose-structure-strict`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random

from spillover.rewards import prose_score, split_reasoning

PIECES = ["word", "Word.", "end!", "ask?", "Dr. X", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\x85", "\u2028", "\xa0",
          "- ", "* ", "+ ", "1. ", "12) ", "1234. ", "# ", "### ", "#tag", "**", "__", "*", "_", "***", "`", "```",
          "~~~", "|", "| a | b |", "|---|---|", ":", "-", "snake_case", "2*3", "  - ", "\t1. ", "x", "y.", "text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper_module", help="the paper's structure_detection.py")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jsonl", nargs="*", default=[], help="chat JSONL files whose assistant answers to compare")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("paper_structure_detection", args.paper_module)
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    rng = random.Random(args.seed)
    compare("random texts", ("".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40))) for _ in range(args.n)),
            paper.structure_score_markdown)
    answers = [split_reasoning(m["content"])[1] for path in args.jsonl for line in open(path, encoding="utf-8")
               if line.strip() for m in json.loads(line).get("messages", []) if m["role"] == "assistant"]
    if answers:
        compare("assistant answers", answers, paper.structure_score_markdown)


def compare(label: str, texts, paper_score) -> None:
    n, differ, gap = 0, {"paper": 0, "strict": 0}, 0.0
    for text in texts:
        n += 1
        expected = paper_score(text)
        for counting in differ:
            diff = abs(prose_score(text, counting=counting)["reward"] - expected)
            differ[counting] += diff > 1e-12
            gap += diff if counting == "strict" else 0.0
    print(f"{n} {label}: prose-structure differs on {differ['paper']}, prose-structure-strict on "
          f"{differ['strict']} ({differ['strict'] / n:.1%}; mean |difference| there "
          f"{gap / max(1, differ['strict']):.3f})")


if __name__ == "__main__":
    main()
