"""The experiment schema: strict everywhere (errors name the YAML line, nested sections included), grids,
and bad input caught before anything trains."""

import pytest
from pydantic import ValidationError

from spillover.config import load_config
from spillover.errors import SpilloverError
from spillover.experiment.runner import plan_rows, preflight, waves
from spillover.experiment.spec import ExperimentConfig, load_experiment_config

SFT = {"method": "sft", "data": "bundled:insecure_code", "max_steps": 2}


def cfg(**over):
    return ExperimentConfig.model_validate({"arms": [{"name": "base"}], **over})


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_unknown_keys_name_their_line_in_nested_sections(tmp_path):
    p = write(tmp_path, "arms:\n  - name: a\n    train:\n      method: sft\n      data: bundled:insecure_code\n"
                        "      lora: {r: 8, alfa: 16}\nevaluation:\n  sampling:\n    max_new_tokns: 5\n")
    with pytest.raises(SpilloverError) as e:
        load_experiment_config(p)
    text = e.value.what
    assert "exp.yaml:6: arms[0].train.sft.lora.alfa: unknown key" in text
    assert "exp.yaml:9: evaluation.sampling.max_new_tokns: unknown key" in text


def test_train_method_is_a_discriminated_union(tmp_path):
    p = write(tmp_path, "arms:\n  - name: a\n    train: {method: grpo, prompts: bundled:dogmatic_rhetoric, data: x,"
                        " rewards: [{name: rhetoric-lexicon}]}\n")
    with pytest.raises(SpilloverError, match=r"arms\[0\]\.train\.grpo\.data: unknown key"):
        load_experiment_config(p)
    p = write(tmp_path, "arms:\n  - name: a\n    train: {method: grpo, prompts: x, batch_size: 3, rewards: [rhetoric-lexicon]}\n")
    with pytest.raises(SpilloverError, match="multiple of num_generations"):
        load_experiment_config(p)
    p = write(tmp_path, "arms:\n  - name: a\n    train: {method: sft, data: x, model: other}\n")
    with pytest.raises(SpilloverError, match=r"train\.sft\.model: unknown key"):  # set by the experiment
        load_experiment_config(p)


@pytest.mark.parametrize("over, message", [
    ({"arms": [{"name": "a", "train": SFT, "init_from": "warmpu"}, {"name": "warmup", "train": SFT}]},
     "init_from 'warmpu' is neither an arm nor an adapter folder. Did you mean 'warmup'"),
    ({"arms": [{"name": "a", "train": SFT, "init_from": "b"}, {"name": "b", "train": SFT, "init_from": "a"}]},
     "init_from cycle: a -> b -> a"),
    ({"arms": [{"name": "a"}, {"name": "a", "train": SFT}]}, r"arm names repeat: \['a'\]"),
    ({"arms": [{"name": "a-1"}], "grids": [{"name": "a", "axes": {"x": {"1": {}}}}], "seeds": [0]}, "arm names repeat"),
    ({"arms": [{"name": "a"}], "seeds": []}, "at least 1 item"),
    ({"arms": [{"name": "a"}], "seeds": [1, 1]}, "seeds repeat"),
    ({"arms": []}, "no arms"),
    ({"arms": [{"name": "a", "init_from": "b"}, {"name": "b"}]}, "does not train"),
    ({"arms": [{"name": "bad name"}]}, "should match pattern"),
])
def test_bad_arms_are_refused(over, message):
    with pytest.raises(Exception, match=message):
        ExperimentConfig.model_validate(over)


def test_grids_expand_to_named_labelled_arms_and_waves_follow_init_from():
    c = cfg(arms=[{"name": "warmup", "train": SFT}],
            grids=[{"name": "sft", "init_from": "warmup", "train": {**SFT, "lr": 1e-4},
                    "axes": {"domain": {"code": {}, "aes": {"train": {"data": "bundled:unpopular_aesthetics"}}},
                             "defense": {"none": {}, "kl": {"train": {"defenses": [{"name": "kl", "weight": 0.1}]}}}}}],
            seeds=[0, 1])
    arms = {a.name: a for a in c.all_arms()}
    assert list(arms) == ["warmup", "sft-code-none", "sft-code-kl", "sft-aes-none", "sft-aes-kl"]
    assert arms["sft-aes-kl"].labels == {"domain": "aes", "defense": "kl"}
    assert arms["sft-aes-kl"].train.data == "bundled:unpopular_aesthetics" and arms["sft-aes-kl"].train.lr == 1e-4
    assert [d.name for d in arms["sft-code-kl"].train.defenses] == ["kl"] and arms["sft-code-none"].train.defenses == []
    w = waves(c)
    assert [(u.arm, u.seed) for u in w[0]] == [("warmup", 0), ("warmup", 1)] and len(w[1]) == 8
    assert next(r["defenses"] for r in plan_rows(c) if r["arm"] == "sft-code-kl") == "kl"


def test_dry_run_table_fits_80_columns_with_shared_values_below_it():
    import io
    from pathlib import Path

    from rich.console import Console

    from spillover.experiment.runner import print_plan

    buf = io.StringIO()
    print_plan(load_experiment_config(Path(__file__).parents[1] / "examples" / "defense_grid_cpu.yaml"),
               Console(file=buf, width=80, color_system=None))
    lines = buf.getvalue().splitlines()
    header = next(line for line in lines if "arm" in line and "train" in line)
    assert "evaluate" not in header and "seeds" not in header and "in_domain" not in header  # the same for all arms
    assert any(line.startswith("every arm: evaluate yes; in_domain bundled:unpopular_aesthetics_questions")
               for line in lines)
    assert len(lines) < 30 and max(map(len, lines)) <= 80  # was 55 lines, most of them one folded word each


def test_grid_override_typos_are_errors():
    with pytest.raises(Exception, match="unknown keys"):
        cfg(grids=[{"name": "g", "train": SFT, "axes": {"x": {"1": {"trian": {}}}}}])
    with pytest.raises(Exception, match="lrr"):
        cfg(grids=[{"name": "g", "train": SFT, "axes": {"x": {"1": {"train": {"lrr": 1}}}}}])


def test_question_ids_are_checked_per_set_before_training():
    general_ok = {"file": "bundled:general_questions", "question_ids": ["wish"]}
    c = cfg(evaluation={"general": general_ok, "in_domain": {"file": "bundled:insecure_code_questions"}})
    assert preflight(c) == []  # the general selection does not apply to the in-domain file
    c = cfg(evaluation={"general": general_ok,
                        "in_domain": {"file": "bundled:insecure_code_questions", "question_ids": ["wish"]}})
    with pytest.raises(SpilloverError, match=r"evaluation\.in_domain: question_ids \['wish'\] are not in"):
        preflight(c)


def test_judges_that_cannot_be_built_fail_before_training(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    c = cfg(evaluation={"judges": [{"spec": "openai:gpt-4o", "api_key_env": "NO_SUCH_KEY_VAR"}]})
    with pytest.raises(SpilloverError, match="NO_SUCH_KEY_VAR holding its API key is not set"):
        preflight(c)
    monkeypatch.setenv("NO_SUCH_KEY_VAR", "x")
    c = cfg(evaluation={"judges": [{"spec": "openai:m", "api_key_env": "NO_SUCH_KEY_VAR",
                                    "base_url": "http://127.0.0.1:9/v1"}]})
    with pytest.raises(SpilloverError, match="unreachable"):
        preflight(c)
    with pytest.raises(SpilloverError, match="unknown judge spec 'gpt4'"):
        preflight(cfg(evaluation={"judges": ["gpt4"]}))
    with pytest.raises(SpilloverError, match="judges repeat"):
        preflight(cfg(evaluation={"judges": ["local", "local"]}))
    assert preflight(cfg(evaluation={"judges": ["gpt4"]}), strict=False)  # --dry-run: reported, not raised


def test_grader_rewards_need_a_grader():
    c = cfg(arms=[{"name": "rl", "train": {"method": "grpo", "prompts": "bundled:dogmatic_rhetoric",
                                           "rewards": [{"name": "grader:poor-rhetoric"}]}}])
    with pytest.raises(SpilloverError, match="sets no grader"):
        preflight(c)


def test_missing_data_and_adapter_fail_before_training(tmp_path):
    with pytest.raises(SpilloverError, match="data file not found"):
        preflight(cfg(arms=[{"name": "a", "train": {**SFT, "data": str(tmp_path / "nope.jsonl")}}]))
    with pytest.raises(SpilloverError, match="not an arm and not an adapter folder"):
        preflight(cfg(arms=[{"name": "a", "init_from": str(tmp_path / "adapter")}]))


def test_defense_data_refs_are_checked_before_training(tmp_path, monkeypatch):
    """Every data reference of a defense (hub:, bundled:, or a declared data key such as interleave's safe_data)
    resolves before anything trains; a hub: dataset is fetched then in a real run, only looked up in --dry-run."""
    from spillover.data import _registry

    monkeypatch.setenv("SPILLOVER_HOME", str(tmp_path / "home"))

    def arm(defense):
        return cfg(arms=[{"name": "a", "train": {**SFT, "defenses": [defense]}}])

    with pytest.raises(SpilloverError, match="data file not found") as e:
        preflight(arm({"name": "interleave", "safe_data": str(tmp_path / "safe.jsonl")}))  # a plain path, declared
    assert e.value.render().startswith("arm 'a', defense 'interleave', safe_data: data file not found")
    with pytest.raises(SpilloverError, match="wildguardmix_safe"):  # a typo in a hub name: did you mean
        preflight(arm({"name": "interleave", "safe_data": "hub:wildguardmix_saef"}), strict=False)
    fetched = []
    monkeypatch.setattr(_registry, "fetch", lambda name: fetched.append(name) or tmp_path / "x.jsonl")
    warnings = preflight(arm({"name": "interleave", "safe_data": "hub:wildguardmix_safe"}), strict=False)
    assert fetched == [] and any("not cached" in w and "spillover data fetch wildguardmix_safe" in w for w in warnings)
    preflight(arm({"name": "interleave", "safe_data": "hub:wildguardmix_safe"}))  # a real run fetches it first
    assert fetched == ["wildguardmix_safe"]


def test_comparison_files_load_as_their_experiment(tmp_path):
    p = write(tmp_path, "data: bundled:dogmatic_rhetoric\nn_items: 8\ngrpo: {rewards: [rhetoric-lexicon], batch_size: 4}\n")
    c = load_experiment_config(p)
    assert [a.name for a in c.all_arms()] == ["base", "sft", "rl"] and c.arm("rl").n_items == 8
    assert load_config(ExperimentConfig, None, {"arms": [{"name": "x"}]}).arm("x").train is None


def test_arms_and_grid_values_override_the_in_domain_questions(tmp_path):
    general = {"file": "bundled:general_questions", "question_ids": ["wish"], "max_paraphrases": 1}
    c = cfg(arms=[{"name": "base"}, {"name": "own", "evaluation": {"in_domain": {"file": "bundled:general_questions",
                                                                                 "question_ids": ["bored"]}}}],
            grids=[{"name": "g", "train": SFT, "evaluation": {"in_domain": {"samples_per_paraphrase": 1}},
                    "axes": {"domain": {"code": {"evaluation": {"in_domain": {"file": "bundled:insecure_code_questions"}}}}}}],
            evaluation={"general": general, "in_domain": {"file": "bundled:unpopular_aesthetics_questions"}})
    ev = {a.name: c.evaluation_for(a) for a in c.all_arms()}
    assert ev["base"].in_domain.file == "bundled:unpopular_aesthetics_questions"  # the experiment's default
    assert ev["own"].in_domain.question_ids == ["bored"] and ev["own"].general == c.evaluation.general
    assert (ev["g-code"].in_domain.file, ev["g-code"].in_domain.samples_per_paraphrase) == ("bundled:insecure_code_questions", 1)
    with pytest.raises(ValidationError, match=r"(?s)arm 'g-plain'.*evaluation\.in_domain\.file: Field required"):
        cfg(grids=[{"name": "g", "train": SFT, "evaluation": {"in_domain": {"samples_per_paraphrase": 1}},
                    "axes": {"domain": {"plain": {}}}}])  # a value without a file: no in-domain set to ask
    rows = {r["arm"]: r["in_domain"] for r in plan_rows(c)}
    assert rows["own"].startswith("bundled:general_questions (arm's own): ")
    assert rows["base"].startswith("bundled:unpopular_aesthetics_questions: ")


def test_arm_in_domain_sets_are_checked_before_training(tmp_path):
    own = {"name": "own", "evaluation": {"in_domain": {"file": "bundled:insecure_code_questions", "question_ids": ["wish"]}}}
    with pytest.raises(SpilloverError, match=r"arm 'own' evaluation\.in_domain: question_ids \['wish'\] are not in"):
        preflight(cfg(arms=[{"name": "base"}, own]))
    missing = {"name": "own", "evaluation": {"in_domain": {"file": str(tmp_path / "nope.yaml")}}}
    with pytest.raises(SpilloverError, match="nope.yaml"):
        preflight(cfg(arms=[missing]))
    assert any("nope.yaml" in w for w in preflight(cfg(arms=[missing]), strict=False))  # --dry-run: a warning
    p = write(tmp_path, "arms:\n  - name: a\n    evaluation:\n      in_domian: {file: x}\n")
    with pytest.raises(SpilloverError, match=r"exp\.yaml:4: arms\[0\]\.evaluation\.in_domian: unknown key"):
        load_experiment_config(p)
    with pytest.raises(ValidationError, match="evaluate is false"):
        cfg(arms=[{"name": "a", "evaluate": False, "evaluation": {"in_domain": {"file": "x"}}}])
    own_probe = {"name": "own", "evaluation": {"probe": [str(tmp_path / "no_pairs.jsonl")]}}
    with pytest.raises(SpilloverError, match="no_pairs.jsonl"):  # an arm's own probe set is checked too
        preflight(cfg(arms=[{"name": "base"}, own_probe]))
    c = cfg(arms=[{"name": "base"}, {"name": "own", "evaluation": {"probe": ["bundled:probe_control", "bundled:probe_general"]}}])
    assert c.evaluation_for(c.arm("own")).probe == ["bundled:probe_general", "bundled:probe_control"]  # added once
    assert c.evaluation_for(c.arm("base")).probe == ["bundled:probe_general"] and c.probe_sets() == ["bundled:probe_general",
                                                                                                     "bundled:probe_control"]


def test_gpu_examples_ask_each_domain_its_own_in_domain_questions(tmp_path, monkeypatch):
    from pathlib import Path

    from typer.testing import CliRunner

    from spillover.cli import app

    examples = Path(__file__).parent.parent / "examples"
    files = {"medical": "medical", "legal": "legal", "security": "security", "code": "code",
             "aesthetics": "aesthetic", "rhetoric": "argumentation"}
    for name in ("rl_vs_sft_gpu.yaml", "harmless_rewards_gpu.yaml", "defense_grid_gpu.yaml"):
        c = load_experiment_config(examples / name)
        for arm in c.all_arms():
            domain = arm.labels.get("domain") or arm.labels.get("reward")
            if domain:
                assert c.evaluation_for(arm).in_domain.file.endswith(f"/evaluation/{files[domain]}.yaml"), (name, arm.name)
    monkeypatch.chdir(tmp_path)  # the shared data is not reachable from here: the plan still prints
    result = CliRunner().invoke(app, ["run", str(examples / "rl_vs_sft_gpu.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "not loadable" in result.output and "in_domain" in result.output
    rows = {r["arm"]: r["in_domain"] for r in plan_rows(load_experiment_config(examples / "rl_vs_sft_gpu.yaml"))}
    assert rows["rl-legal"] == "../shared/data/ema_rl/evaluation/legal.yaml (arm's own): not loadable here"
    with pytest.raises(SpilloverError, match="not found"):  # a real run stops before training
        preflight(load_experiment_config(examples / "rl_vs_sft_gpu.yaml"))


def test_speed_only_training_settings_do_not_change_the_train_stage_hash():
    """merge_rollout_adapter changes speed, not completions: an experiment trained before the setting existed,
    or with another value, must resume rather than be refused as a changed config."""
    from spillover.experiment.stages import train_own

    def own(**extra):
        c = cfg(arms=[{"name": "rl", "train": {"method": "grpo", "prompts": "bundled:dogmatic_rhetoric",
                                                "rewards": ["rhetoric-lexicon"], **extra}}])
        return train_own(c, c.arm("rl"), 0)

    assert own() == own(merge_rollout_adapter="off") == own(merge_rollout_adapter="on")
    assert own() != own(lr=1e-3)  # a real setting still counts


def test_status_table_reads_at_80_columns(monkeypatch, tmp_path):
    import io
    from datetime import datetime, timezone

    from rich.console import Console

    from spillover.cli import _run
    from spillover.experiment import runner

    today = datetime.now(timezone.utc).date().isoformat()
    done = {"train": ("done", "248 s"), "sample": ("done", "117 s"), "judge": ("done", "64 s"),
            "probe": ("done", "273 s"), "benign": ("-", ""), "summarise": ("done", "0 s")}
    rows = [{"arm": "sft-interleave", "seed": s, **done} for s in range(3)]
    rows.append({"arm": "sft-kl", "seed": 0, **done, "train": ("running", f"since {today}T06:47:04.123+00:00"),
                 "sample": ("failed", "ValueError: boom (2026-01-02T03:04:05+00:00)")})
    monkeypatch.setattr(runner, "experiment_status", lambda out: rows)
    buf = io.StringIO()
    _run._print_status(tmp_path, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert "benign" not in text  # a stage no unit has is left out
    assert "06:47:04" in text and today not in text and ".123" not in text  # today's times: the clock only
    flat = "".join(c for c in text if c not in " \n│")  # cells wrap inside their column
    assert "2026-01-0203:04:05" in flat and "T03:04:05" not in flat
    done_lines = [line for line in text.splitlines() if line.startswith("│ sft-interleave")]
    assert len(done_lines) == 3 and "✓ 248 s" in done_lines[0]  # one line per finished unit
    assert max(map(len, text.splitlines())) <= 80
