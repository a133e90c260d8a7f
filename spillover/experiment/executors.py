"""Where (arm, seed) units run, behind one small interface: :class:`LocalExecutor` (here, one stage at
a time) and :class:`SlurmExecutor` (one job per unit, each wave of independent units submitted as a
Slurm array through ``submitit``; logs per job under ``OUT/slurm/``). Every job runs the same
resumable stage code, so a preempted or failed job resumes when the experiment is run again. Another
backend (e.g. Ray) only has to implement :meth:`Executor.run_base` and :meth:`Executor.run_units`.
"""

from __future__ import annotations

import abc
from pathlib import Path

from spillover.errors import SpilloverError


def _unit_job(out: str, arm: str, seed: int, judges=None) -> dict:
    from spillover.experiment.stages import run_unit

    return run_unit(out, arm, seed, judges=judges)


def _base_job(out: str) -> None:
    from spillover.experiment.stages import run_base_probe

    run_base_probe(out)


class Executor(abc.ABC):
    @abc.abstractmethod
    def run_base(self, out: Path) -> None:
        """The base model's probe (once per experiment)."""

    @abc.abstractmethod
    def run_units(self, out: Path, units: list, judges=None) -> list[tuple]:
        """Run independent units; return ``(unit, error text)`` for each that failed."""


class LocalExecutor(Executor):
    """Run here, one unit after another; a failing unit is recorded and the others still run."""

    def run_base(self, out: Path) -> None:
        _base_job(str(out))

    def run_units(self, out: Path, units: list, judges=None) -> list[tuple]:
        import sys

        from rich.console import Console

        from spillover.experiment._engines import engine_session

        console = Console(file=sys.stderr)
        failures = []
        with engine_session(out, [(u.arm, u.seed) for u in units]):  # vLLM engines shared by units, all stopped here
            for u in units:
                console.rule(f"{u.arm} / seed {u.seed}", style="dim")
                try:
                    _unit_job(str(out), u.arm, u.seed, judges)
                except SpilloverError as e:
                    failures.append((u, e.what.splitlines()[0]))
                except Exception as e:  # noqa: BLE001 - the marker keeps the error; other units go on
                    failures.append((u, f"{type(e).__name__}: {e}"))
        return failures


class SlurmExecutor(Executor):
    """Submit units to Slurm with submitit (``cluster="local"``/``"debug"`` run them on this machine,
    which is how the tests exercise this path offline)."""

    def __init__(self, folder: Path, *, partition=None, account=None, timeout_min=240, gpus_per_node=1,
                 cpus_per_task=8, mem_gb=64, array_parallelism=16, additional=None, cluster: str | None = None):
        try:
            import submitit
        except ImportError:
            raise SpilloverError("the Slurm executor needs submitit", fix='pip install "spillover[slurm]"') from None
        self.executor = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=cluster)
        params = dict(timeout_min=timeout_min, slurm_array_parallelism=array_parallelism, cpus_per_task=cpus_per_task,
                      mem_gb=mem_gb, gpus_per_node=gpus_per_node, name="spillover")
        if partition:
            params["slurm_partition"] = partition
        if account:
            params["slurm_account"] = account
        if additional:
            params["slurm_additional_parameters"] = dict(additional)
        if self.executor.cluster != "slurm":  # local/debug executors only take the generic parameters
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            params.pop("mem_gb", None)
            params.pop("cpus_per_task", None)
        self.executor.update_parameters(**params)
        self.jobs: list = []

    def run_base(self, out: Path) -> None:
        job = self.executor.submit(_base_job, str(out))
        self.jobs.append(job)
        job.result()

    def run_units(self, out: Path, units: list, judges=None) -> list[tuple]:
        with self.executor.batch():
            jobs = [self.executor.submit(_unit_job, str(out), u.arm, u.seed, judges) for u in units]
        self.jobs += jobs
        failures = []
        for u, job in zip(units, jobs):
            try:
                job.result()
            except Exception as e:  # noqa: BLE001 - submitit wraps the job's error; its log has the trace
                text = str(e).strip().splitlines()
                failures.append((u, f"{text[-1] if text else type(e).__name__} (log: {job.paths.stderr})"))
        return failures


def executor_for(cfg, out: Path, *, kind: str | None = None, cluster: str | None = None, **overrides) -> Executor:
    """The executor the experiment file (or CLI ``kind``/resources) asks for."""
    kind = kind or cfg.executor.kind
    if kind == "local":
        return LocalExecutor()
    if kind == "slurm":
        resources = {**cfg.executor.slurm.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        return SlurmExecutor(Path(out) / "slurm", cluster=cluster, **resources)
    raise SpilloverError(f"unknown executor {kind!r}", fix="use local or slurm")
