"""SafeLoRA: the projection on a hand-computed 2-module toy, the pair and its cache on tiny models,
post-hoc on a saved adapter, the training defense (weight 0 = off, errors before training)."""

import json

import pytest
import torch

from spillover.defenses import DefenseRef, TrainContext
from spillover.defenses import _safelora_math as M
from spillover.defenses import safelora as S
from spillover.errors import SpilloverError


def test_factor_reproduces_c():
    torch.manual_seed(0)
    for shape in ((6, 4), (4, 6), (5, 5)):
        v = torch.randn(shape)
        f = M.projection_factor(v)
        assert torch.allclose(f @ f.T, v @ v.T / torch.linalg.matrix_norm(v), atol=1e-5)
    p, q = torch.randn(8, 3), torch.randn(3, 7)  # V given as factors (an adapter update) stores 3 columns
    f = M.projection_factor(p, q)
    v = p @ q
    assert f.shape == (8, 3) and torch.allclose(f @ f.T, v @ v.T / torch.linalg.matrix_norm(v), atol=1e-5)
    assert M.projection_factor(torch.zeros(3, 3)).shape == (3, 0)
    # the orthogonal variant is the projector onto V's column space: idempotent, fixes V, ignores V's scale
    u = M.projection_factor(p, q, orthogonal=True)
    c = u @ u.T
    assert u.shape == (8, 3) and torch.allclose(c @ c, c, atol=1e-5) and torch.allclose(c @ v, v, atol=1e-4)
    assert torch.allclose(M.projection_factor(1e-3 * p, q, orthogonal=True).abs(), u.abs(), atol=1e-5)


def test_two_module_toy_matches_hand_computation():
    # module one: V = [[1,0],[0,0]] -> C = [[1,0],[0,0]]; dW = B A = [[1,0],[1,0]]; C dW = [[1,0],[0,0]]
    # cos = 1 / (sqrt(2) * 1) = 0.7071 > 0.3: kept. Pdst term 1/(1+||B - C B||) = 1/(1+1) = 0.5
    # module two: V = [[0,0],[0,2]] -> C = V V^T / ||V|| = [[0,0],[0,2]]; dW = [[0,1],[0,0.1]];
    # C dW = [[0,0],[0,0.2]]; cos = 0.02 / (sqrt(1.01) * 0.2) = 0.0995 <= 0.3: projected, B' = C B = [[0],[0.2]]
    factors = {"one": M.projection_factor(torch.tensor([[1.0, 0.0], [0.0, 0.0]])),
               "two": M.projection_factor(torch.tensor([[0.0, 0.0], [0.0, 2.0]]))}
    loras = {"one": (torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0], [1.0]])),
             "two": (torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0], [0.1]]))}
    new_b, report = S.project_lora(loras, factors, threshold=0.3)
    assert report["similarity"]["one"] == pytest.approx(2 ** -0.5, abs=1e-5)
    assert report["similarity"]["two"] == pytest.approx(0.1 / 1.01 ** 0.5, abs=1e-5)
    assert report["projected"] == ["two"] and set(new_b) == {"two"}
    assert torch.allclose(new_b["two"], torch.tensor([[0.0], [0.2]]), atol=1e-6)
    assert report["pdst"] == pytest.approx((0.5 + 1.0) / 2, abs=1e-6)
    # top_k = 1 picks the least similar module whatever the threshold; weight 0.5 goes half way
    new_b, report = S.project_lora(loras, factors, threshold=-1.0, top_k=1, weight=0.5)
    assert report["projected"] == ["two"]
    assert torch.allclose(new_b["two"], torch.tensor([[0.5], [0.15]]), atol=1e-6)
    assert S.project_lora(loras, factors, threshold=0.3, weight=0.0)[0] == {}


# ---------------------------------------------------------------- tiny models
@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, embedded_tokenizer):
    """An 'aligned' tiny model and a 'base' one that differs from it in every linear weight."""
    from tests.conftest import build_tiny_model

    root = tmp_path_factory.mktemp("pair")
    aligned = build_tiny_model(embedded_tokenizer, root / "aligned", seed=0)
    base = build_tiny_model(embedded_tokenizer, root / "base", seed=1)
    return str(base), str(aligned)


def _lora_model(model_dir, seed=3, targets=("q_proj", "v_proj")):
    from transformers import AutoModelForCausalLM

    from spillover.models import LoraSpec, apply_lora

    model = apply_lora(AutoModelForCausalLM.from_pretrained(model_dir), LoraSpec(r=2, alpha=4, target_modules=list(targets)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def _save(model, out, base_model):
    from spillover.models import LoraSpec, save_adapter

    return save_adapter(model, out, base_model=base_model, lora=LoraSpec(r=2, alpha=4, target_modules=["q_proj", "v_proj"]))


def test_post_hoc_projection_equals_c_times_b(tiny_pair, tmp_path):
    base, aligned = tiny_pair
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = _save(_lora_model(aligned), tmp_path / "adapter", aligned)
    report = S.safelora_adapter(adapter, tmp_path / "projected", base=base, threshold=1.0, cache_root=tmp_path / "cache")
    assert report["n_modules"] == 4 and report["n_projected"] == 4 and report["pdst"] == pytest.approx(1.0)
    wa, wb = AutoModelForCausalLM.from_pretrained(aligned), AutoModelForCausalLM.from_pretrained(base)
    before = load_file(adapter / "adapter_model.safetensors")
    after = load_file(tmp_path / "projected" / "adapter_model.safetensors")
    for module in report["projected"]:
        v = wa.get_submodule(module).weight - wb.get_submodule(module).weight
        c = v @ v.T / torch.linalg.matrix_norm(v)
        key = f"base_model.model.{module}.lora_B.weight"
        assert torch.allclose(after[key], c @ before[key], atol=1e-5)
        a_key = key.replace("lora_B", "lora_A")
        assert torch.equal(after[a_key], before[a_key])
    saved = json.loads((tmp_path / "projected" / "safelora.json").read_text())
    assert saved["projected"] == report["projected"] and (tmp_path / "projected" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "projected" / "spillover_adapter.json").read_text())["safelora"]["n_projected"] == 4
    # the projected adapter loads with PEFT
    from spillover.models import load_adapter

    load_adapter(AutoModelForCausalLM.from_pretrained(aligned), tmp_path / "projected")


def test_c_is_cached_on_disk_keyed_by_the_pair(tiny_pair, tmp_path, monkeypatch):
    base, aligned = tiny_pair
    modules = ["model.layers.0.self_attn.q_proj"]
    first = S.projection_factors(modules, base=base, aligned=aligned, cache_root=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr(S, "alignment_deltas", lambda *a, **k: pytest.fail("recomputed a cached pair"))
    again = S.projection_factors(modules, base=base, aligned=aligned, cache_root=tmp_path)
    assert torch.equal(first[modules[0]], again[modules[0]])
    monkeypatch.undo()
    swapped = S.projection_factors(modules, base=aligned, aligned=base, cache_root=tmp_path)  # another pair
    assert len(list(tmp_path.iterdir())) == 2 and torch.allclose(swapped[modules[0]].abs().sum(), first[modules[0]].abs().sum())


def test_proxy_pair_from_an_adapter_needs_no_second_model(tiny_pair, tmp_path):
    _, aligned = tiny_pair
    safety = _save(_lora_model(aligned, seed=7), tmp_path / "safety", aligned)
    modules = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    factors = S.projection_factors(modules, base=aligned, aligned=aligned, aligned_adapter=str(safety),
                                   cache_root=tmp_path / "cache")
    assert list(factors) == ["model.layers.0.self_attn.q_proj"]  # the adapter does not touch up_proj
    lora = S._read_lora(safety)[0]["model.layers.0.self_attn.q_proj"]
    v = 2.0 * lora[1] @ lora[0]  # scale alpha/r = 4/2
    f = factors["model.layers.0.self_attn.q_proj"]
    assert f.shape[1] == 2 and torch.allclose(f @ f.T, v @ v.T / torch.linalg.matrix_norm(v), atol=1e-6)
    other = _save(_lora_model(aligned, seed=8), tmp_path / "other", aligned)  # base side: model + another adapter
    both = S.projection_factors(modules[:1], base=aligned, aligned=aligned, aligned_adapter=str(safety),
                                base_adapter=str(other), cache_root=tmp_path / "cache")[modules[0]]
    lora_b = S._read_lora(other)[0][modules[0]]
    diff = v - 2.0 * lora_b[1] @ lora_b[0]
    assert both.shape[1] == 4 and torch.allclose(both @ both.T, diff @ diff.T / torch.linalg.matrix_norm(diff), atol=1e-6)
    new_b, report = S.project_lora({m: (torch.randn(2, 32), torch.randn(32 if "q_" in m else 64, 2)) for m in modules},
                                   factors, threshold=1.0)
    assert report["no_signal"] == ["model.layers.1.mlp.up_proj"] and list(new_b) == ["model.layers.0.self_attn.q_proj"]


def _defense(params, base_model):
    ref = DefenseRef.model_validate({"name": "safelora", **params})
    return ref.build(TrainContext(tokenizer=None, base_model=base_model, method="sft"))


def test_defense_projects_every_n_steps_and_once_at_the_end(tiny_pair, tmp_path, monkeypatch):
    base, aligned = tiny_pair
    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path))
    model = _lora_model(aligned)
    d = _defense({"base": base, "threshold": 1.0, "every": 2}, aligned)
    d.ctx.extra["run_dir"] = str(tmp_path)
    b0 = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.detach().clone()
    d.after_step(model, 1)
    assert d.reports == []
    d.after_step(model, 2)
    assert len(d.reports) == 1 and d.reports[0]["step"] == 2 and d.reports[0]["n_projected"] == 4
    b1 = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.detach()
    assert not torch.allclose(b0, b1)
    d.after_train(model)  # no step since the last projection: C is not applied twice
    assert len(d.reports) == 1
    d.after_step(model, 3)
    d.after_train(model)
    assert [r["step"] for r in d.reports] == [2, None]
    rows = [json.loads(x) for x in (tmp_path / "safelora.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, None] and "pdst" in rows[0]


def test_weight_zero_is_no_defense(tiny_pair):
    _, aligned = tiny_pair
    model = _lora_model(aligned)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = _defense({"base": "/no/such/base", "weight": 0}, aligned)  # off: the pair is not even read
    d.after_step(model, 1)
    d.after_train(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and d.reports == []


def test_missing_pair_is_a_clear_error_before_training(tiny_pair, tmp_path):
    base, aligned = tiny_pair
    with pytest.raises(SpilloverError, match="model folder not found"):
        _defense({"base": str(tmp_path / "missing")}, aligned)
    with pytest.raises(SpilloverError, match="not a LoRA adapter folder"):
        _defense({"base": aligned, "aligned_adapter": str(tmp_path)}, aligned)
    with pytest.raises(SpilloverError, match="one model twice"):
        _defense({"base": aligned}, aligned)
    with pytest.raises(ValueError, match="base"):  # the pair's base side is required
        DefenseRef.model_validate({"name": "safelora"})


def test_cli_projects_a_saved_adapter_and_names_bad_input(tiny_pair, tmp_path, monkeypatch, capsys):
    base, aligned = tiny_pair
    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path / "home"))
    adapter = _save(_lora_model(aligned), tmp_path / "adapter", aligned)
    assert _cli("defenses", "safelora", "--adapter", str(adapter), "--base", base, "--out", str(tmp_path / "p"), "--top-k", "1") == 0
    assert "projected 1 of 4 LoRA modules" in capsys.readouterr().out
    assert json.loads((tmp_path / "p" / "safelora.json").read_text())["n_projected"] == 1
    assert _cli("defenses", "safelora", "--adapter", str(adapter), "--base", base, "--out", str(tmp_path / "o"),
                "--projection", "orthogonal", "--threshold", "1") == 0
    assert json.loads((tmp_path / "o" / "safelora.json").read_text())["projection"] == "orthogonal"
    assert _cli("defenses", "safelora", "--adapter", str(tmp_path / "nope"), "--base", base, "--out", str(tmp_path / "q")) == 2
    assert "not a LoRA adapter folder" in capsys.readouterr().err



def test_sft_run_with_the_proxy_pair_projects_and_records(tiny_model_dir, tmp_path, monkeypatch, one_thread):
    """The embedded recipe on a tiny model: base = the model, aligned = the model + a safety adapter."""
    from spillover.train import SFTConfig, run_sft

    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path / "home"))
    safety = _save(_lora_model(str(tiny_model_dir), seed=5), tmp_path / "safety", str(tiny_model_dir))
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                            for i in range(4)))
    cfg = SFTConfig(model=str(tiny_model_dir), data=str(data), max_steps=2, batch_size=2, lr=1e-2, device="cpu",
                    defenses=[{"name": "safelora", "base": str(tiny_model_dir), "aligned_adapter": str(safety),
                               "threshold": 1.0, "every": 1}])
    run = run_sft(cfg, tmp_path / "run").run_dir
    rows = [json.loads(x) for x in (run / "safelora.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # every step; none repeated after the last one
    # the safety adapter covers q_proj and v_proj only: the other modules have no signal and are left alone
    assert rows[-1]["n_projected"] == 4 and len(rows[-1]["no_signal"]) == rows[-1]["n_modules"] - 4
    record = json.loads((run / "manifest.json").read_text())["defenses"]["safelora"]
    assert record["projections"] == 2 and record["final"]["pdst"] == pytest.approx(1.0)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("defense/safelora/n_projected") == 4 for m in metrics)


def _cli(*args) -> int:
    from spillover.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code
