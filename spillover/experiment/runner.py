"""`spillover run`: check an experiment before anything trains, refuse a changed config for an existing
folder (with a diff), then run every (arm, seed) unit through an executor; `spillover status`; and
re-judging saved samples (`spillover judge rerun`).

Order: the base model's probe first (once), then units in waves so an arm runs after the arm it
starts from (``init_from``). Units of one wave are independent: the local executor runs them one
after another, the Slurm executor as one array job.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
from pathlib import Path

from spillover import __version__
from spillover._io import atomic_write_json, atomic_write_text, sha256_json
from spillover._run import environment_info, now_iso
from spillover.config import dump_yaml
from spillover.errors import SpilloverError, UnknownName
from spillover.experiment.results import (
    CONFIG_FILE,
    INDEX_FILE,
    STAGES,
    ArmInfo,
    ExperimentIndex,
    JudgeInfo,
    ProbeSetInfo,
    base_dir,
    judge_identities,
    marker_path,
    read_index,
    read_marker,
    unit_dir,
)
from spillover.experiment.spec import ExperimentConfig, JudgeSpec
from spillover.experiment.stages import judge_id, own_hashes, question_sets


# ---------------------------------------------------------------- checks before anything trains
def preflight(cfg: ExperimentConfig, *, strict: bool = True) -> list[str]:
    """Everything that can be checked without training: data files, adapters, question selections
    (each applied to the set it names), probe files, rewards, judges and grader (keys, URLs). ``strict``
    raises the first problem; otherwise (``--dry-run``) local-file, key and network problems are returned
    as warnings (a GPU file may name data or servers this machine does not have); a misspelt name
    (dataset, bundled file) raises in both."""
    from spillover.data import resolve_data_path
    from spillover.evaluate.probe import load_pairs

    warnings: list[str] = []

    def soft(check, *args):
        try:
            check(*args)
        except SpilloverError as e:
            if strict or isinstance(e, UnknownName):  # a misspelt name is wrong on every machine
                raise
            warnings.append(e.render().replace("\n", " "))

    def data_ref(ref: str, where: str):
        """A data reference exists before anything trains. A ``hub:`` dataset is fetched now in a real run (a
        download, gated or offline error comes before hours of training), only looked up in ``--dry-run``."""
        from spillover.data._registry import all_entries, cached_meta, get_entry

        try:
            name = ref.removeprefix("hub:")
            if not strict and (ref.startswith("hub:") or (name in all_entries() and not Path(ref).exists())):
                get_entry(name)  # an unknown name says "did you mean"
                if cached_meta(name) is None:
                    warnings.append(f"{where}: {ref} is not cached on this machine; the run downloads it before "
                                    f"training (or fetch it now: spillover data fetch {name})")
                return
            resolve_data_path(ref)
        except SpilloverError as e:
            e.where = f"{where}: {e.where}" if e.where else where
            raise

    names = {a.name for a in cfg.all_arms()}
    uses_grader = False
    for arm in cfg.all_arms():
        where = f"arm {arm.name!r}"
        if arm.train is not None:
            key = "train.data" if arm.train.method == "sft" else "train.prompts"
            soft(data_ref, arm.train.data if arm.train.method == "sft" else arm.train.prompts, f"{where}, {key}")
            if arm.train.method == "grpo":
                from spillover.rewards import get_reward  # registered names; module:function is imported at training

                for r in arm.train.rewards:
                    if ":" not in r.name or r.name.startswith("grader:"):
                        get_reward(r.name)
                    uses_grader |= r.name.startswith("grader:")
            for d in arm.train.defenses:
                from spillover.defenses import get_defense

                fields = get_defense(d.name).Params.model_fields
                for key, value in d.params.items():
                    declared = key in fields and (fields[key].json_schema_extra or {}).get("data_ref")
                    if isinstance(value, str) and (declared or value.startswith(("bundled:", "hub:", "benign:"))):
                        soft(data_ref, value, f"{where}, defense {d.name!r}, {key}")
        if arm.init_from and arm.init_from not in names:
            def adapter_exists(a=arm, w=where):
                if not (Path(a.init_from) / "adapter_config.json").is_file():
                    raise SpilloverError(f"{w}: init_from {a.init_from!r} is not an arm and not an adapter folder "
                                         "(no adapter_config.json)", fix="name an arm of this experiment or a RUN/adapter folder")
            soft(adapter_exists)
    soft(question_sets, cfg)
    checked = set()
    for arm in cfg.all_arms():  # each arm's own in-domain set (file exists, question_ids resolve), once per distinct set
        if arm.evaluate and arm.evaluation is not None and arm.evaluation.in_domain is not None:
            key = arm.evaluation.in_domain.model_dump_json()
            if key not in checked:
                checked.add(key)
                soft(lambda a=arm: question_sets(cfg, a)["in_domain"])
    for ref in cfg.probe_sets():
        soft(load_pairs, ref)
    for b in cfg.evaluation.benign:  # a benign task's file (FoQA, choice items) is read before anything trains
        from spillover.benign.tasks import eval_items, parse_task_spec

        soft(lambda b=b: eval_items(parse_task_spec(b.task, where="evaluation.benign")))
    ids = [judge_id(j) for j in cfg.evaluation.judges]
    if len(set(ids)) != len(ids):
        raise SpilloverError(f"judges repeat: {ids}", fix="list each judge once")
    for j in cfg.evaluation.judges:
        soft(check_judge, j)
    if uses_grader:
        if cfg.grader is None:
            raise SpilloverError("an arm uses a grader:* reward but the experiment sets no grader",
                                 fix="add `grader: {spec: openai:MODEL, base_url: ...}` (or hf:MODEL) at the top level")
        if cfg.grader.spec.split(":")[0] not in ("openai", "hf", "py"):
            raise SpilloverError(f"grader {cfg.grader.spec!r} cannot grade rubric rewards",
                                 fix="use openai:MODEL (with base_url) or hf:MODEL")
        soft(check_judge, cfg.grader)
    return warnings


def check_judge(j: JudgeSpec) -> None:
    """A judge that cannot be built fails here, before training: unknown kind, missing key, unreachable URL."""
    kind, _, rest = j.spec.partition(":")
    fix_spec = "use local, local:FILE, hf:MODEL, openai:MODEL (with base_url) or py:MODULE:FUNCTION"
    if kind == "local":
        if rest and not Path(rest).is_file():
            raise SpilloverError(f"judge {j.spec!r}: classifier file not found", fix="train one with `spillover judge train-activation`")
    elif kind == "hf":
        if not rest:
            raise SpilloverError(f"judge {j.spec!r} names no model", fix=fix_spec)
    elif kind == "openai":
        if not rest:
            raise SpilloverError(f"judge {j.spec!r} names no model", fix=fix_spec)
        if not os.environ.get(j.api_key_env):
            raise SpilloverError(f"judge {j.spec!r}: the env var {j.api_key_env} holding its API key is not set",
                                 fix=f"export {j.api_key_env}=... (any value for a local server without auth), "
                                     "or set api_key_env to the variable you use")
        _check_reachable(j.base_url or "https://api.openai.com/v1", j.spec)
    elif kind == "py":
        import importlib

        module, _, attr = rest.rpartition(":")
        try:
            getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise SpilloverError(f"judge {j.spec!r} cannot be imported: {e}", fix=fix_spec) from None
    else:
        raise SpilloverError(f"unknown judge spec {j.spec!r}", fix=fix_spec)


def _check_reachable(url: str, spec: str) -> None:
    from urllib.parse import urlparse

    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=5).close()
    except OSError as e:
        raise SpilloverError(f"judge {spec!r}: {url} is unreachable ({e})",
                             fix="start the server or fix base_url; nothing was trained") from None


# ---------------------------------------------------------------- the experiment folder
def _index(cfg: ExperimentConfig, old: ExperimentIndex | None) -> ExperimentIndex:
    names = {a.name for a in cfg.all_arms()}
    arms = [ArmInfo(name=a.name, method=a.train.method if a.train else None, init_from=a.init_from,
                    init_kind=None if not a.init_from else ("arm" if a.init_from in names else "adapter"),
                    labels=dict(a.labels), train=a.train.model_dump(mode="json") if a.train else None,
                    n_items=a.n_items, evaluate=a.evaluate,
                    in_domain=cfg.evaluation_for(a).in_domain.model_dump(mode="json")
                    if a.evaluate and cfg.evaluation_for(a).in_domain else None) for a in cfg.all_arms()]
    judges = [JudgeInfo(judge_id=judge_id(j), spec=j.spec, base_url=j.base_url, primary=i == 0)
              for i, j in enumerate(cfg.evaluation.judges)]
    if old:  # judges added later by `judge rerun` stay listed; identities recorded earlier are kept
        recorded = {j.judge_id: j.identity for j in old.judges}
        judges = [j.model_copy(update={"identity": recorded.get(j.judge_id)}) for j in judges]
        known = {j.judge_id for j in judges}
        judges += [j.model_copy(update={"primary": False}) for j in old.judges if j.judge_id not in known]
    ev = cfg.evaluation
    qsets = {"general": ev.general.model_dump(mode="json")}
    if ev.in_domain:
        qsets["in_domain"] = ev.in_domain.model_dump(mode="json")
    from spillover.evaluate.run import probe_key

    return ExperimentIndex(name=cfg.name, spillover_version=__version__, created=old.created if old else now_iso(),
                           config_sha256=sha256_json(cfg.model_dump(mode="json")), model=cfg.model, seeds=list(cfg.seeds),
                           arms=arms, judges=judges, probe_sets=[ProbeSetInfo(key=probe_key(r), ref=r) for r in cfg.probe_sets()],
                           question_sets=qsets, sampling=ev.sampling.model_dump(mode="json"), env=environment_info())


def changed_stages(cfg: ExperimentConfig, out: Path) -> list[tuple[str, int, str]]:
    """(arm, seed, stage) whose finished outputs were made with other settings than ``cfg`` says now."""
    changed = []
    for arm in cfg.all_arms():
        for seed in cfg.seeds:
            folder = unit_dir(out, arm.name, seed)
            for stage, own in own_hashes(cfg, arm, seed).items():
                m = read_marker(folder, stage)
                if m is not None and m.state == "done" and m.own_hash != own:
                    changed.append((arm.name, seed, stage))
    return changed


def _config_diff(old: str, new: str) -> str:
    return "\n".join(l for l in difflib.unified_diff(old.splitlines(), new.splitlines(), "before", "now", lineterm="", n=1)
                     if not l.startswith(("---", "+++")))


def prepare(cfg: ExperimentConfig, out: str | Path, *, force_stages: tuple[str, ...] = ()) -> Path:
    """Create or reopen ``out`` for ``cfg``; refuse settings changes of finished stages unless forced."""
    out = Path(out)
    bad = [s for s in force_stages if s not in STAGES]
    if bad:
        raise SpilloverError(f"unknown stage {bad[0]!r}", fix=f"use one of: {', '.join(STAGES)}")
    new_yaml = dump_yaml(cfg)
    old = None
    if (out / INDEX_FILE).is_file():
        old = read_index(out)
        changed = [c for c in changed_stages(cfg, out) if c[2].split(".")[0] not in force_stages]
        if changed:
            old_yaml = (out / CONFIG_FILE).read_text() if (out / CONFIG_FILE).is_file() else ""
            shown = ", ".join(f"{a}/seed {s}/{st}" for a, s, st in changed[:6]) + (" ..." if len(changed) > 6 else "")
            stages = sorted({c[2].split(".")[0] for c in changed})
            raise SpilloverError(f"{out} holds results made with another config; finished stages that would change: "
                                 f"{shown}\n{_config_diff(old_yaml, new_yaml)}",
                                 fix=f"use another --out to keep both, or redo on purpose with "
                                     f"{' '.join('--force-stage ' + s for s in stages)}")
    elif out.exists() and any(out.iterdir()):
        raise SpilloverError(f"{out} is not empty and holds no experiment", fix="choose a new --out folder")
    out.mkdir(parents=True, exist_ok=True)
    if force_stages:
        _forget(cfg, out, force_stages)
    atomic_write_text(out / CONFIG_FILE, new_yaml)
    atomic_write_json(out / INDEX_FILE, _index(cfg, old).model_dump(mode="json"))
    return out


def _forget(cfg: ExperimentConfig, out: Path, stages: tuple[str, ...]) -> None:
    """Drop the done-markers of forced stages (their outputs are replaced when the stage reruns)."""
    for arm in cfg.all_arms():
        for seed in cfg.seeds:
            folder = unit_dir(out, arm.name, seed)
            for stage in own_hashes(cfg, arm, seed):
                if stage.split(".")[0] in stages:
                    _invalidate(folder, stage)
    if "probe" in stages:
        _invalidate(base_dir(out), "probe")


def _invalidate(folder: Path, stage: str) -> None:
    m = read_marker(folder, stage)
    if m is not None:
        atomic_write_json(marker_path(folder, stage), {**m.model_dump(mode="json", exclude_none=True),
                                                       "state": "failed", "inputs_hash": "forced",
                                                       "error": "forced to run again (--force-stage)"})


# ---------------------------------------------------------------- plan and run
@dataclasses.dataclass(frozen=True)
class Unit:
    arm: str
    seed: int


def waves(cfg: ExperimentConfig) -> list[list[Unit]]:
    """Units grouped so every unit comes after the units whose adapters it starts from."""
    arms = cfg.all_arms()
    by_name = {a.name: a for a in arms}
    depth = {}

    def d(a):
        if a.name not in depth:
            depth[a.name] = 0 if a.init_from not in by_name else d(by_name[a.init_from]) + 1
        return depth[a.name]

    for a in arms:
        d(a)
    return [[Unit(a.name, s) for a in arms if depth[a.name] == k for s in cfg.seeds] for k in range(max(depth.values()) + 1)]


def plan_rows(cfg: ExperimentConfig) -> list[dict]:
    """One row per arm: what it runs, for the dry-run table (keys are its columns, :data:`PLAN_COLUMNS`)."""
    rows = []
    for a in cfg.train_order():
        t = a.train
        if t is None:
            what, data, defs = "no training", "-", "-"
        else:
            data = (t.data if t.method == "sft" else t.prompts) + (f" (first {a.n_items})" if a.n_items else "")
            steps = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs:g} epoch(s)"
            extra = f", rewards {', '.join(r.name for r in t.rewards)}, {t.num_generations} gen" if t.method == "grpo" else ""
            what = f"{t.method}, {steps}, lr {t.lr:g}{extra}"
            defs = ", ".join(d.name for d in t.defenses) or "none"
        rows.append({"arm": a.name, "init_from": a.init_from or "-", "train": what, "data": data, "defenses": defs,
                     "evaluate": "yes" if a.evaluate else "no", "labels": ", ".join(f"{k}={v}" for k, v in a.labels.items()),
                     "in_domain": _in_domain_text(cfg, a)})
    return rows


#: The dry-run table's columns after ``arm``; a column whose value is the same for every arm is printed once below
#: the table instead, so the table stays readable in an 80-column terminal.
PLAN_COLUMNS = ("init_from", "train", "data", "defenses", "evaluate", "labels", "in_domain")


def _in_domain_text(cfg: ExperimentConfig, arm) -> str:
    """The in-domain set an arm answers and how many answers, for the dry-run table."""
    qs = cfg.evaluation_for(arm).in_domain
    probe = f"probe + {', '.join(arm.evaluation.probe)}" if arm.evaluate and arm.evaluation and arm.evaluation.probe else ""
    if not arm.evaluate or qs is None:
        return probe or "-"
    own = "" if arm.evaluation is None or arm.evaluation.in_domain is None else " (arm's own)"
    try:
        n = f"{len(question_sets(cfg, arm)['in_domain'][1])} answers"
    except SpilloverError:
        n = "not loadable here"
    return f"{qs.file}{own}: {n}" + (f"; {probe}" if probe else "")


def print_plan(cfg: ExperimentConfig, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    ev = cfg.evaluation
    table = Table(title=f"{cfg.name}: {len(cfg.all_arms())} arms x {len(cfg.seeds)} seeds {cfg.seeds} on {cfg.model}")
    table.add_column("arm", no_wrap=True, min_width=max(len(a.name) for a in cfg.all_arms()))
    rows = plan_rows(cfg)
    varying = [c for c in PLAN_COLUMNS if len(rows) == 1 or len({r[c] for r in rows}) > 1]
    for col in varying:
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["arm"], *(r[c] for c in varying))
    console.print(table)
    same = [f"{c} {rows[0][c]}" for c in PLAN_COLUMNS if c not in varying and rows[0][c] not in ("-", "")]
    if same:
        console.print(f"every arm: {'; '.join(same)}")
    try:
        counts = ", ".join(f"{name}: {len(reqs)} answers" for name, (_, reqs) in question_sets(cfg).items())
    except SpilloverError as e:
        counts = f"questions not loadable here ({e.what.splitlines()[0]})"
    extra = [r for r in cfg.probe_sets() if r not in ev.probe]
    if any(a.evaluation is not None and a.evaluation.in_domain is not None for a in cfg.all_arms()):
        counts += (" (in_domain: the default; " if ev.in_domain else "; in_domain: ") + "arms with their own set show it in the table"
        counts += ")" if ev.in_domain else ""
    for b in ev.benign:
        from spillover.benign.tasks import eval_items, parse_task_spec

        try:
            n = f"{len(eval_items(parse_task_spec(b.task)))} held-out items"
        except SpilloverError as e:
            n = f"not loadable here: {e.what.splitlines()[0]}"
        counts += f"; benign {b.task}: {n}"
    console.print(f"per evaluated arm and seed: {counts}; judges: {', '.join(j.spec for j in ev.judges)} "
                  f"(first is primary); probe: {', '.join(ev.probe) or 'none'}"
                  f"{' + arms own: ' + ', '.join(extra) if extra else ''} (base model scored once)")


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, executor=None, force_stages: tuple[str, ...] = ()) -> Path:
    """Check, prepare and run (or resume) the whole experiment; returns ``out``."""
    from spillover.experiment.executors import LocalExecutor, executor_for

    preflight(cfg)
    out = prepare(cfg, out, force_stages=force_stages)
    executor = executor or executor_for(cfg, out)
    if cfg.probe_sets():
        executor.run_base(out)
    failures = []
    for wave in waves(cfg):
        failures += executor.run_units(out, wave)
        if failures and not isinstance(executor, LocalExecutor):
            break
    record_judge_identities(out)
    if failures:
        lines = "\n".join(f"  {u.arm} seed {u.seed}: {err}" for u, err in failures)
        raise SpilloverError(f"{len(failures)} unit(s) failed:\n{lines}",
                             fix=f"see `spillover status {out}`; fix the cause and rerun the same command (finished stages are kept)")
    return out


def record_judge_identities(out: Path) -> None:
    """Write into ``experiment.json`` the identity of each judge as its finished stages recorded it (this
    process is the only writer of the index: units, local or Slurm jobs, only write their own markers)."""
    index = read_index(out)
    judges = judge_identities(out, index)
    if judges != index.judges:
        atomic_write_json(out / INDEX_FILE, index.model_copy(update={"judges": judges}).model_dump(mode="json"))


# ---------------------------------------------------------------- status
def _alive(pid: int | None, host: str | None) -> bool:
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stage_state(marker) -> tuple[str, str]:
    """(state, detail): done | running | failed | interrupted | to do."""
    if marker is None:
        return "to do", ""
    if marker.state == "done":
        return "done", f"{marker.seconds:.0f} s" if marker.seconds is not None else ""
    if marker.state == "failed":
        return "failed", marker.error or ""
    if _alive(marker.pid, marker.host):
        return "running", f"since {marker.started}"
    return "interrupted", "rerun to resume"


def experiment_status(out: str | Path) -> list[dict]:
    """One row per (arm, seed): each stage's state and detail (judge stages merged into 'judge')."""
    from spillover.experiment.stages import load_saved_config

    out = Path(out)
    index = read_index(out)
    cfg = load_saved_config(out)
    rows = []
    for arm in cfg.all_arms():
        for seed in cfg.seeds:
            folder = unit_dir(out, arm.name, seed)
            row = {"arm": arm.name, "seed": seed}
            hashes = own_hashes(cfg, arm, seed)
            for stage in STAGES:
                names = [s for s in hashes if s.split(".")[0] == stage]
                if stage == "judge":
                    names += [f"judge.{j.judge_id}" for j in index.judges if f"judge.{j.judge_id}" not in names
                              and marker_path(folder, f"judge.{j.judge_id}").is_file()]
                if not names:
                    row[stage] = ("-", "")
                    continue
                states = [(n, *stage_state(read_marker(folder, n))) for n in names]
                worst = next((s for s in ("failed", "running", "interrupted", "to do") if any(x[1] == s for x in states)), "done")
                named = len(names) > 1  # several judges: each detail says whose it is
                detail = "; ".join(f"{n.split('.', 1)[1] + ': ' if named and '.' in n else ''}{d}"
                                   for n, s, d in states if s == worst and d)
                row[stage] = (worst, detail)
            rows.append(row)
    return rows


# ---------------------------------------------------------------- judge rerun
def rerun_judge(out: str | Path, judge: JudgeSpec, *, executor=None) -> str:
    """Judge every saved sample of the experiment with another judge (no resampling); returns its id."""
    from spillover.experiment.executors import LocalExecutor
    from spillover.experiment.stages import load_saved_config

    out = Path(out)
    index = read_index(out)
    cfg = load_saved_config(out)
    check_judge(judge)
    jid = judge_id(judge)
    if jid not in {j.judge_id for j in index.judges}:
        index.judges.append(JudgeInfo(judge_id=jid, spec=judge.spec, base_url=judge.base_url, primary=False,
                                      source="judge rerun"))
        atomic_write_json(out / INDEX_FILE, index.model_dump(mode="json"))
    units = [Unit(a.name, s) for a in cfg.all_arms() if a.evaluate for s in cfg.seeds
             if (read_marker(unit_dir(out, a.name, s), "sample") or _Missing).state == "done"]
    if not units:
        raise SpilloverError(f"{out} has no finished samples to judge", fix=f"run the experiment first (`spillover run ... --out {out}`)")
    failures = (executor or LocalExecutor()).run_units(out, units, judges=[judge])
    record_judge_identities(out)
    if failures:
        raise SpilloverError(f"re-judging failed for {len(failures)} unit(s): {failures[0][1]}",
                             fix="fix the cause and rerun; judged samples are kept")
    return jid


class _Missing:
    state = None
