"""The experiment file: one strict schema (`spillover run EXPERIMENT.yaml`).

An experiment is a base model, arms, seeds and one evaluation section. Each arm has a name, an
optional training recipe (``train: {method: sft|grpo, ...}`` -- the fields of ``spillover train sft``
/ ``train grpo`` except model, seed, device and dtype, which the experiment sets), an optional
``init_from`` (another arm, whose adapter of the same seed it continues -- the shared warm-up -- or
an adapter folder) and labels. Defenses and inoculation prompts are part of the recipe
(``train.defenses``). A ``grids`` entry crosses one arm template with axes of named overrides and
expands to one arm per combination, named ``<name>-<value>-<value>`` and labelled with each axis.
An arm (or a grid, or an axis value) may set ``evaluation: {in_domain: ...}``: its own in-domain
questions (each domain's arms answer that domain's questions), replacing the experiment's default.

Every section is a real pydantic model, so an unknown key anywhere is an error naming its YAML line.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, create_model, field_validator, model_serializer, model_validator

from spillover.config import StrictModel, deep_merge, format_validation_error
from spillover.errors import SpilloverError
from spillover.train._config import SFTConfig
from spillover.train._grpo_config import GRPOConfig

#: Fields the experiment sets for every arm (not part of a recipe).
EXPERIMENT_SET = ("model", "seed", "device", "dtype", "init_adapter")


def _recipe(name: str, config: type, method: str):
    fields = {k: (f.annotation, f) for k, f in config.model_fields.items() if k not in EXPERIMENT_SET}
    doc = f"`{method}` training recipe: every `spillover train {method}` setting except {', '.join(EXPERIMENT_SET)}."
    return create_model(name, __base__=StrictModel, __doc__=doc,
                        method=(Literal[method], Field(..., description=f"'{method}'")), **fields)


SFTRecipe = _recipe("SFTRecipe", SFTConfig, "sft")
GRPORecipe = _recipe("GRPORecipe", GRPOConfig, "grpo")
Recipe = Annotated[Union[SFTRecipe, GRPORecipe], Field(discriminator="method")]


def recipe_config(recipe, *, model: str, seed: int, device: str, dtype: str, init_adapter: str | None = None,
                  data_override: str | None = None):
    """The full SFTConfig / GRPOConfig of one arm and seed."""
    fields = recipe.model_dump(exclude={"method"})
    if data_override:
        fields["data" if recipe.method == "sft" else "prompts"] = data_override
    cls = SFTConfig if recipe.method == "sft" else GRPOConfig
    return cls(**fields, model=model, seed=seed, device=device, dtype=dtype, init_adapter=init_adapter)


class QuestionSetSpec(StrictModel):
    file: str = Field(..., description="Question file (Betley YAML or messages JSONL) or bundled:NAME.")
    question_ids: list[str] | None = Field(None, description="Ask only these question ids of THIS file (default: all); checked before training.")
    max_paraphrases: int | None = Field(None, ge=1, description="Only the first K paraphrases of each question.")
    samples_per_paraphrase: int | None = Field(None, ge=1, description="Overrides the file's samples_per_paraphrase.")


class ArmEvaluationSpec(StrictModel):
    """What an arm evaluates differently from the experiment's ``evaluation`` section."""

    in_domain: QuestionSetSpec | None = Field(None, description="This arm's in-domain questions (e.g. its training "
                                              "domain's set); replaces the experiment's evaluation.in_domain for this arm.")
    probe: list[str] = Field(default_factory=list, description="Contrast-pair sets this arm is probed on besides the "
                             "experiment's (e.g. its domain's in-domain pairs); the base model scores each once.")


class ArmSpec(StrictModel):
    """One arm: what to train (or not) and from where."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Unique arm name (letters, digits, . _ -); names its folder.")
    train: Recipe | None = Field(None, description="Training recipe ({method: sft|grpo, ...}); none = evaluate the base model (or init_from) as is.")
    init_from: str | None = Field(None, description="Start from another arm's adapter (same seed), e.g. a shared warm-up, or from an adapter folder.")
    n_items: int | None = Field(None, ge=1, description="Train on the first N items of the recipe's data/prompts only (sample matching).")
    labels: dict[str, str] = Field(default_factory=dict, description="Free labels for reports (e.g. {method: rl, domain: medical}).")
    evaluate: bool = Field(True, description="Sample, judge and probe this arm (false: e.g. a warm-up only used as init_from).")
    evaluation: ArmEvaluationSpec | None = Field(None, description="Per-arm evaluation overrides ({in_domain: {file: ...}}), "
                                                 "over the experiment's evaluation section.")

    @model_validator(mode="after")
    def _check(self):
        if self.n_items and not self.train:
            raise ValueError("n_items needs a train recipe")
        if self.evaluation is not None and (self.evaluation.in_domain is not None or self.evaluation.probe) \
                and not self.evaluate:
            raise ValueError("evaluation overrides are set but evaluate is false (the arm is never evaluated)")
        if self.train is not None:  # the method's own checks (e.g. GRPO's batch/group sizes), before anything runs
            try:
                recipe_config(self.train, model="embedded", seed=0, device="auto", dtype="auto")
            except ValidationError as e:
                raise ValueError(format_validation_error(e, "train").what) from None
        return self


#: What an axis value may override of its grid's template arm.
AXIS_KEYS = ("train", "init_from", "n_items", "labels", "evaluate", "evaluation")


class GridSpec(StrictModel):
    """Arms as a cross product: a template arm and axes of named overrides."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Prefix of the expanded arm names.")
    train: dict[str, Any] | None = Field(None, description="The template recipe (an arm's `train`), merged with each axis value's overrides.")
    init_from: str | None = Field(None, description="As an arm's init_from (an axis value may override it).")
    n_items: int | None = Field(None, ge=1, description="As an arm's n_items.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of every expanded arm (axis labels are added).")
    evaluate: bool = True
    evaluation: dict[str, Any] | None = Field(None, description="As an arm's evaluation ({in_domain: ...}); an axis value's "
                                              "evaluation is merged over it.")
    axes: dict[str, dict[str, dict[str, Any]]] = Field(..., min_length=1, description="axis -> {value name -> overrides "
                                                       "of the arm (train/init_from/n_items keys)}; arms = the product of all axes.")

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, axes):
        for axis, values in axes.items():
            if not values:
                raise ValueError(f"axis {axis!r} has no values")
            for value, overrides in values.items():
                bad = set(overrides or {}) - set(AXIS_KEYS)
                if bad:
                    raise ValueError(f"axis {axis!r} value {value!r}: unknown keys {sorted(bad)} (allowed: "
                                     f"{', '.join(AXIS_KEYS)})")
        return axes

    def expand(self) -> list[dict]:
        arms = []
        axes = list(self.axes.items())
        for combo in itertools.product(*[list(values.items()) for _, values in axes]):
            arm: dict[str, Any] = {"name": "-".join([self.name, *[value for value, _ in combo]]),
                                   "train": self.train, "init_from": self.init_from, "n_items": self.n_items,
                                   "labels": {**self.labels, **{axis: value for (axis, _), (value, _) in zip(axes, combo)}},
                                   "evaluate": self.evaluate, "evaluation": self.evaluation}
            for _, overrides in combo:
                arm = deep_merge(arm, dict(overrides or {}))
            arms.append({k: v for k, v in arm.items() if v is not None})
        return arms


class JudgeSpec(StrictModel):
    spec: str = Field("local", description="local | local:FILE | hf:MODEL | openai:MODEL")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL (openai:MODEL judges).")
    api_key_env: str = Field("OPENAI_API_KEY", description="NAME of the env var holding the key (never stored).")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data):
        return {"spec": data} if isinstance(data, str) else data


class SamplingSpec(StrictModel):
    max_new_tokens: int = Field(256, ge=1, description="Cap on generated tokens per answer.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature unless a question sets its own.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    batch_size: int = Field(32, ge=1, description="Answers generated (and stored) together.")
    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers generate in the unit's process | vllm: a "
                                          "vLLM engine process on the arm's merged model (`spillover engines install "
                                          "vllm` once; faster from about a hundred answers, README 'Fast sampling').")
    prefetch_engine: bool | None = Field(None, description="engine vllm: start the next arm's engine while this arm "
                                         "is judged and probed (an engine process alongside the judge and probe "
                                         "models). Default (null): on for a CUDA engine build, off for the CPU build, "
                                         "where the start competes for the same cores. Speed only: answers are the same.")
    engine_compiled: bool | None = Field(None, description="engine vllm: run vLLM's compiled graphs (torch.compile, "
                                         "CUDA graphs) instead of eager mode. Default (null): on for a CUDA engine "
                                         "build, off for the CPU build (there: 137 s to start instead of 17 s, for "
                                         "10-25% more throughput). Recorded per answer (sampler.enforce_eager); set, it is part of the "
                                         "sample stage's hash, since compiled kernels may round differently.")

    @model_serializer(mode="wrap")
    def _omit_default_engine(self, handler):
        data = handler(self)
        if isinstance(data, dict) and data.get("engine") == "hf":  # stage hashes of earlier experiments stay valid
            data.pop("engine")
        if isinstance(data, dict) and data.get("prefetch_engine") is None:
            data.pop("prefetch_engine", None)
        if isinstance(data, dict) and data.get("engine_compiled") is None:  # earlier experiments' hashes stay valid
            data.pop("engine_compiled", None)
        return data


class BenignEvalSpec(StrictModel):
    """One benign task scored on every evaluated arm (the learning a defense keeps; no judge)."""

    task: str = Field(..., description="Task spec, as `spillover eval --benign` takes it: opswap:tier=1:n=128, "
                      "countdown:tier=1, choice[:items=FILE], foqa:FILE[:n=N]; always the held-out test items.")
    max_new_tokens: int = Field(64, ge=1, description="Cap on generated tokens per answer.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (the default: accuracy of the model's best answer).")
    batch_size: int = Field(32, ge=1, description="Answers generated (and stored) together.")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data):
        return {"task": data} if isinstance(data, str) else data

    @field_validator("task")
    @classmethod
    def _parse(cls, task):
        from spillover.benign.tasks import parse_task_spec

        try:
            return parse_task_spec(task).text
        except SpilloverError as e:
            raise ValueError(f"{e.what} ({e.fix})") from None


class EvaluationSpec(StrictModel):
    general: QuestionSetSpec = Field(default_factory=lambda: QuestionSetSpec(file="bundled:general_questions"),
                                     description="General EM questions.")
    in_domain: QuestionSetSpec | None = Field(None, description="In-domain questions of the training task (optional).")
    judges: list[JudgeSpec] = Field(default_factory=lambda: [JudgeSpec()], min_length=1,
                                    description="The first is primary; more judges form a panel scoring the same samples.")
    judge_batch: int = Field(8, ge=1, description="Answers judged (and stored) together.")
    probe: list[str] = Field(["bundled:probe_general"], description="Contrast-pair files for the judge-free probe (base model scored once).")
    probe_batch: int = Field(16, ge=1, description="Sequences per probe forward pass.")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="How answers are sampled.")
    benign: list[BenignEvalSpec] = Field(default_factory=list, description="Benign tasks scored on every evaluated arm "
                                         "(task spec strings or {task, max_new_tokens, temperature, batch_size}): "
                                         "accuracy or F1 with 95% CI, the report's benign column and Pareto axis.")

    @field_validator("benign")
    @classmethod
    def _unique_benign(cls, tasks):
        texts = [t.task for t in tasks]
        if len(set(texts)) != len(texts):
            raise ValueError(f"benign tasks repeat: {texts}")
        return tasks


class SlurmSpec(StrictModel):
    partition: str | None = Field(None, description="Slurm partition.")
    account: str | None = Field(None, description="Slurm account.")
    timeout_min: int = Field(240, ge=1, description="Wall-clock limit per (arm, seed) job, minutes.")
    gpus_per_node: int = Field(1, ge=0, description="GPUs per job.")
    cpus_per_task: int = Field(8, ge=1, description="CPU cores per job.")
    mem_gb: int = Field(64, ge=1, description="Memory per job, GiB.")
    array_parallelism: int = Field(16, ge=1, description="Jobs of one array running at once.")
    additional: dict[str, Any] = Field(default_factory=dict, description="Extra sbatch parameters (submitit slurm_additional_parameters).")


class ExecutorSpec(StrictModel):
    kind: Literal["local", "slurm"] = Field("local", description="local: one stage at a time here; slurm: one job per (arm, seed) via submitit.")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec, description="Slurm resources (kind: slurm).")


class ExperimentConfig(StrictModel):
    """An experiment: arms x seeds, each trained (optional), sampled, judged, probed and summarised."""

    name: str = Field("experiment", description="Shown in reports.")
    model: str = Field("embedded", description="Base model of every arm: 'embedded', a local HF folder or a hub id.")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16")
    seeds: list[int] = Field([0], min_length=1, description="Every arm runs once per seed (training and sampling).")
    arms: list[ArmSpec] = Field(default_factory=list, description="Named arms.")
    grids: list[GridSpec] = Field(default_factory=list, description="Arm templates crossed with axes of values.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="How every arm is evaluated.")
    grader: JudgeSpec | None = Field(None, description="The judge behind grader:* RL rewards (openai:MODEL or hf:MODEL); "
                                     "required when an arm uses one.")
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec, description="Where the (arm, seed) units run.")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        return seeds

    @model_validator(mode="after")
    def _check_arms(self):
        expanded = self.all_arms()
        if not expanded:
            raise ValueError("no arms: add `arms:` (e.g. - name: base) or `grids:`")
        names = [a.name for a in expanded]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arm names repeat: {dupes} (grid arms are named <grid>-<value>-...)")
        by_name = {a.name: a for a in expanded}
        for a in expanded:
            if a.init_from and a.init_from not in by_name and not _looks_like_path(a.init_from):
                from spillover.errors import did_you_mean

                raise ValueError(f"arm {a.name!r}: init_from {a.init_from!r} is neither an arm nor an adapter "
                                 f"folder.{did_you_mean(a.init_from, list(by_name))}")
        for a in expanded:  # cycles
            seen, cur = [a.name], a
            while cur.init_from in by_name:
                cur = by_name[cur.init_from]
                if cur.name in seen:
                    raise ValueError(f"init_from cycle: {' -> '.join(seen + [cur.name])}")
                seen.append(cur.name)
        for a in expanded:
            if a.init_from in by_name and by_name[a.init_from].train is None:
                raise ValueError(f"arm {a.name!r}: init_from {a.init_from!r} names an arm that does not train "
                                 "(it has no adapter to continue)")
        return self

    def all_arms(self) -> list[ArmSpec]:
        """Named arms, then every grid's arms, in order."""
        arms = list(self.arms)
        for gi, grid in enumerate(self.grids):
            for raw in grid.expand():
                try:
                    arms.append(ArmSpec.model_validate(raw))
                except ValidationError as e:
                    raise ValueError(f"grids[{gi}] arm {raw.get('name')!r}: {format_validation_error(e, 'grid').what}") from None
        return arms

    def evaluation_for(self, arm: ArmSpec) -> EvaluationSpec:
        """The evaluation section this arm runs: the experiment's, with the arm's overrides in place."""
        over, update = arm.evaluation, {}
        if over is not None and over.in_domain is not None:
            update["in_domain"] = over.in_domain
        if over is not None and over.probe:
            update["probe"] = list(dict.fromkeys([*self.evaluation.probe, *over.probe]))
        return self.evaluation.model_copy(update=update) if update else self.evaluation

    def probe_sets(self) -> list[str]:
        """Every contrast-pair set some evaluated arm is probed on (the base model scores each once)."""
        refs = list(self.evaluation.probe)
        for a in self.all_arms():
            if a.evaluate:
                refs += self.evaluation_for(a).probe
        return list(dict.fromkeys(refs))

    def arm(self, name: str) -> ArmSpec:
        return next(a for a in self.all_arms() if a.name == name)

    def train_order(self) -> list[ArmSpec]:
        """Arms ordered so an arm comes after the arm it starts from."""
        arms = self.all_arms()
        by_name = {a.name: a for a in arms}
        ordered, placed = [], set()

        def place(a):
            if a.name in placed:
                return
            if a.init_from in by_name:
                place(by_name[a.init_from])
            placed.add(a.name)
            ordered.append(a)

        for a in arms:
            place(a)
        return ordered


def _looks_like_path(ref: str) -> bool:
    return "/" in ref or Path(ref).exists()


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment file; a comparison file (``data`` + ``grpo`` keys, as `spillover compare` takes)
    is read as the experiment its preset builds."""
    from spillover.config import load_yaml_mapping, validate_config

    if not Path(path).is_file():
        raise SpilloverError(f"experiment file not found: {path}", fix="check the path (examples/ has some)")
    data, lines = load_yaml_mapping(path)
    for key, line in list(lines.items()):  # pydantic puts the union's tag (sft/grpo) after `train` in error paths
        for i, part in enumerate(key):
            if part == "train":
                for tag in ("sft", "grpo"):
                    lines.setdefault(key[:i + 1] + (tag,) + key[i + 1:], line)
    if "grpo" in data and "arms" not in data and "grids" not in data:
        from spillover.experiment.compare import CompareConfig, comparison_experiment

        return comparison_experiment(validate_config(CompareConfig, data, str(path), lines))
    return validate_config(ExperimentConfig, data, str(path), lines)
