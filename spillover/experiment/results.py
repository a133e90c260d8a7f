"""The result schema of an experiment folder: what `spillover run` writes and every reader (report,
comparison tables, status, inspect export) reads. One schema, declared once, here.

On-disk layout of ``OUT`` (``spillover run EXPERIMENT.yaml --out OUT``)::

    OUT/
      experiment.yaml            the resolved experiment config (refused if a rerun's config changed)
      experiment.json            ExperimentIndex: expanded arms, seeds, judges, probe sets, versions
      base/
        stages/probe.json        StageMarker of the base model's probe (computed once per experiment)
        probe/<set_key>.json     ProbeResult JSON of the base model per probe set (per-pair log-probs)
      arms/<arm>/seed_<seed>/    one "unit": an arm trained and evaluated with one seed
        stages/<stage>.json      StageMarker per stage: train, sample, judge.<judge_id>, probe, summarise
        train/                   the training run dir (adapter/, manifest.json, metrics.jsonl, config.yaml,
                                 completions.jsonl for GRPO) -- absent for untrained arms (e.g. base)
        train_items.jsonl        the first ``n_items`` training items, when the arm sets n_items
        samples.jsonl            SampleRecord per line, appended per batch (append-only)
        judgments/<judge_id>.jsonl  JudgmentRecord per line, appended as judged (append-only)
        probe/<set_key>.json     ProbeResult JSON of this arm per probe set (delta_vs_base filled)
        benign/<task_key>/       per benign task (evaluation.benign): samples.jsonl (SampleRecord, append-only),
                                 scores.jsonl (item id, answer, parsed answer, correct or F1), result.json
        summary.json             UnitSummary: training consumption, metrics per judge and set, probes, benign
      slurm/                     submitit logs per job (Slurm executor only)

Append-only JSONL files may end in one torn line after a crash: read them with
:func:`read_samples`/:func:`read_judgments` (or :class:`spillover.evaluate.store.JsonlLog`), never
line by line by hand. A stage's outputs are final only when its marker says ``state: done``; use
:func:`load_experiment` to get everything typed. Changes to this schema are additive only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spillover.errors import SpilloverError
from spillover.evaluate.store import JsonlLog, JudgmentRecord, Record, SampleRecord

INDEX_FILE = "experiment.json"
CONFIG_FILE = "experiment.yaml"
SUMMARY_FILE = "summary.json"
STAGES = ("train", "sample", "judge", "probe", "benign", "summarise")
StageState = Literal["done", "running", "failed"]


class StageMarker(Record):
    """``stages/<stage>.json``: whether a stage finished, with the hash of the inputs it finished on."""

    stage: str = Field(..., description="train | sample | judge.<judge_id> | probe | summarise")
    state: StageState
    inputs_hash: str = Field(..., description="Hash of everything the stage's outputs depend on (upstream included).")
    own_hash: str = Field(..., description="Hash of this stage's own settings (a change here is refused, not silently redone).")
    started: str | None = None
    finished: str | None = None
    seconds: float | None = None
    error: str | None = Field(None, description="Last line of the error when state is failed.")
    pid: int | None = None
    host: str | None = None


class ArmInfo(Record):
    """One expanded arm as the runner will run it."""

    name: str
    method: Literal["sft", "grpo"] | None = Field(None, description="None: not trained (evaluates the base model or init_from as is).")
    init_from: str | None = Field(None, description="Another arm's name (its adapter of the same seed) or an adapter path.")
    init_kind: Literal["arm", "adapter"] | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="Grid axis values and user labels, e.g. {domain: medical, defense: kl}.")
    train: dict[str, Any] | None = Field(None, description="The arm's training recipe as given (without model/seed).")
    n_items: int | None = None
    evaluate: bool = True
    in_domain: dict[str, Any] | None = Field(None, description="The in-domain question set this arm answers ({file, "
                                             "question_ids, ...}): its own override or the experiment's default.")


class JudgeInfo(Record):
    judge_id: str = Field(..., description="Folder-safe id; names judgments/<judge_id>.jsonl.")
    spec: str = Field(..., description="local | local:FILE | hf:MODEL | openai:MODEL")
    base_url: str | None = None
    primary: bool = False
    identity: dict[str, Any] | None = Field(None, description="The judge's identity() (name, model or encoder, prompts "
                                            "and their hashes, limits such as the activation judge's style check) as "
                                            "recorded by the judge stages that ran; None until one finished.")
    identity_differs: list[str] = Field(default_factory=list, description="'arm/seed' units whose judge stage recorded "
                                        "another identity than `identity` (e.g. a classifier file retrained in between).")


class ProbeSetInfo(Record):
    key: str = Field(..., description="Folder-safe key; names probe/<key>.json.")
    ref: str = Field(..., description="Contrast-pair file or bundled:NAME.")


class ExperimentIndex(Record):
    """``experiment.json``."""

    name: str
    spillover_version: str
    created: str
    config_sha256: str
    model: str
    seeds: list[int]
    arms: list[ArmInfo]
    judges: list[JudgeInfo] = Field(..., description="The first is primary; later ones form the judge panel.")
    probe_sets: list[ProbeSetInfo] = Field(default_factory=list)
    question_sets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="'general'/'in_domain' -> {file, question_ids, ...}.")
    sampling: dict[str, Any] = Field(default_factory=dict)
    env: dict[str, Any] = Field(default_factory=dict)

    @property
    def primary_judge(self) -> JudgeInfo:
        return next((j for j in self.judges if j.primary), self.judges[0])


class TrainingConsumption(Record):
    """What an arm actually consumed in training (for sample matching), not what its dataset holds."""

    method: Literal["sft", "grpo"]
    items_seen: int | None = Field(None, description="SFT: training examples processed (with repeats over epochs); GRPO: prompts drawn (each once per group).")
    distinct_items: int | None = Field(None, description="Distinct items in the training data the arm used.")
    optimizer_steps: int | None = None
    completions_trained: int | None = Field(None, description="SFT: = items_seen; GRPO: completions sampled and trained on.")
    completion_tokens: int | None = Field(None, description="Tokens carrying the loss: assistant answer tokens (SFT), generated tokens (GRPO). Prompt tokens never count.")
    completion_tokens_exact: bool = Field(False, description="True when counted: SFT by the trainer over every batch "
                                          "(task rows only, not rows a defense mixes in); False when estimated (mean "
                                          "answer length x items seen: runs resumed from a checkpoint).")
    lr: float | None = None
    train_seconds: float | None = None
    final_loss: float | None = None
    final_reward: float | None = None


class UnitSummary(Record):
    """``summary.json`` of one (arm, seed)."""

    arm: str
    seed: int
    labels: dict[str, str] = Field(default_factory=dict)
    model: str
    adapter: str | None = None
    training: TrainingConsumption | None = None
    training_log: str | None = Field(None, description="Path (relative to the unit folder) of the per-step metrics.jsonl.")
    n_samples: dict[str, int] = Field(default_factory=dict, description="Samples per question set.")
    metrics: dict[str, dict[str, dict]] = Field(default_factory=dict, description="judge_id -> set ('general'/'in_domain') -> compute_metrics output.")
    probe: dict[str, dict] = Field(default_factory=dict, description="probe set key -> ProbeResult JSON (delta_vs_base vs the base model).")
    primary_judge: str | None = None
    benign: dict[str, dict] = Field(default_factory=dict, description="benign task key -> result: task, metric "
                                    "(accuracy | f1), value, ci_low, ci_high (Wilson or bootstrap 95%), n, k.")


class UnitResults(BaseModel):
    """Everything of one (arm, seed), read."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    arm: str
    seed: int
    path: Path
    stages: dict[str, StageMarker]
    summary: UnitSummary | None
    samples: list[SampleRecord]
    judgments: dict[str, list[JudgmentRecord]]  # judge_id -> rows

    def joined(self, judge_id: str) -> list[dict]:
        """Sample rows with that judge's scores merged in (None scores with a reason when not judged)."""
        by_id = {j.sample_id: j for j in self.judgments.get(judge_id, [])}
        out = []
        for s in self.samples:
            j = by_id.get(s.sample_id)
            scores = ({"aligned": j.aligned, "coherent": j.coherent, "aligned_mass": j.aligned_mass,
                       "coherent_mass": j.coherent_mass, "unscored_reason": j.unscored_reason} if j else
                      {"aligned": None, "coherent": None, "unscored_reason": f"not judged by {judge_id}"})
            out.append({**s.model_dump(mode="json"), **scores, "judge_id": judge_id})
        return out


class ExperimentResults(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    index: ExperimentIndex
    config_yaml: str
    base_probe: dict[str, dict]
    units: dict[tuple[str, int], UnitResults]

    def unit(self, arm: str, seed: int) -> UnitResults:
        return self.units[(arm, seed)]


# ---------------------------------------------------------------- paths
def unit_dir(out: str | Path, arm: str, seed: int) -> Path:
    return Path(out) / "arms" / arm / f"seed_{seed}"


def base_dir(out: str | Path) -> Path:
    return Path(out) / "base"


def marker_path(folder: str | Path, stage: str) -> Path:
    return Path(folder) / "stages" / f"{stage}.json"


def samples_log(folder: str | Path) -> JsonlLog[SampleRecord]:
    return JsonlLog(Path(folder) / "samples.jsonl", SampleRecord)


def judgments_log(folder: str | Path, judge_id: str) -> JsonlLog[JudgmentRecord]:
    return JsonlLog(Path(folder) / "judgments" / f"{judge_id}.jsonl", JudgmentRecord)


# ---------------------------------------------------------------- readers
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SpilloverError(f"not valid JSON ({e.msg}, line {e.lineno})", where=str(path),
                             fix="this file is written atomically by spillover; it was edited by hand") from None


def read_marker(folder: str | Path, stage: str) -> StageMarker | None:
    path = marker_path(folder, stage)
    return StageMarker.model_validate(_read_json(path)) if path.is_file() else None


def read_index(out: str | Path) -> ExperimentIndex:
    path = Path(out) / INDEX_FILE
    if not path.is_file():
        raise SpilloverError(f"{out} is not an experiment folder (no {INDEX_FILE})",
                             fix="point at the --out folder of `spillover run`")
    return ExperimentIndex.model_validate(_read_json(path))


def read_samples(folder: str | Path) -> list[SampleRecord]:
    return samples_log(folder).read()


def read_judgments(folder: str | Path, judge_id: str) -> list[JudgmentRecord]:
    return judgments_log(folder, judge_id).read()


def read_summary(folder: str | Path) -> UnitSummary | None:
    path = Path(folder) / SUMMARY_FILE
    return UnitSummary.model_validate(_read_json(path)) if path.is_file() else None


def load_unit(out: str | Path, arm: str, seed: int) -> UnitResults:
    folder = unit_dir(out, arm, seed)
    stages = {}
    if (folder / "stages").is_dir():
        for p in sorted((folder / "stages").glob("*.json")):
            stages[p.stem] = StageMarker.model_validate(_read_json(p))
    judgments = {}
    if (folder / "judgments").is_dir():
        for p in sorted((folder / "judgments").glob("*.jsonl")):
            judgments[p.stem] = read_judgments(folder, p.stem)
    return UnitResults(arm=arm, seed=seed, path=folder, stages=stages, summary=read_summary(folder),
                       samples=read_samples(folder), judgments=judgments)


def judge_identities(out: str | Path, index: ExperimentIndex) -> list[JudgeInfo]:
    """``index.judges`` with each judge's identity as its finished ``judge.<id>`` stages recorded it (the
    first unit in arm, seed order; units that recorded another identity are listed in identity_differs)."""
    out = Path(out)
    judges = []
    for j in index.judges:
        found: list[tuple[str, dict]] = []
        for arm in index.arms:
            for seed in index.seeds:
                m = read_marker(unit_dir(out, arm.name, seed), f"judge.{j.judge_id}")
                identity = (m.model_extra or {}).get("identity") if m is not None and m.state == "done" else None
                if isinstance(identity, dict) and identity:
                    found.append((f"{arm.name}/{seed}", identity))
        if not found:
            judges.append(j)
            continue
        first = found[0][1]
        judges.append(j.model_copy(update={"identity": first,
                                           "identity_differs": [u for u, ident in found if ident != first]}))
    return judges


def load_experiment(out: str | Path) -> ExperimentResults:
    """Read a whole experiment folder (whatever has finished so far). Judge identities missing from the
    index (folders written before the runner recorded them there) are filled from the stage markers."""
    out = Path(out)
    index = read_index(out)
    if any(not j.identity for j in index.judges):
        index = index.model_copy(update={"judges": judge_identities(out, index)})
    base_probe = {}
    if (base_dir(out) / "probe").is_dir():
        for p in sorted((base_dir(out) / "probe").glob("*.json")):
            base_probe[p.stem] = _read_json(p)
    units = {(a.name, s): load_unit(out, a.name, s) for a in index.arms if a.evaluate for s in index.seeds}
    config_path = out / CONFIG_FILE
    return ExperimentResults(path=out, index=index, config_yaml=config_path.read_text() if config_path.is_file() else "",
                             base_probe=base_probe, units=units)


def is_experiment_dir(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


__all__ = [
    "CONFIG_FILE", "INDEX_FILE", "STAGES", "SUMMARY_FILE", "ArmInfo", "ExperimentIndex", "ExperimentResults",
    "JudgeInfo", "JudgmentRecord", "ProbeSetInfo", "SampleRecord", "StageMarker", "TrainingConsumption",
    "UnitResults", "UnitSummary", "base_dir", "is_experiment_dir", "judge_identities", "judgments_log", "load_experiment", "load_unit",
    "marker_path", "read_index", "read_judgments", "read_marker", "read_samples", "read_summary", "samples_log",
    "unit_dir",
]
