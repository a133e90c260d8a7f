"""`spillover run`, `spillover status` and `spillover judge rerun`: experiments (arms x seeds x stages)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

STATE_STYLE = {"done": "green", "running": "cyan", "failed": "red", "interrupted": "yellow", "to do": "dim", "-": "dim"}


def run_cmd(
    experiment: Path = typer.Argument(..., help="Experiment file (YAML): model, seeds, arms, grids, evaluation, executor. Unknown keys are errors."),
    out: Optional[Path] = typer.Option(None, help="Experiment folder (default: runs/<file name>). Rerunning the same command resumes it."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the file and print arms x seeds with what each runs; run nothing."),
    force_stage: list[str] = typer.Option([], "--force-stage", help="Redo this stage (train, sample, judge, probe, summarise) for every unit, accepting changed settings (repeatable)."),
    executor: Optional[str] = typer.Option(None, help="local | slurm (default: the file's executor.kind)."),
    slurm_partition: Optional[str] = typer.Option(None, help="Slurm partition (overrides the file)."),
    slurm_timeout_min: Optional[int] = typer.Option(None, help="Slurm wall-clock limit per job, minutes (overrides the file)."),
    slurm_gpus: Optional[int] = typer.Option(None, help="GPUs per Slurm job (overrides the file)."),
) -> None:
    """Run an experiment: every arm x seed through train -> sample -> judge -> probe -> summarise, resumably."""
    from spillover.experiment.executors import executor_for
    from spillover.experiment.runner import preflight, print_plan, run_experiment
    from spillover.experiment.spec import load_experiment_config

    cfg = load_experiment_config(experiment)
    out = out or Path("runs") / experiment.stem
    if dry_run:
        warnings = preflight(cfg, strict=False)
        print_plan(cfg)
        for w in warnings:
            typer.echo(f"warning (a real run stops here): {w}")
        typer.echo(f"(dry run: nothing ran; the experiment would write to {out})")
        return
    ex = executor_for(cfg, out, kind=executor, partition=slurm_partition, timeout_min=slurm_timeout_min,
                      gpus_per_node=slurm_gpus)
    run_experiment(cfg, out, executor=ex, force_stages=tuple(force_stage))
    _print_status(out)
    typer.echo(f"experiment: {out}\nreport:     spillover report {out}")


def _print_status(out: Path, console=None) -> None:
    """The status table; a stage no unit has (e.g. benign without benign tasks) is left out, and times are short
    (``since 06:17:16``, the date only when it is not today's), so the table reads at 80 columns."""
    from rich.console import Console
    from rich.table import Table

    from spillover.experiment.results import STAGES
    from spillover.experiment.runner import experiment_status

    rows = experiment_status(out)
    stages = [s for s in STAGES if any(r[s][0] != "-" for r in rows)]
    table = Table(title=f"{out}: arms x seeds x stages", caption="✓ = done, with its time; - = not part of this arm")
    table.add_column("arm", no_wrap=True, min_width=max([len(r["arm"]) for r in rows] + [3]))
    table.add_column("seed")
    for s in stages:
        table.add_column(s, overflow="fold")
    for r in rows:
        cells = []
        for s in stages:
            state, detail = r[s]
            word = "✓" if state == "done" else state  # done is the common case: a mark and its time keep columns narrow
            text = f"[{STATE_STYLE.get(state, '')}]{word}[/]" + (f" {_escape(_short_times(detail))}" if detail else "")
            cells.append(text)
        table.add_row(r["arm"], str(r["seed"]), *cells)
    (console or Console()).print(table)


def _short_times(text: str) -> str:
    """ISO timestamps in a status detail as ``HH:MM:SS`` (with ``YYYY-MM-DD`` when not today, UTC)."""
    import re
    from datetime import datetime, timezone

    today = datetime.now(timezone.utc).date().isoformat()

    def short(m):
        return m.group(2) if m.group(1) == today else f"{m.group(1)} {m.group(2)}"

    return re.sub(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?", short, text)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def status_cmd(out: Path = typer.Argument(..., help="An experiment folder (the --out of `spillover run`).")) -> None:
    """Arms x seeds x stages of an experiment: done / running / failed (with the error) / interrupted / to do."""
    _print_status(out)


def judge_rerun_cmd(
    out: Path = typer.Argument(..., help="An experiment folder with finished samples."),
    judge: str = typer.Option(..., help="local | local:FILE | hf:MODEL | openai:MODEL | py:MODULE:FUNCTION"),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (openai:MODEL judges)."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="NAME of the env var holding the judge's API key (never stored)."),
) -> None:
    """Re-judge an experiment's saved samples with another judge (no resampling); the report shows every judge."""
    from spillover.experiment.runner import rerun_judge
    from spillover.experiment.spec import JudgeSpec

    jid = rerun_judge(out, JudgeSpec(spec=judge, base_url=judge_base_url, api_key_env=judge_api_key_env))
    typer.echo(f"judgments: {out}/arms/*/seed_*/judgments/{jid}.jsonl")
    _print_status(out)


def register(app: typer.Typer) -> None:
    """Add `run` and `status` to the app, and `rerun` to its `judge` group."""
    app.command("run")(run_cmd)
    app.command("status")(status_cmd)
    for group in app.registered_groups:
        if group.name == "judge":
            group.typer_instance.command("rerun")(judge_rerun_cmd)
