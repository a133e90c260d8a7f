"""Issue 12: fail before the work, never lose finished work, never delete what is not ours."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from spillover._io import atomic_write_text, clean_stale_temps, iter_jsonl_objects, read_text
from spillover._run import MANIFEST, check_output_dir, check_output_file, prepare_run_dir, read_manifest, \
    run_status, update_manifest
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
    from spillover.experiment.compare import CompareConfig

    p = tmp_path / "cmp.yaml"
    p.write_text("data: bundled:insecure_code\nsft:\n  lr: 0.001\n  max_stesp: 3\n  seed: 4\n"
                 "grpo:\n  rewards:\n    - name: prose-structure\n  num_generations: 1\n"
                 "evaluate:\n  judje: local\n")
    with pytest.raises(SpilloverError) as e:
        load_config(CompareConfig, p)
    text = str(e.value)
    assert f"{p}:4: sft.max_stesp: unknown key (typo?)" in text
    assert f"{p}:5: sft.seed: set by the comparison itself; remove it" in text
    assert f"{p}:9: grpo.num_generations: Input should be greater than or equal to 2" in text
    assert f"{p}:11: evaluate.judje: unknown key (typo?)" in text
    assert "Value error" not in text and ":1:" not in text


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


def test_killed_atomic_write_is_cleaned_on_next_run(tmp_path):
    run = tmp_path / "run"
    code = ("import os, sys, tempfile; from pathlib import Path; from spillover._io import _tmp_prefix;"
            "d = Path(sys.argv[1]); d.mkdir();"
            "tempfile.mkdtemp(prefix=_tmp_prefix(d / 'adapter'), suffix='.tmp', dir=d); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(run)], check=True)
    assert len(list(run.iterdir())) == 1
    prepare_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == [MANIFEST]
