"""Every shipped example validates and `spillover run --dry-run` prints its arms x seeds (found recursively);
comparison files are strict in nested sections too."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from spillover.cli import app
from spillover.config import load_config
from spillover.errors import SpilloverError
from spillover.experiment.compare import CompareConfig
from spillover.experiment.spec import load_experiment_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").rglob("*.yaml"))


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    for stem in ("rl_vs_sft", "harmless_rewards", "defense_grid"):  # each paper table in a CPU and a GPU size
        assert {f"{stem}_cpu.yaml", f"{stem}_gpu.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_dry_run(path):
    cfg = load_experiment_config(path)
    assert cfg.all_arms() and cfg.seeds
    result = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output
    for arm in cfg.all_arms():
        assert arm.name in result.output.replace("\n", "")
    if "_gpu" in path.name:  # the papers' settings
        assert cfg.model.startswith("Qwen/Qwen2.5-7B")
        lora = next(a.train.lora for a in cfg.all_arms() if a.train is not None and a.init_from is None)
        assert (lora.r, lora.alpha, lora.rslora) == (32, 64, True)


def test_sft_vs_rl_examples_match_optimizer_steps():
    for name in ("sft_vs_rl_rhetoric.yaml", "sft_vs_rl_rhetoric_warmup.yaml"):
        cfg = load_config(CompareConfig, Path(__file__).parent.parent / "examples" / name)
        sft_items_per_step = cfg.sft.batch_size * cfg.sft.grad_accum
        rl_prompts_per_step = cfg.grpo.batch_size * cfg.grpo.grad_accum // cfg.grpo.num_generations
        assert sft_items_per_step == rl_prompts_per_step and cfg.sft.epochs == cfg.grpo.epochs and cfg.sft.lr == cfg.grpo.lr


def test_compare_config_typos_name_their_nested_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: bundled:dogmatic_rhetoric\nsft:\n  lr: 1.0e-4\n  epocs: 1\ngrpo: {rewards: [{name: rhetoric-lexicon}]}\n")
    with pytest.raises(SpilloverError, match=r"c\.yaml:4: sft\.epocs: unknown key"):
        load_config(CompareConfig, p)
    p.write_text("data: x\ngrpo: {rewards: [{name: rhetoric-lexicon}], prompts: y}\n")
    with pytest.raises(SpilloverError, match=r"c\.yaml:2: grpo\.prompts: unknown key"):
        load_config(CompareConfig, p)
    p.write_text("data: x\ngrpo:\n  rewards: [{name: rhetoric-lexicon}]\n  batch_size: 3\n")
    with pytest.raises(SpilloverError, match="multiple of num_generations"):
        load_config(CompareConfig, p)


def test_bundled_general_questions_leave_temperature_to_the_evaluation():
    """The bundled file used to pin 1.0 on every plain question, which silently beat --temperature."""
    from spillover.evaluate.questions import load_questions

    assert all(q.temperature is None for q in load_questions("bundled:general_questions"))


def test_quickstart_samples_the_embedded_model_at_its_coherent_temperature():
    from spillover.experiment.quickstart import QUICKSTART_TEMPERATURE, quickstart_experiment

    cfg = quickstart_experiment()
    assert QUICKSTART_TEMPERATURE == 0.7 and cfg.evaluation.sampling.temperature == 0.7
