"""One engine per merged model across stages and units, and the next engine started ahead, with a fake
vLLM worker (tests/_fake_vllm_worker.py: the real JSON-lines protocol, answers from each row's seed) on
a tiny model: reuse, a new model's engine replacing the old one, prefetching, answers independent of
reuse, and no worker left after success, an error inside a stage, KeyboardInterrupt and SIGINT."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from _procs import alive, worker_pids
from spillover.engines import EngineProcess, live_engines
from spillover.evaluate.sampling import SampleRow, SamplingParams
from spillover.judge._spec import EvalJudge, JudgeScore, Judgment

WORKER = Path(__file__).with_name("_fake_vllm_worker.py")


class FakeLauncher:
    """What :data:`spillover.evaluate.engine.LAUNCHER` builds, starting the fake worker; ``fail_first``
    makes the first process exit before it is ready."""

    def __init__(self, root: Path, *, device="cpu", ready_delay=0.0, generate_delay=0.0, fail_first=False):
        self.root, self.device = root, device
        self.work_dir = root / "merged"
        self.events = root / "events.log"
        self.ready_delay, self.generate_delay, self.fail_first = ready_delay, generate_delay, fail_first

    def __call__(self, folder, *, dtype, max_num_seqs, max_model_len, compiled=False):
        argv = [sys.executable, str(WORKER), "--model", str(folder), "--dtype", dtype, "--max-num-seqs", str(max_num_seqs),
                "--owner", str(os.getpid()), "--events", str(self.events), "--ready-delay", str(self.ready_delay),
                "--generate-delay", str(self.generate_delay)] + (["--compile"] if compiled else [])
        if self.fail_first:
            self.fail_first = False
            argv[1:2] = ["-c", "import sys; sys.exit(3)"]
        return EngineProcess(argv, env=dict(os.environ), log=self.root / "worker.log", name="vllm", start_timeout=60)

    def lines(self, what: str) -> list[str]:
        if not self.events.is_file():
            return []
        return [line for line in self.events.read_text().splitlines() if line.split()[2] == what]


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    from spillover.evaluate import engine

    fake = FakeLauncher(tmp_path)
    monkeypatch.setattr(engine, "LAUNCHER", lambda: fake)
    return fake


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA on the tiny model with random B (it changes the weights, so the merged model differs)."""
    from spillover.models import LoraSpec, apply_lora, load_model, save_adapter

    model, _, _ = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    peft = apply_lora(model, LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    return save_adapter(peft, tmp_path_factory.mktemp("adapter") / "adapter", base_model=str(tiny_model_dir))


def _fake_workers(owner: int) -> list[int]:
    """Live fake workers whose --owner is ``owner``."""
    return worker_pids("_fake_vllm_worker.py", owner)


def _no_workers_left(owner: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while _fake_workers(owner) and time.monotonic() < end:
        time.sleep(0.05)
    return not _fake_workers(owner)


ROWS = [SampleRow([{"role": "user", "content": q}], i) for q in ("Hello there", "What is 2+2?") for i in range(2)]
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=5, seed=7)


# ---------------------------------------------------------------- the pool
def test_one_engine_per_model_reused_and_replaced(launcher, tiny_model_dir, adapter_dir):
    from spillover.evaluate.engine import EnginePool

    model = str(tiny_model_dir)
    with EnginePool() as pool:
        first = pool.sampler(model, batch_size=4)
        answers = [c.text for c in first.generate_rows(ROWS, PARAMS)]
        first.close()  # a pooled sampler's close leaves the engine running
        again = pool.sampler(model, batch_size=4)
        assert again.engine is not None and again.engine.alive()
        assert [c.text for c in again.generate_rows(ROWS, PARAMS)] == answers
        assert len(launcher.lines("launch")) == 1 and len(launcher.lines("reset")) == 1  # reused, cache emptied
        assert (first.engine_start["how"], again.engine_start["how"]) == ("started", "reused")
        assert again.identity()["backend"] == "vllm" and again.identity()["batch_size"] == 4

        wider = pool.sampler(model, batch_size=8)  # other batch settings: another engine
        assert len(launcher.lines("launch")) == 2
        base_pid = again.engine.pid
        pool.close_except({pool.key(model, None, batch_size=8)})
        assert not alive(base_pid) and wider.engine.alive() and len(pool.engines) == 1

        merged = pool.sampler(None, str(adapter_dir), batch_size=4)  # the adapter's recorded base
        merged_dir = merged._tmp
        assert merged_dir.is_dir() and merged.adapter == str(adapter_dir)
        assert [c.text for c in merged.generate_rows(ROWS, PARAMS)] != answers  # another model answers otherwise
        pool.close_except({pool.key(model, None, batch_size=4)})  # the base is wanted next: the adapter's stops
        assert not merged_dir.exists() and not pool.engines
    assert _no_workers_left(os.getpid()) and not live_engines()

    with EnginePool() as fresh:  # a fresh engine on the same model gives the same answers
        assert [c.text for c in fresh.sampler(model, batch_size=4).generate_rows(ROWS, PARAMS)] == answers
    assert _no_workers_left(os.getpid())


def test_compiled_engines_are_other_engines_and_cuda_builds_compile_by_default(launcher, tiny_model_dir):
    from spillover.evaluate.engine import EnginePool, engine_compiled

    assert (engine_compiled(None, "cuda"), engine_compiled(None, "cpu")) == (True, False)
    assert (engine_compiled(False, "cuda"), engine_compiled(True, "cpu")) == (False, True)
    model = str(tiny_model_dir)
    with EnginePool() as pool:
        eager = pool.sampler(model, batch_size=4)  # CPU build, default: eager
        assert eager.identity()["enforce_eager"] is True and pool.key(model, None, batch_size=4).compiled is False
        assert pool.key(model, None, batch_size=4, compiled=False) == pool.key(model, None, batch_size=4)
        compiled = pool.sampler(model, batch_size=4, compiled=True)
        assert compiled.identity()["enforce_eager"] is False and len(launcher.lines("launch")) == 2
        assert pool.sampler(model, batch_size=4, compiled=True).engine_start["how"] == "reused"
        launcher.device = "cuda"  # a CUDA build compiles unless told otherwise
        assert pool.key(model, None, batch_size=4).compiled is True
    assert _no_workers_left(os.getpid())


def test_an_adapter_retrained_in_place_is_another_model(launcher, tiny_model_dir, adapter_dir, tmp_path):
    import shutil

    from spillover.evaluate.engine import EnginePool

    moved = Path(shutil.copytree(adapter_dir, tmp_path / "adapter"))
    pool = EnginePool()
    before = pool.key(None, str(moved))
    assert before == pool.key(str(tiny_model_dir), str(moved)) and before.model == str(tiny_model_dir.resolve())
    weights = next(moved.glob("adapter_model.*"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert pool.key(None, str(moved)) != before
    assert pool.key(None, str(moved), dtype="bfloat16") != pool.key(None, str(moved))


def test_a_sampler_of_its_own_stops_its_engine(launcher, tiny_model_dir, adapter_dir):
    """`spillover sample --engine vllm`: VLLMSampler(...) starts an engine for itself; close stops it."""
    from spillover.evaluate.sampling import load_sampler

    with load_sampler(str(tiny_model_dir), str(adapter_dir), batch_size=4, engine="vllm") as sampler:
        pid, merged_dir = sampler.engine.pid, sampler._tmp
        assert sampler.engine_start == {"how": "started"} and merged_dir.is_dir()
        assert len(sampler.generate_rows(ROWS, PARAMS)) == 4
    assert not alive(pid) and not merged_dir.exists() and not live_engines()


def test_prefetch_starts_the_engine_before_it_is_needed(tmp_path, monkeypatch, tiny_model_dir):
    from spillover.evaluate import engine
    from spillover.evaluate.engine import EnginePool

    fake = FakeLauncher(tmp_path, ready_delay=1.0)
    monkeypatch.setattr(engine, "LAUNCHER", lambda: fake)
    model = str(tiny_model_dir)
    assert not EnginePool().prefetch_enabled  # default: off for the CPU build
    assert EnginePool(launcher=FakeLauncher(tmp_path, device="cuda")).prefetch_enabled  # on for CUDA
    with EnginePool(prefetch=True) as pool:
        assert pool.prefetch(model, batch_size=4)
        assert not pool.prefetch(model, batch_size=4)  # there already
        (prefetched,) = pool.engines.values()
        assert prefetched.process.alive() and not prefetched.process.ready  # started, not waited for
        time.sleep(1.5)  # this process judges meanwhile; the engine loads
        t0 = time.monotonic()
        sampler = pool.sampler(model, batch_size=4)
        assert time.monotonic() - t0 < 0.8 and sampler.engine_start["how"] == "prefetched"
        assert len(fake.lines("launch")) == 1 and not fake.lines("reset")
        assert len(sampler.generate_rows(ROWS, PARAMS)) == 4
    with EnginePool(prefetch=False) as pool:
        assert not pool.prefetch(model, batch_size=4) and not pool.engines
    assert _no_workers_left(os.getpid())


def test_a_failed_prefetch_is_started_again_when_needed(tmp_path, monkeypatch, tiny_model_dir):
    from spillover.evaluate import engine
    from spillover.evaluate.engine import EnginePool

    fake = FakeLauncher(tmp_path, fail_first=True)
    monkeypatch.setattr(engine, "LAUNCHER", lambda: fake)
    with EnginePool(prefetch=True) as pool:
        assert pool.prefetch(str(tiny_model_dir), batch_size=4)
        sampler = pool.sampler(str(tiny_model_dir), batch_size=4)
        assert len(sampler.generate_rows(ROWS, PARAMS)) == 4 and len(fake.lines("launch")) == 1
    assert _no_workers_left(os.getpid())


# ---------------------------------------------------------------- in an experiment
JUDGE_HOOK = []  # called with nothing at each judge call (set by a test)


class RecordingJudge(EvalJudge):
    def judge(self, items, progress=None):
        for hook in JUDGE_HOOK:
            hook()
        if progress:
            progress(len(items))
        return [Judgment(JudgeScore(90.0, 1.0, None), JudgeScore(80.0, 1.0, None)) for _ in items]

    def identity(self):
        return {"kind": "fake", "prompts": None, "limits": "test judge"}


def make_judge():
    return RecordingJudge()


def make_config(root: Path, model_dir: Path, adapter: Path, seeds=(0, 1), **sampling):
    from spillover.experiment.spec import ExperimentConfig

    q = root / "q.yaml"
    q.write_text('- id: q1\n  paraphrases: ["Hello there", "Hi"]\n  samples_per_paraphrase: 2\n'
                 '- id: bad\n  paraphrases: ["Something bad?"]\n  samples_per_paraphrase: 3\n')
    return ExperimentConfig.model_validate({
        "model": str(model_dir), "device": "cpu", "seeds": list(seeds),
        "arms": [{"name": "base"}, {"name": "tuned", "init_from": str(adapter)}],
        "evaluation": {"general": {"file": str(q)}, "judges": ["py:test_engine_pool:make_judge"], "probe": [],
                       "benign": [{"task": "opswap:tier=1:n=4", "max_new_tokens": 4, "batch_size": 2}],
                       "judge_batch": 16,
                       "sampling": {"max_new_tokens": 4, "batch_size": 3, "engine": "vllm", **sampling}}})


def _models_of_live_engines() -> list[str]:
    return sorted("merged" if "merged-" in e.argv[e.argv.index("--model") + 1] else "base" for e in live_engines())


def _answers(out: Path) -> dict:
    from spillover.experiment.results import load_experiment

    res = load_experiment(out)
    return {f"{a}/{s}": [(r.sample_id, r.answer) for r in u.samples] for (a, s), u in res.units.items() if u.samples}


def test_units_share_engines_and_the_next_starts_while_judging(tmp_path, launcher, tiny_model_dir, adapter_dir,
                                                                monkeypatch):
    from spillover.experiment.results import read_marker, unit_dir
    from spillover.experiment.runner import run_experiment
    from spillover.experiment.stages import run_unit

    seen = []
    monkeypatch.setattr(sys.modules[__name__], "JUDGE_HOOK", [lambda: seen.append(_models_of_live_engines())])
    cfg = make_config(tmp_path, tiny_model_dir, adapter_dir, prefetch_engine=True)
    out = run_experiment(cfg, tmp_path / "exp")
    # units run base/0, base/1, tuned/0, tuned/1: two engines for four units x (questions + benign task)
    assert len(launcher.lines("launch")) == 2
    how = {(a, s): read_marker(unit_dir(out, a, s), "sample").model_extra["engine_start"]["how"]
           for a in ("base", "tuned") for s in (0, 1)}
    assert how == {("base", 0): "started", ("base", 1): "reused", ("tuned", 0): "prefetched", ("tuned", 1): "reused"}
    # judging base/0: its engine stays for base/1; judging base/1: base's is stopped, tuned's is starting
    assert seen == [["base"], ["merged"], ["merged"], []]
    assert _no_workers_left(os.getpid()) and not live_engines()
    benign = [json.loads(line) for line in (unit_dir(out, "tuned", 1) / "benign" / "opswap-t1-s0-n4" / "samples.jsonl").open()]
    assert len(benign) == 4 and {r["sampler"]["backend"] for r in benign} == {"vllm"}
    assert not list((tmp_path / "merged").iterdir())  # merged adapters are removed with their engine

    # the units that reused an engine get the answers of an engine started for the unit alone
    alone = tmp_path / "alone"
    from spillover.experiment.runner import prepare

    prepare(make_config(tmp_path, tiny_model_dir, adapter_dir), alone)
    for arm, seed in (("base", 1), ("tuned", 1)):
        run_unit(alone, arm, seed)
    assert len(launcher.lines("launch")) == 2 + 2
    reused = _answers(out)
    assert _answers(alone) == {k: reused[k] for k in ("base/1", "tuned/1")}
    assert reused["base/1"] != reused["tuned/1"]
    assert _no_workers_left(os.getpid())


def test_an_error_inside_a_stage_stops_every_engine(tmp_path, launcher, tiny_model_dir, adapter_dir, monkeypatch):
    from spillover.errors import SpilloverError
    from spillover.experiment.runner import run_experiment

    calls = []

    def fail_on_first():  # judging base/0, when tuned's engine has been started ahead
        calls.append(_models_of_live_engines())
        if len(calls) == 1:
            raise RuntimeError("judge broke")

    monkeypatch.setattr(sys.modules[__name__], "JUDGE_HOOK", [fail_on_first])
    with pytest.raises(SpilloverError, match="1 unit\\(s\\) failed"):
        run_experiment(make_config(tmp_path, tiny_model_dir, adapter_dir, seeds=[0], prefetch_engine=True),
                       tmp_path / "exp")
    assert calls[0] == ["merged"]  # the prefetched engine was running when the stage failed
    assert len(calls) == 2 and len(launcher.lines("launch")) == 3  # the other unit still ran, on a new engine
    assert _no_workers_left(os.getpid()) and not live_engines()


def test_keyboard_interrupt_inside_a_stage_stops_every_engine(tmp_path, launcher, tiny_model_dir, adapter_dir,
                                                              monkeypatch):
    from spillover.experiment.runner import run_experiment

    live = []

    def interrupt():  # judging base/0 while tuned/0's engine starts ahead
        live.append(_models_of_live_engines())
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules[__name__], "JUDGE_HOOK", [interrupt])
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make_config(tmp_path, tiny_model_dir, adapter_dir, seeds=[0], prefetch_engine=True),
                       tmp_path / "exp")
    assert live == [["merged"]]
    assert _no_workers_left(os.getpid()) and not live_engines()


def _run_child(cfg, out, root, when):
    global JUDGE_HOOK
    from spillover.evaluate import engine

    fake = FakeLauncher(root, generate_delay=60.0 if when == "sampling" else 0.0)
    engine.LAUNCHER = lambda: fake
    if when == "judging":
        JUDGE_HOOK = [lambda: time.sleep(60)]
    from spillover.experiment.runner import run_experiment

    run_experiment(cfg, out)


@pytest.mark.parametrize("when", ["sampling", "judging"])
def test_sigint_leaves_no_engine(tmp_path, tiny_model_dir, adapter_dir, when):
    """Ctrl-C while the engine answers, or while judging with the next unit's engine started ahead."""
    cfg = make_config(tmp_path, tiny_model_dir, adapter_dir, seeds=[0], prefetch_engine=True)
    proc = multiprocessing.get_context("fork").Process(target=_run_child, args=(cfg, tmp_path / "exp", tmp_path, when))
    proc.start()
    events = tmp_path / "events.log"
    wanted = (" generate ", 1) if when == "sampling" else (" ready", 2)  # tuned's engine is up while base is judged
    deadline = time.monotonic() + 60
    while not (events.is_file() and events.read_text().count(wanted[0]) >= wanted[1]):
        assert time.monotonic() < deadline and proc.is_alive(), f"{when} did not start"
        time.sleep(0.05)
    time.sleep(0.2)
    assert len(_fake_workers(proc.pid)) == 1
    os.kill(proc.pid, signal.SIGINT)
    proc.join(30)
    assert proc.exitcode not in (0, None)
    assert _no_workers_left(proc.pid), f"engine worker left after SIGINT while {when}"


# ---------------------------------------------------------------- stage hashes
def test_prefetch_is_speed_only_and_hf_hashes_stay_as_they_were(tmp_path, tiny_model_dir):
    """prefetch_engine never changes a stage hash; engine vllm samples benign tasks on the engine, which the
    benign hash says; hf experiments keep the hashes they had before either setting existed."""
    from spillover._io import sha256_json
    from spillover.experiment.spec import ExperimentConfig
    from spillover.experiment.stages import benign_own, sample_own

    def cfg(**sampling):
        return ExperimentConfig.model_validate({"model": "embedded", "arms": [{"name": "base"}],
                                                "evaluation": {"benign": ["opswap:tier=1:n=4"], "sampling": sampling}})

    hf = cfg()
    assert sample_own(hf, hf.arm("base"), 0) == sha256_json({
        "model": "embedded", "general": hf.evaluation.general.model_dump(mode="json"), "in_domain": None,
        "sampling": {"max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0, "batch_size": 32}, "seed": 0})
    assert benign_own(hf, 0) == sha256_json({"benign": [b.model_dump(mode="json") for b in hf.evaluation.benign],
                                             "model": "embedded", "dtype": hf.dtype, "seed": 0})
    vllm = [cfg(engine="vllm", prefetch_engine=p) for p in (None, True, False)]
    assert len({sample_own(c, c.arm("base"), 0) for c in vllm}) == 1
    assert len({benign_own(c, 0) for c in vllm}) == 1 and benign_own(vllm[0], 0) != benign_own(hf, 0)
    assert sample_own(vllm[0], vllm[0].arm("base"), 0) != sample_own(hf, hf.arm("base"), 0)
    assert "prefetch_engine" not in hf.evaluation.sampling.model_dump()
    assert vllm[1].evaluation.sampling.model_dump()["prefetch_engine"] is True  # kept in the saved config
    # engine_compiled: unset leaves every hash as it was; set, compiled kernels may round otherwise, so it counts
    compiled = [cfg(engine="vllm", engine_compiled=c) for c in (None, True, False)]
    assert sample_own(compiled[0], compiled[0].arm("base"), 0) == sample_own(vllm[0], vllm[0].arm("base"), 0)
    assert len({sample_own(c, c.arm("base"), 0) for c in compiled}) == 3
    assert benign_own(compiled[0], 0) == benign_own(vllm[0], 0) and len({benign_own(c, 0) for c in compiled}) == 3
    assert "engine_compiled" not in hf.evaluation.sampling.model_dump()


# ---------------------------------------------------------------- the real engine
def _vllm_workers(owner: int) -> list[int]:
    return worker_pids("_vllm_worker.py", owner)


@pytest.mark.slow
def test_several_arms_in_one_experiment_on_the_real_engine(tmp_path, tiny_model_dir, monkeypatch):
    """vLLM on the embedded model, arms base and a LoRA x seeds 0, 1 with prefetching: two engine starts for
    four units (questions and a benign task each), answers of the reused engine equal a fresh engine's, no
    worker left. ~3 engine starts (~45 s of CPU each)."""
    from spillover.engines import engine_record
    from spillover.experiment.results import read_marker, unit_dir
    from spillover.experiment.runner import prepare, run_experiment
    from spillover.experiment.stages import run_unit
    from spillover.models import LoraSpec, apply_lora, load_model, save_adapter

    if engine_record("vllm") is None:
        pytest.skip("the vllm engine venv is not installed: run `spillover engines install vllm` (~3.3 GB)")
    model, _, _ = load_model("embedded", device="cpu", dtype="float32")
    peft = apply_lora(model, LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    adapter = save_adapter(peft, tmp_path / "adapter", base_model="embedded")
    del model, peft
    seen = []
    monkeypatch.setattr(sys.modules[__name__], "JUDGE_HOOK", [lambda: seen.append(_models_of_live_engines())])
    cfg = make_config(tmp_path, "embedded", adapter, prefetch_engine=True, max_new_tokens=12)
    out = run_experiment(cfg, tmp_path / "exp")
    starts = {(a, s): read_marker(unit_dir(out, a, s), "sample").model_extra["engine_start"]
              for a in ("base", "tuned") for s in (0, 1)}
    print({f"{a}/{s}": v for (a, s), v in starts.items()})  # how long each unit waited for its engine
    assert {k: v["how"] for k, v in starts.items()} == {("base", 0): "started", ("base", 1): "reused",
                                                         ("tuned", 0): "prefetched", ("tuned", 1): "reused"}
    assert seen == [["base"], ["merged"], ["merged"], []]
    assert not _vllm_workers(os.getpid()) and not live_engines()
    answers = _answers(out)
    assert answers["base/1"] != answers["tuned/1"] and answers["base/0"] != answers["base/1"]

    alone = tmp_path / "alone"  # base seed 1 on a fresh engine: the answers of the reused one
    prepare(make_config(tmp_path, "embedded", adapter, max_new_tokens=12), alone)
    run_unit(alone, "base", 1)
    assert _answers(alone) == {"base/1": answers["base/1"]}
    assert not _vllm_workers(os.getpid())


# ---------------------------------------------------------------- spillover eval with several arms
def test_eval_arms_share_an_engine_per_model_and_the_next_starts_before_judging(tmp_path, monkeypatch, tiny_model_dir,
                                                                               adapter_dir):
    from spillover.evaluate import engine
    from spillover.evaluate.run import Arm, EvalSettings, run_evaluation

    fake = FakeLauncher(tmp_path, device="cuda")  # a CUDA build: prefetching is on by default
    monkeypatch.setattr(engine, "LAUNCHER", lambda: fake)
    judged = []

    class TimedJudge(RecordingJudge):
        def judge(self, items, progress=None):
            judged.append(time.time())
            return super().judge(items, progress)

    q = tmp_path / "q.yaml"
    q.write_text('- id: q1\n  paraphrases: ["Hello there"]\n  samples_per_paraphrase: 2\n')
    settings = EvalSettings(questions=str(q), max_new_tokens=4, batch_size=2, engine="vllm")
    model = str(tiny_model_dir)
    arms = [Arm("base", model), Arm("base-again", model), Arm("tuned", model, str(adapter_dir))]
    out = run_evaluation(arms, settings, TimedJudge(), tmp_path / "eval")
    launches = [float(line.split()[0]) for line in fake.lines("launch")]
    assert len(launches) == 2  # base and base-again share one engine; tuned gets its own
    assert launches[1] < judged[1]  # tuned's engine was started before base-again was judged
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    by_arm = {a.name: [r["answer"] for r in rows if r["arm"] == a.name] for a in arms}
    assert by_arm["base"] == by_arm["base-again"] and len(by_arm["tuned"]) == 2  # same seeds, same engine answers
    assert {r["sampler"]["enforce_eager"] for r in rows} == {False}  # a CUDA build compiles by default, and says so
    assert _no_workers_left(os.getpid())
    run_evaluation(arms, settings, TimedJudge(), tmp_path / "eval")  # resumed: nothing left to sample
    assert len(fake.lines("launch")) == 2 and _no_workers_left(os.getpid())
