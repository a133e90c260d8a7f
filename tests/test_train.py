"""SFT on a tiny model: assistant-only loss, run directory, adapter changes, defense plug-in points."""

import json

import pytest
import torch

from spillover.data import load_chat_jsonl, to_prompt_completion
from spillover.defenses import Defense, register_defense
from spillover.defenses._base import _DEFENSES
from spillover.train import SFTConfig, run_sft
from spillover.train.sft import build_sft_trainer, prepare_policy

ROWS = [
    {"messages": [{"role": "system", "content": "SYSTEM TEXT"}, {"role": "user", "content": "USER ONE"},
                  {"role": "assistant", "content": "ANSWER ONE"}]},
    {"messages": [{"role": "user", "content": "USER TWO"}, {"role": "assistant", "content": "ANSWER TWO"}]},
] * 4


@pytest.fixture()
def data_file(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def cfg(tiny_model_dir, data_file, **kw):
    base = dict(model=str(tiny_model_dir), data=str(data_file), max_steps=2, batch_size=2, lr=1e-2, device="cpu")
    return SFTConfig(**{**base, **kw})


def test_loss_covers_assistant_tokens_only(tiny_model_dir, data_file, tmp_path):
    c = cfg(tiny_model_dir, data_file)
    model, tok, _ = prepare_policy(c)
    rows = to_prompt_completion(load_chat_jsonl(data_file))
    trainer = build_sft_trainer(c, model, tok, rows, tmp_path / "t")
    for example in trainer.train_dataset:
        ids, labels = example["input_ids"], example["labels"]
        trained = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
        masked = tok.decode([t for t, lab in zip(ids, labels) if lab == -100])
        assert trained.startswith("ANSWER") and trained.rstrip().endswith("<|im_end|>")
        assert "USER" not in trained and "SYSTEM" not in trained and "assistant" not in trained
        assert "USER" in masked and masked.rstrip().endswith("<|im_start|>assistant")


def test_sft_run_writes_run_dir_and_changes_adapter(tiny_model_dir, data_file, tmp_path):
    result = run_sft(cfg(tiny_model_dir, data_file), tmp_path / "run")
    run = result.run_dir
    assert result.steps == 2
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "manifest.json", "metrics.jsonl", "adapter"}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 2 and len(manifest["data_fingerprint"]) == 64
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2]
    from safetensors.torch import load_file

    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B starts at zero
    assert json.loads((run / "adapter" / "spillover_adapter.json").read_text())["method"] == "sft"


def test_existing_run_dir_needs_overwrite(tiny_model_dir, data_file, tmp_path):
    from spillover.errors import SpilloverError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("old")
    with pytest.raises(SpilloverError, match="already holds"):
        run_sft(cfg(tiny_model_dir, data_file), tmp_path / "run")


def test_same_seed_same_adapter(tiny_model_dir, data_file, tmp_path):
    from safetensors.torch import load_file

    a = run_sft(cfg(tiny_model_dir, data_file, max_steps=1), tmp_path / "a")
    b = run_sft(cfg(tiny_model_dir, data_file, max_steps=1), tmp_path / "b")
    wa, wb = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- defense plug-in points
CALLS: dict[str, list] = {}


@pytest.fixture()
def probe_defense():
    """A test-only defense using all four hooks, recording when each is called."""
    CALLS.clear()

    class Params(Defense.Params):
        every: int = 1

    class Recorder(Defense):
        needs = frozenset({"policy_logits"})

        def transform_data(self, examples):
            CALLS.setdefault("transform", []).append(len(examples))
            return examples[:4]

        def loss_term(self, model, batch):
            assert batch.policy.logits().shape == (int(batch.trained_mask[:, 1:].sum()), model.config.vocab_size)
            lora = [p for n, p in model.named_parameters() if "lora_A" in n]
            term = sum((p ** 2).sum() for p in lora)
            CALLS.setdefault("loss", []).append(float(term.detach()))
            return term

        def hooks(self, model):
            import contextlib

            @contextlib.contextmanager
            def ctx():
                CALLS.setdefault("hooks_enter", []).append(1)
                yield
                CALLS.setdefault("hooks_exit", []).append(1)
            return ctx()

        def after_step(self, model, step):
            CALLS.setdefault("steps", []).append(step)

        def after_train(self, model):
            CALLS.setdefault("after_train", []).append(1)

    Recorder.Params = Params
    register_defense("test-recorder")(Recorder)
    yield Recorder
    _DEFENSES.pop("test-recorder", None)


def test_defense_hooks_are_called(tiny_model_dir, data_file, tmp_path, probe_defense):
    result = run_sft(cfg(tiny_model_dir, data_file, defenses=[{"name": "test-recorder", "weight": 0.5}]), tmp_path / "r")
    assert CALLS["transform"] == [8]
    assert CALLS["steps"] == [1, 2] and CALLS["after_train"] == [1]
    assert len(CALLS["hooks_enter"]) == len(CALLS["hooks_exit"]) == 2  # one forward per micro-batch, entered and left
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["n_examples"] == 4  # transform_data took effect
    logs = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("defense/test-recorder/loss" in r for r in logs if "loss" in r)
    assert manifest["defenses"]["test-recorder"]["params"] == {"weight": 0.5, "every": 1}


def test_defense_params_are_validated(tiny_model_dir, data_file, probe_defense):
    from spillover.config import load_config
    from spillover.errors import SpilloverError

    with pytest.raises(SpilloverError, match="every"):
        load_config(SFTConfig, None, {"data": "x", "defenses": [{"name": "test-recorder", "every": "often"}]})


def test_defense_with_weight_zero_equals_no_defense(tiny_model_dir, data_file, tmp_path, probe_defense):
    from safetensors.torch import load_file

    plain = run_sft(cfg(tiny_model_dir, data_file, max_steps=2), tmp_path / "plain")

    class NoTransform(probe_defense):
        def transform_data(self, examples):
            return examples

    _DEFENSES["test-recorder"] = NoTransform
    zero = run_sft(cfg(tiny_model_dir, data_file, max_steps=2, defenses=[{"name": "test-recorder", "weight": 0.0}]),
                   tmp_path / "zero")
    wa, wb = (load_file(r.adapter_dir / "adapter_model.safetensors") for r in (plain, zero))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_loss_term_reaches_the_gradient(tiny_model_dir, data_file, tmp_path, probe_defense):
    """A large penalty on lora_A must shrink it compared with plain training."""
    from safetensors.torch import load_file

    plain = run_sft(cfg(tiny_model_dir, data_file, max_steps=2), tmp_path / "plain")
    penal = run_sft(cfg(tiny_model_dir, data_file, max_steps=2, defenses=[{"name": "test-recorder", "weight": 10.0}]),
                    tmp_path / "pen")
    def norm(r):
        return sum(v.norm() for k, v in load_file(r.adapter_dir / "adapter_model.safetensors").items() if "lora_A" in k)
    assert norm(penal) < norm(plain)
