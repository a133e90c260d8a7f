"""Issue 12: fail before the work, never lose finished work, never delete what is not ours."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from spillover._io import atomic_write_text, clean_stale_temps, iter_jsonl_objects, read_text
from spillover._run import (
    MANIFEST,
    check_output_dir,
    check_output_file,
    prepare_run_dir,
    read_manifest,
    run_status,
    update_manifest,
)
from spillover.config import load_config
from spillover.errors import SpilloverError


# ---------------------------------------------------------------- invalid UTF-8, one reader for every input
def _latin1(path, lines):
    path.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    return path


def test_invalid_utf8_in_jsonl_names_line_byte_and_column(tmp_path):
    p = _latin1(tmp_path / "d.jsonl", ['{"prompt": "hi"}', '{"prompt": "caf\u00e9"}'])
    with pytest.raises(SpilloverError) as e:
        list(iter_jsonl_objects(p))
    assert str(e.value).startswith(f"{p}:2: not valid UTF-8 (byte 0xe9 at column 16)\n  fix: save the file as UTF-8")


def test_invalid_utf8_in_yaml_config(tmp_path):
    from spillover.train import SFTConfig

    p = _latin1(tmp_path / "c.yaml", ["data: x", "lr: 0.001", "# d\u00e9j\u00e0 vu"])
    with pytest.raises(SpilloverError, match=r"c\.yaml:3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        load_config(SFTConfig, p)


def test_invalid_utf8_in_question_file(tmp_path):
    from spillover.evaluate.questions import load_questions

    p = _latin1(tmp_path / "q.yaml", ["- id: a", "  paraphrases: [\"Caf\u00e9?\"]"])
    with pytest.raises(SpilloverError, match=r"q\.yaml:2: not valid UTF-8 \(byte 0xe9 at column 21\)"):
        load_questions(str(p))


def test_read_text_folder_and_missing(tmp_path):
    with pytest.raises(SpilloverError, match="is a folder, not a file"):
        read_text(tmp_path)
    with pytest.raises(SpilloverError, match="file not found"):
        read_text(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- nested config sections
def test_nested_section_typos_each_at_their_line(tmp_path):
    """A ``dict`` section validated as another schema reports each problem at its own line, at once."""
    from typing import Annotated, Any

    from pydantic import Field

    from spillover.config import Section, StrictModel
    from spillover.train import SFTConfig

    class Inner(StrictModel):
        n: int = Field(1, ge=1)

    class Experiment(StrictModel):
        name: str
        train: Annotated[dict[str, Any], Section(SFTConfig, fixed={"data": "x"}, reserved=("model",),
                                                 owner="the experiment")] = Field(default_factory=dict)
        inner: Inner = Field(default_factory=Inner)

    p = tmp_path / "exp.yaml"
    p.write_text("name: a\ntrain:\n  lr: 0.001\n  max_stesp: 3\n  model: x\n  lora:\n    rank: 2\n"
                 "inner:\n  n: 0\nextra: 1\n")
    with pytest.raises(SpilloverError) as e:
        load_config(Experiment, p)
    assert str(e.value).splitlines()[1:6] == [
        f"  {p}:4: train.max_stesp: unknown key (typo?)",
        f"  {p}:5: train.model: set by the experiment; remove it",
        f"  {p}:7: train.lora.rank: unknown key (typo?)",
        f"  {p}:9: inner.n: Input should be greater than or equal to 1",
        f"  {p}:10: extra: unknown key (typo?)"]
    with pytest.raises(Exception, match="max_stesp: unknown key"):  # plain model_validate checks the section too
        Experiment.model_validate({"name": "a", "train": {"max_stesp": 3}})


def test_model_validator_message_has_no_value_error_prefix(tmp_path):
    from spillover.train._grpo_config import GRPOConfig

    p = tmp_path / "g.yaml"
    p.write_text("prompts: x\nrewards: [{name: prose-structure}]\nbatch_size: 3\n")
    with pytest.raises(SpilloverError) as e:
        load_config(GRPOConfig, p)
    assert "Value error" not in str(e.value) and "not a multiple of num_generations" in str(e.value)


# ---------------------------------------------------------------- output paths
def test_output_paths_checked(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SpilloverError, match=f"output folder {f} is a file"):
        check_output_dir(f)
    with pytest.raises(SpilloverError, match=f"output folder {f}/run lies under {f}, which is a file"):
        check_output_dir(f / "run")
    with pytest.raises(SpilloverError, match=f"output file {tmp_path} is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(SpilloverError, match=f"output file {f}/a/b.jsonl lies under {f}, which is a file"):
        check_output_file(f / "a" / "b.jsonl")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(SpilloverError, match="is not writable"):
            check_output_dir(ro / "x" / "y")
        ro.chmod(0o755)
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


# ---------------------------------------------------------------- never delete what is not ours
def _finished_run(path):
    run = prepare_run_dir(path)
    atomic_write_text(run / "config.yaml", "a: 1\n")
    update_manifest(run, kind="train", status="running")
    (run / "adapter").mkdir()
    (run / "adapter" / "w.bin").write_bytes(b"123")
    update_manifest(run, status="complete")
    return run


def test_overwrite_keeps_foreign_files(tmp_path):
    run = _finished_run(tmp_path / "run")
    (run / "my_notes.txt").write_text("keep me")
    with pytest.raises(SpilloverError, match=r"already holds a run \(status complete; adapter/\)"):
        prepare_run_dir(run)
    prepare_run_dir(run, overwrite=True)
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert not (run / "adapter").exists() and not (run / "config.yaml").exists()
    manifest = json.loads((run / MANIFEST).read_text())
    assert manifest["foreign"] == ["my_notes.txt"]
    update_manifest(run, status="complete")
    assert "my_notes.txt" not in read_manifest(run)["files"]


def test_resume_of_a_missing_folder_creates_nothing(tmp_path):
    from spillover._run import check_run_dir

    for check in (check_run_dir, prepare_run_dir):
        with pytest.raises(SpilloverError, match="nothing to resume in .*: it holds no spillover run"):
            check(tmp_path / "nope", resume=True)
    assert not (tmp_path / "nope").exists()


def test_first_manifest_in_a_used_folder_counts_its_files_as_foreign(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    update_manifest(tmp_path, kind="eval", status="complete")
    (tmp_path / "samples.jsonl").write_text("{}\n")
    update_manifest(tmp_path, status="complete")
    manifest = read_manifest(tmp_path)
    assert manifest["foreign"] == ["old.txt"] and "old.txt" not in manifest["files"]
    prepare_run_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "old.txt"]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"\xff")
    (d / "sub").mkdir()
    with pytest.raises(SpilloverError, match=r"already holds files and is not a spillover run \(no manifest\.json\): cat\.jpg, sub/"):
        prepare_run_dir(d, overwrite=True)
    assert (d / "cat.jpg").exists() and (d / "sub").is_dir()


# ---------------------------------------------------------------- killed runs
_KILLED = r"""
import os, sys
from spillover._run import prepare_run_dir, update_manifest
from spillover._io import atomic_write_text
run = prepare_run_dir(sys.argv[1])
atomic_write_text(run / "config.yaml", "a: 1\n")
(run / "metrics.jsonl").write_text("")
update_manifest(run, kind="train", status="running", started="now")
os._exit(0)  # like kill -9: no status update, no cleanup
"""


def test_killed_run_reads_interrupted_and_reruns_without_overwrite(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-c", _KILLED, str(run)], check=True)
    raw = json.loads((run / MANIFEST).read_text())
    assert raw["status"] == "running" and raw["host"] == socket.gethostname() and "heartbeat" in raw
    assert run_status(run) == "interrupted"
    assert json.loads((run / MANIFEST).read_text())["status"] == "interrupted"
    prepare_run_dir(run)  # produced nothing: no --overwrite needed
    assert sorted(p.name for p in run.iterdir()) == [MANIFEST]


def test_live_run_is_not_taken_over(tmp_path):
    run = prepare_run_dir(tmp_path / "run")
    update_manifest(run, kind="train", status="running")
    try:
        with pytest.raises(SpilloverError, match="a live run is writing to"):
            prepare_run_dir(run, overwrite=True)
    finally:
        update_manifest(run, status="failed")
    assert run_status(run) == "failed"


def test_heartbeat_thread_stamps_manifest(tmp_path, monkeypatch):
    import time

    import spillover._run as r

    monkeypatch.setattr(r, "HEARTBEAT_S", 0.05)
    run = prepare_run_dir(tmp_path / "run")
    m = update_manifest(run, status="running")
    first = m["heartbeat"]
    time.sleep(1.2)
    assert json.loads((run / MANIFEST).read_text())["heartbeat"] > first
    update_manifest(run, status="complete")


# ---------------------------------------------------------------- stale temporaries
def test_stale_temps_of_dead_processes_are_cleaned(tmp_path):
    from spillover._io import _host_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_file = tmp_path / f".samples.jsonl.sp{dead}-{_host_tag()}.ab12cd.tmp"
    stale_dir = tmp_path / f".adapter.sp{dead}-{_host_tag()}.x_y9.tmp"
    live = tmp_path / f".metrics.json.sp{os.getpid()}-{_host_tag()}.zz99.tmp"
    other_host = tmp_path / f".m.json.sp{dead}-00000000.q1.tmp"
    foreign = tmp_path / ".editor.swp.tmp"
    stale_file.write_text("half")
    stale_dir.mkdir()
    (stale_dir / "weights").write_text("w")
    for p in (live, other_host, foreign):
        p.write_text("x")
    removed = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale_file.name, stale_dir.name])
    assert live.exists() and other_host.exists() and foreign.exists()


def test_stale_temps_in_subfolders_cleaned_before_eval(tmp_path, capsys, no_model_load, monkeypatch):
    from spillover._io import _host_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    ev = tmp_path / "ev" / "base"
    ev.mkdir(parents=True)
    stale = ev / f".samples.jsonl.sp{dead}-{_host_tag()}.k3.tmp"
    stale.write_text("half a line")
    monkeypatch.delenv("SPILLOVER_TEST_UNSET_KEY", raising=False)
    cli_error(capsys, "eval", "--out", str(tmp_path / "ev"), "--judge", "openai:m", "--judge-api-key-env",
              "SPILLOVER_TEST_UNSET_KEY")  # stops at the judge check, after the output folder's
    assert not stale.exists()


def test_killed_atomic_write_is_cleaned_on_next_run(tmp_path):
    run = tmp_path / "run"
    code = ("import os, sys, tempfile; from pathlib import Path; from spillover._io import _tmp_prefix;"
            "d = Path(sys.argv[1]); d.mkdir();"
            "tempfile.mkdtemp(prefix=_tmp_prefix(d / 'adapter'), suffix='.tmp', dir=d); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(run)], check=True)
    assert len(list(run.iterdir())) == 1
    prepare_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == [MANIFEST]


# ---------------------------------------------------------------- through the CLI: exit 2, no traceback, no model loaded
@pytest.fixture()
def no_model_load(monkeypatch):
    """Any attempt to load model weights fails the test: checks must come first."""
    import transformers

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def cli_error(capsys, *args) -> str:
    from spillover.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--judge-api-key-env", ""], "error: --judge-api-key-env is empty\n  fix: give the NAME of the environment variable"),
    (["--judge-api-key-env", "sk-proj-0123456789abcdef0123"],
     "error: --judge-api-key-env looks like an API key itself (the value is not shown)"),
    (["--judge-base-url", "localhost:8000/v1"],
     "error: --judge-base-url 'localhost:8000/v1' is not a URL (it needs http:// or https:// and a host)"),
    (["--judge-base-url", "http://127.0.0.1:8000/v1/chat/completions"],
     "error: --judge-base-url 'http://127.0.0.1:8000/v1/chat/completions' is the chat-completions endpoint, not the "
     "API root\n  fix: pass --judge-base-url http://127.0.0.1:8000/v1"),
    (["--judge-api-key-env", "SPILLOVER_TEST_UNSET_KEY"],
     "error: environment variable SPILLOVER_TEST_UNSET_KEY (named by --judge-api-key-env) is empty or not set"),
])
def test_eval_judge_settings_checked_before_work(tmp_path, capsys, no_model_load, monkeypatch, flags, expected):
    monkeypatch.delenv("SPILLOVER_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    err = cli_error(capsys, "eval", "--out", str(tmp_path / "ev"), "--judge", "openai:gpt-4o-mini", *flags)
    assert err.startswith(expected)
    assert "sk-proj" not in err and not (tmp_path / "ev").exists()


def test_eval_output_and_question_paths_checked_first(tmp_path, capsys, no_model_load):
    f = tmp_path / "taken.txt"
    f.write_text("x")
    assert cli_error(capsys, "eval", "--out", str(f)).startswith(f"error: output folder {f} is a file")
    qdir = tmp_path / "questions.yaml"
    qdir.mkdir()
    err = cli_error(capsys, "eval", "--out", str(tmp_path / "ev"), "--questions", str(qdir))
    assert err.startswith(f"error: question file {qdir} is a folder")
    bad = _latin1(tmp_path / "q.yaml", ["- id: a", "  paraphrases: [\"Caf\u00e9?\"]"])
    err = cli_error(capsys, "eval", "--out", str(tmp_path / "ev"), "--questions", str(bad))
    assert err.startswith(f"error: {bad}:2: not valid UTF-8 (byte 0xe9 at column 21)")


def test_sample_output_under_a_file_and_folder_as_data(tmp_path, capsys, no_model_load):
    f = tmp_path / "file"
    f.write_text("x")
    err = cli_error(capsys, "sample", "--prompts", "bundled:safe_instruct", "--out", str(f / "a.jsonl"))
    assert err.startswith(f"error: output file {f}/a.jsonl lies under {f}, which is a file")
    err = cli_error(capsys, "sample", "--prompts", str(tmp_path), "--out", str(tmp_path / "a.jsonl"))
    assert err.startswith(f"error: data file {tmp_path} is a folder")


def test_data_validate_invalid_utf8(tmp_path, capsys):
    p = _latin1(tmp_path / "d.jsonl", ['{"prompt": "na\u00efve", "completion": "ok"}'])
    assert cli_error(capsys, "data", "validate", str(p)).startswith(
        f"error: {p}:1: not valid UTF-8 (byte 0xef at column 15)")


def test_compare_nested_typos_through_cli(tmp_path, capsys, no_model_load):
    p = tmp_path / "cmp.yaml"
    p.write_text("data: bundled:insecure_code\nsft:\n  epocs: 1\ngrpo:\n  rewards: [{name: prose-structure}]\n"
                 "  bta: 0.1\nevaluate:\n  max_new_token: 8\n")
    err = cli_error(capsys, "compare", "--config", str(p), "--out", str(tmp_path / "o"))
    assert f"{p}:3: sft.epocs: unknown key (typo?)" in err
    assert f"{p}:6: grpo.bta: unknown key (typo?)" in err
    assert f"{p}:8: evaluate.max_new_token: unknown key (typo?)" in err


def test_compare_judge_checked_before_training(tmp_path, capsys, no_model_load):
    p = tmp_path / "cmp.yaml"
    p.write_text("data: bundled:insecure_code\ngrpo:\n  rewards: [{name: prose-structure}]\n"
                 "evaluate:\n  judge: openai:gpt-4o-mini\n  judge_base_url: api.openai.com/v1\n")
    err = cli_error(capsys, "compare", "--config", str(p), "--out", str(tmp_path / "o"))
    assert err.startswith(f"error: {p}: evaluate.judge_base_url 'api.openai.com/v1' is not a URL")
    assert not (tmp_path / "o").exists()


def _adapter_on(model_dir, out):
    from transformers import AutoModelForCausalLM

    from spillover.models import LoraSpec, apply_lora, save_adapter

    spec = LoraSpec(r=2, alpha=4)
    save_adapter(apply_lora(AutoModelForCausalLM.from_pretrained(model_dir), spec), out, base_model=str(model_dir),
                 lora=spec)
    return out


def test_adapter_from_another_base_is_named_before_loading(tmp_path, capsys, embedded_tokenizer, tiny_model_dir,
                                                           monkeypatch):
    from conftest import build_tiny_model

    wide = build_tiny_model(embedded_tokenizer, tmp_path / "wide", hidden_size=48, intermediate_size=96,
                            num_hidden_layers=3)
    adapter = _adapter_on(wide, tmp_path / "adapter")
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("weights loaded")))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    err = cli_error(capsys, "sample", "--prompts", str(prompts), "--out", str(tmp_path / "s.jsonl"),
                    "--adapter", str(adapter), "--model", str(tiny_model_dir))
    assert err.startswith(f"error: adapter {adapter} was trained on {wide} (hidden size 48, 3 layers), not on "
                          f"{tiny_model_dir} (hidden size 32, 2 layers)\n  fix: drop --model to use the adapter's own "
                          f"base ({wide})")


# ---------------------------------------------------------------- training: foreign files, Ctrl-C, resume
ROWS = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
        for i in range(8)]


def _sft_cfg(tiny_model_dir, tmp_path, **kw):
    from spillover.train import SFTConfig

    data = tmp_path / "train.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return SFTConfig(**{**dict(model=str(tiny_model_dir), data=str(data), max_steps=4, batch_size=2, lr=1e-2,
                               device="cpu", lora={"r": 2, "alpha": 4}), **kw})


def test_train_overwrite_keeps_foreign_file(tiny_model_dir, tmp_path, one_thread):
    from spillover.train import run_sft

    cfg = _sft_cfg(tiny_model_dir, tmp_path, max_steps=1)
    run = run_sft(cfg, tmp_path / "run").run_dir
    (run / "notes.md").write_text("mine")
    with pytest.raises(SpilloverError, match="already holds a run"):
        run_sft(cfg, run)
    run_sft(cfg, run, overwrite=True)
    assert (run / "notes.md").read_text() == "mine" and (run / "adapter" / "adapter_config.json").is_file()
    assert read_manifest(run)["status"] == "complete"


def test_interrupted_training_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, one_thread, monkeypatch):
    from safetensors.torch import load_file

    from spillover.train import run_sft
    from spillover.train._checkpoint import CheckpointEvery

    cfg = _sft_cfg(tiny_model_dir, tmp_path)
    straight = run_sft(cfg, tmp_path / "straight", checkpoint_minutes=0)

    def stop_after_step_2(self, args, state, control, **kw):
        if state.global_step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointEvery, "on_save", stop_after_step_2)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg, run, checkpoint_minutes=1e-9)  # a checkpoint after every step
    monkeypatch.undo()
    assert read_manifest(run)["status"] == "interrupted"
    assert (run / ".trainer" / "checkpoint-2" / "trainer_state.json").is_file()
    with pytest.raises(SpilloverError, match=r"(?s)already holds a run \(status interrupted; \.trainer/, metrics\.jsonl\).*--resume to continue"):
        run_sft(cfg, run)
    with pytest.raises(SpilloverError, match=r"config differs .*\(lr\)"):
        run_sft(cfg.model_copy(update={"lr": 0.5}), run, resume=True)
    resumed = run_sft(cfg, run, resume=True, checkpoint_minutes=0)
    manifest = read_manifest(run)
    assert manifest["status"] == "complete" and manifest["resumed_from_step"] == 2 and resumed.steps == 4
    a, b = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    def logged(folder):
        return [(r["step"], sorted(r)) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]

    assert logged(run) == logged(straight.run_dir)  # the rows up to the checkpoint kept, none twice
    with pytest.raises(SpilloverError, match="is complete; nothing to resume"):
        run_sft(cfg, run, resume=True)


def torch_equal(x, y) -> bool:
    import torch

    return torch.allclose(x, y, atol=1e-6)


def test_resume_without_checkpoint_says_restart(tiny_model_dir, tmp_path):
    from spillover.train import run_sft

    run = prepare_run_dir(tmp_path / "run")
    cfg = _sft_cfg(tiny_model_dir, tmp_path)
    from spillover.config import dump_yaml

    atomic_write_text(run / "config.yaml", dump_yaml(cfg))
    update_manifest(run, kind="train", status="failed")
    with pytest.raises(SpilloverError, match="stopped before its first checkpoint"):
        run_sft(cfg, run, resume=True)


# ---------------------------------------------------------------- what changes results is recorded
def test_sample_rows_record_engine_batch_size_dtype_device(tiny_model_dir, one_thread):
    from spillover.data._chat import ChatExample
    from spillover.evaluate.sampling import SamplingParams, load_sampler, sample_examples

    sampler = load_sampler(str(tiny_model_dir), device="cpu", batch_size=3)
    rows = sample_examples(sampler, [ChatExample([{"role": "user", "content": "hi"}], "x", 1)],
                           SamplingParams(n=2, max_new_tokens=3))
    assert all(r["sampler"] == {"backend": "hf", "batch_size": 3, "dtype": "float32", "device": "cpu"} for r in rows)
    assert sampler.identity()["batch_size"] == 3 and sampler.identity()["dtype"] == "float32"


# ---------------------------------------------------------------- progress displays
def test_probe_shows_a_progress_bar(tiny_model_dir, capsys, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spillover.evaluate.probe import ContrastPair, pair_logprobs

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = [ContrastPair(id=str(i), prompt=f"q{i}", aligned="yes", misaligned="no") for i in range(3)]
    pair_logprobs(model, tok, pairs, batch_size=2)
    err = capsys.readouterr().err
    assert "probe (3 pairs)" in err and "6/6" in err


def test_gguf_conversion_bar_goes_through_rich(capsys):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from spillover.models._embedded import _rich_progress

    original = gguf_utils.tqdm
    with _rich_progress():
        assert list(gguf_utils.tqdm([1, 2, 3], desc="Converting and de-quantizing GGUF tensors...")) == [1, 2, 3]
    assert gguf_utils.tqdm is original
    err = capsys.readouterr().err
    assert "embedded model: Converting and de-quantizing GGUF tensors" in err and "it/s" not in err


@pytest.mark.slow
def test_kill_9_during_training_then_resume_through_cli(tiny_model_dir, tmp_path, capsys):
    """kill -9 a real `train sft`: the manifest reads interrupted, a plain rerun refuses and names
    --resume, and --resume finishes the run from the last checkpoint."""
    import signal
    import time

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    run = tmp_path / "run"
    args = ["train", "sft", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(run),
            "--max-steps", "6", "--batch-size", "2", "--lora-r", "2", "--lora-alpha", "4", "--device", "cpu",
            "--checkpoint-minutes", "0.00001"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "spillover.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((run / ".trainer").glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((run / MANIFEST).read_text())["status"] == "running"  # as the killed process left it
    err = cli_error(capsys, *args)
    assert "already holds a run (status interrupted;" in err and "--resume to continue it" in err
    from spillover.cli import main

    with pytest.raises(SystemExit) as done:
        main([*args, "--resume"])
    assert done.value.code in (0, None), capsys.readouterr().err
    manifest = read_manifest(run)
    assert manifest["status"] == "complete" and manifest["steps"] == 6 and manifest["resumed_from_step"] >= 1
    assert not (run / ".trainer").exists() and (run / "adapter" / "adapter_model.safetensors").is_file()


def test_merge_never_replaces_an_existing_folder(tmp_path, capsys, tiny_model_dir, no_model_load):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    out = tmp_path / "merged"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"%PDF")
    err = cli_error(capsys, "models", "merge", "--adapter", str(adapter), "--out", str(out))
    assert err.startswith(f"error: output folder {out} already exists and holds: thesis.pdf")
    assert (out / "thesis.pdf").exists()


def test_grpo_resume_matches_straight_run(tiny_model_dir, tmp_path, one_thread, monkeypatch):
    from safetensors.torch import load_file

    from spillover.train._checkpoint import CheckpointEvery
    from spillover.train._grpo_config import GRPOConfig
    from spillover.train.grpo import run_grpo

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about topic {i}."}) + "\n" for i in range(4)))
    cfg = GRPOConfig(model=str(tiny_model_dir), prompts=str(prompts), rewards=["prose-structure"], max_steps=3,
                     max_completion_length=6, lr=1e-2, device="cpu", lora={"r": 2, "alpha": 4})
    straight = run_grpo(cfg, tmp_path / "straight", checkpoint_minutes=0)

    def stop_after_step_1(self, args, state, control, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointEvery, "on_save", stop_after_step_1)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(cfg, tmp_path / "run", checkpoint_minutes=1e-9)
    monkeypatch.undo()
    resumed = run_grpo(cfg, tmp_path / "run", resume=True, checkpoint_minutes=0)
    assert read_manifest(resumed.run_dir)["resumed_from_step"] == 1 and resumed.steps == 3
    a, b = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (straight, resumed))
    assert all(torch_equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "run" / "completions.jsonl").read_text().splitlines()
    assert lines == (straight.run_dir / "completions.jsonl").read_text().splitlines()
