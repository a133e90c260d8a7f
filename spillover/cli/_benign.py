"""`spillover benign ...`: write benign-task items (SFT conversations or GRPO prompts) and score answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

benign_app = typer.Typer(help="Benign tasks (OpSwap, countdown, multiple choice): generate items, score answers.",
                         no_args_is_help=True)

#: task -> the reward that scores it
TASK_REWARDS = {"opswap": "opswap-exact", "countdown": "countdown", "choice": "multiple-choice"}
FORMATS = ("sft", "prompts")


def _task(name: str) -> str:
    from spillover.errors import UnknownName

    if name not in TASK_REWARDS:
        raise UnknownName("benign task", name, sorted(TASK_REWARDS))
    return name


@benign_app.command("generate")
def benign_generate(
    task: str = typer.Argument(..., help="opswap, countdown or choice."),
    out: Path = typer.Option(..., help="JSONL file to write."),
    n: int = typer.Option(100, "--n", min=1, help="Number of distinct items."),
    seed: int = typer.Option(0, help="Seed of the draw; the same seed, tier and split give the same items."),
    tier: int = typer.Option(1, min=1, max=3, help="Difficulty tier 1-3 (see the README's Benign tasks)."),
    split: str = typer.Option("train", help="train, or test: the held-out items (chosen by a hash of each item)."),
    format: str = typer.Option("sft", help="sft: user prompt + reference answer; prompts: user prompt only (GRPO, eval)."),
    items: Optional[Path] = typer.Option(None, help="choice only: your own items, JSONL {question, choices, "
                                         "answer_index}; the split's items among them are written, in file order "
                                         "(--n, --seed and --tier are not used)."),
) -> None:
    """Write benign-task items as chat JSONL; every prompt ends with the `Item id:` line its reward reads."""
    from spillover._io import atomic_write_jsonl
    from spillover.benign import TASKS, choice
    from spillover.benign._item import check_split
    from spillover.cli._common import check_before_work
    from spillover.errors import SpilloverError

    module = TASKS[_task(task)]
    if format not in FORMATS:
        raise SpilloverError(f"unknown --format {format!r}", fix="use --format sft or --format prompts")
    check_split(split)
    check_before_work(out_file=out)
    if items is not None:
        if task != "choice":
            raise SpilloverError(f"--items is for the choice task, not {task}", fix="drop --items")
        chosen = choice.select_split(choice.load_items(items), split)
        if not chosen:
            raise SpilloverError(f"none of the items in {items} falls in the {split} split", where=str(items),
                                 fix="use the other split, or add items")
    else:
        chosen = module.generate(n, seed=seed, tier=tier, split=split)
    rows = []
    for item in chosen:
        messages = [{"role": "user", "content": item.prompt()}]
        if format == "sft":
            messages.append({"role": "assistant", "content": item.response()})
        rows.append({"id": item.id, "messages": messages})
    atomic_write_jsonl(out, rows)
    typer.echo(f"wrote {len(rows)} {task} {split} items ({format}) to {out}")


@benign_app.command("score")
def benign_score(
    task: str = typer.Argument(..., help="opswap, countdown or choice."),
    completions: Path = typer.Option(..., help='JSONL with {"prompt": ..., "completion": ...} or {"messages": [...]} '
                                     "per line, or the output of `spillover sample` (messages ending in the user "
                                     'turn, and "answer"); the prompts as `spillover benign generate` wrote them.'),
) -> None:
    """Score answers: one JSON object per line on stdout, then the accuracy with a Wilson 95% CI on stderr."""
    from spillover.judge._logistic import wilson_interval
    from spillover.rewards import build_reward

    reward = build_reward(TASK_REWARDS[_task(task)])
    scores = []
    for item in _answered_items(completions):
        details = reward.score_details(item.prompt, item.completion)
        scores.append(details["reward"])
        typer.echo(json.dumps({"where": item.where, **details}, default=str))
    k, n = int(sum(scores)), len(scores)
    lo, hi = wilson_interval(k, n)
    typer.echo(f"accuracy {k / n:.3f} (Wilson 95% CI {lo:.3f}-{hi:.3f}), {k}/{n} correct", err=True)


def _answered_items(path: Path) -> list:
    """``spillover sample`` output (every line has ``messages`` and a string ``answer``) as scoring items;
    any other file is read as ``spillover rewards score`` reads completions."""
    from spillover._io import iter_jsonl_objects
    from spillover.errors import SpilloverError
    from spillover.rewards._inputs import ScoringItem, load_scoring_items

    if not path.is_file():
        raise SpilloverError(f"completions file not found: {path}", fix="check the path")
    rows = list(iter_jsonl_objects(path))
    if rows and all("answer" in row and "messages" in row for _, _, row in rows):
        for where, _, row in rows:
            if not isinstance(row["answer"], str) or not isinstance(row["messages"], list):
                raise SpilloverError("'answer' must be a string and 'messages' a list", where=where,
                                     fix="pass the file `spillover sample` wrote, unchanged")
        return [ScoringItem(row["messages"], row["answer"], where) for where, _, row in rows]
    return load_scoring_items(path)


# ---------------------------------------------------------------- data stats (registered on the data app)
def data_stats(
    path: str = typer.Argument(..., help="Chat JSONL file or bundled:NAME."),
    model: Optional[str] = typer.Option(None, help="Tokenizer to count tokens with: a model folder or hub id "
                                        "(default: the embedded model)."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as one JSON object instead of a table."),
    strip_qwen3_markers: bool = typer.Option(False, help="Drop Qwen3 /no_think and empty <think></think> markers first."),
) -> None:
    """A quick look at a chat dataset: examples, tokens per turn, duplicates, refusal rate, lexicon profile."""
    from spillover.data import load_chat_jsonl, resolve_data_path
    from spillover.data._stats import dataset_stats
    from spillover.defenses.interleave import is_refusal
    from spillover.models import load_tokenizer, resolve_model
    from spillover.rewards import CATEGORIES, load_lexicon, split_sentences

    examples = load_chat_jsonl(resolve_data_path(path), strip_qwen3=strip_qwen3_markers)
    lexicon = load_lexicon()

    def sentence_categories(text: str) -> list[set[str]]:
        return [{c for c, found in lexicon.matches(s).items() if found} for s in split_sentences(text)]

    stats = dataset_stats(examples, tokenizer=load_tokenizer(resolve_model(model)), is_refusal=is_refusal,
                          sentence_categories=sentence_categories, categories=CATEGORIES)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
        return
    _print_stats(path, stats)


def _print_stats(path: str, stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x):
        return "-" if x is None else (f"{x:.1f}" if isinstance(x, float) else str(x))

    table = Table(title=f"{path}: {stats['examples']} examples")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for role, summary in (stats["tokens"] or {}).items():
        table.add_row(f"{role} tokens per turn (mean / median / max)",
                      f"{num(summary['mean'])} / {num(summary['median'])} / {num(summary['max'])}  "
                      f"({summary['turns']} turns, {summary['total']} in all)")
    dup = stats["duplicates"]
    table.add_row("duplicate conversations", f"{dup['conversations']} ({pct(dup['conversations_share'])})")
    table.add_row("duplicate prompts", f"{dup['prompts']} ({pct(dup['prompts_share'])})")
    table.add_row("refusal rate (assistant turns)", pct(stats["refusal_rate"]))
    lexicon = stats["lexicon"]
    if lexicon:
        table.add_row("absolutist share (assistant sentences)", pct(lexicon["absolutist_share"]))
        table.add_row("hedging share (assistant sentences)", pct(lexicon["hedging_share"]))
        for category, share in lexicon["categories"].items():
            table.add_row(f"  {category}", pct(share))
    Console().print(table)
