"""The Slurm path through submitit, offline: its debug executor runs the same resumable unit jobs."""

import pytest

from spillover.experiment.executors import SlurmExecutor, executor_for
from spillover.experiment.results import load_experiment
from spillover.experiment.runner import run_experiment
from test_experiment import make_config

pytest.importorskip("submitit")


def test_units_run_as_submitit_jobs(tiny_model_dir, tmp_path, one_thread):
    cfg = make_config(tmp_path, tiny_model_dir, seeds=[0, 1],
                      arms=[{"name": "base"}, {"name": "sft", "train": {"method": "sft", "data": str(tmp_path / "items.jsonl"),
                                                                       "max_steps": 1, "batch_size": 2}}],
                      executor={"kind": "slurm", "slurm": {"partition": "gpu", "timeout_min": 30}})
    ex = executor_for(cfg, tmp_path / "exp", cluster="debug")
    assert isinstance(ex, SlurmExecutor) and ex.executor.cluster == "debug"
    run_experiment(cfg, tmp_path / "exp", executor=ex)
    res = load_experiment(tmp_path / "exp")
    assert all(u.summary is not None for u in res.units.values()) and len(res.units) == 4
    assert len(ex.jobs) == 1 + 4  # the base probe, then one job per (arm, seed)
    assert (tmp_path / "exp" / "slurm").is_dir()
    # a rerun through the same executor finds every stage done
    markers = {p: p.read_text() for p in (tmp_path / "exp").rglob("stages/*.json")}
    run_experiment(cfg, tmp_path / "exp", executor=executor_for(cfg, tmp_path / "exp", cluster="debug"))
    assert {p: p.read_text() for p in (tmp_path / "exp").rglob("stages/*.json")} == markers


def test_slurm_parameters_come_from_the_file_and_the_cli(tmp_path, monkeypatch):
    import submitit
    from submitit.slurm import slurm

    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun on this machine
    ex = SlurmExecutor(tmp_path, partition="gpu", account="lab", timeout_min=30, gpus_per_node=2, cluster="slurm")
    assert isinstance(ex.executor._executor, submitit.SlurmExecutor)
    params = ex.executor._executor.parameters
    assert (params["partition"], params["account"], params["time"], params["gpus_per_node"]) == ("gpu", "lab", 30, 2)
    assert params["array_parallelism"] == 16 and params["mem"] == "64GB"
