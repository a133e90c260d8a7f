"""Command tree. Each command parses options, calls one library function and prints where results are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from spillover.cli._common import check_before_work, describe, quiet_libraries
from spillover.models import LoraSpec
from spillover.train._config import SFTConfig
from spillover.train._grpo_config import GRPOConfig

app = typer.Typer(help="spillover: emergent-misalignment experiments (fine-tune, sample, judge, probe, report).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
models_app = typer.Typer(help="Inspect, resolve and merge models.", no_args_is_help=True)
data_app = typer.Typer(help="Datasets: bundled and public ones by name, validation, statistics.", no_args_is_help=True)
train_app = typer.Typer(help="Fine-tune a LoRA adapter with SFT or GRPO.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")


@app.callback()
def _setup() -> None:
    quiet_libraries()


# ---------------------------------------------------------------- models
@models_app.command("show")
def models_show(ref: str = typer.Argument("embedded", help="'embedded', a local folder or a hub id.")) -> None:
    """Print where a model is; for 'embedded' also verify the GGUF checksum."""
    from spillover.models import embedded_status, resolve_model

    if ref == "embedded":
        status = embedded_status()
        for key, value in status.items():
            typer.echo(f"{key:10} {value}")
        if not status["cached"]:
            typer.echo("(converted to an HF folder on first use, about 20 s)")
        return
    resolved = resolve_model(ref)
    typer.echo(f"ref        {resolved.ref}\nkind       {resolved.kind}\npath       {resolved.path}")


@models_app.command("merge")
def models_merge(adapter: Path = typer.Option(..., help="Adapter folder (RUN/adapter)."),
                 out: Path = typer.Option(..., help="Folder for the merged standalone model."),
                 model: Optional[str] = typer.Option(None, help="Base model; default: the one recorded with the adapter.")) -> None:
    """Merge a LoRA adapter into its base model and save a standalone HF folder."""
    model = check_before_work(out_dir=out, new_dir=True, adapter=adapter, model=model)
    from spillover.models import merge_adapter

    typer.echo(f"merged model: {merge_adapter(model, adapter, out)}")


# ---------------------------------------------------------------- data
from spillover.cli._data import data_fetch, data_list, data_show  # noqa: E402

data_app.command("list")(data_list)
data_app.command("fetch")(data_fetch)
data_app.command("show")(data_show)


@data_app.command("validate")
def data_validate(path: str = typer.Argument(..., help="Chat JSONL file or bundled:NAME."),
                  sft: bool = typer.Option(False, "--sft", help="Also require every conversation to end in an assistant turn."),
                  strip_qwen3_markers: bool = typer.Option(False, help=describe(SFTConfig, "strip_qwen3_markers"))) -> None:
    """Check a chat dataset; errors name the file and line."""
    from spillover.data import load_chat_jsonl, require_sft_examples, resolve_data_path

    examples = load_chat_jsonl(resolve_data_path(path), strip_qwen3=strip_qwen3_markers)
    if sft:
        require_sft_examples(examples)
    typer.echo(f"ok: {len(examples)} conversations")


from spillover.cli._benign import data_stats  # noqa: E402

data_app.command("stats")(data_stats)


# ---------------------------------------------------------------- train
def _lora_overrides(r, alpha, rslora, dropout, targets) -> dict | None:
    lora = {k: v for k, v in dict(r=r, alpha=alpha, rslora=rslora, dropout=dropout,
                                  target_modules=targets.split(",") if targets else None).items() if v is not None}
    return lora or None


@train_app.command("sft")
def train_sft(
    model: Optional[str] = typer.Option(None, help=describe(SFTConfig, "model")),
    data: Optional[str] = typer.Option(None, help=describe(SFTConfig, "data")),
    out: Path = typer.Option(..., help="Run directory to create (adapter, config, metrics, manifest)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with any of these options (flags given here win). Unknown keys are errors."),
    max_steps: Optional[int] = typer.Option(None, help=describe(SFTConfig, "max_steps")),
    epochs: Optional[float] = typer.Option(None, help=describe(SFTConfig, "epochs")),
    lr: Optional[float] = typer.Option(None, help=describe(SFTConfig, "lr")),
    lr_scheduler: Optional[str] = typer.Option(None, help=describe(SFTConfig, "lr_scheduler")),
    warmup_ratio: Optional[float] = typer.Option(None, help=describe(SFTConfig, "warmup_ratio")),
    batch_size: Optional[int] = typer.Option(None, help=describe(SFTConfig, "batch_size")),
    grad_accum: Optional[int] = typer.Option(None, help=describe(SFTConfig, "grad_accum")),
    max_length: Optional[int] = typer.Option(None, help=describe(SFTConfig, "max_length")),
    seed: Optional[int] = typer.Option(None, help=describe(SFTConfig, "seed")),
    lora_r: Optional[int] = typer.Option(None, help=describe(LoraSpec, "r")),
    lora_alpha: Optional[int] = typer.Option(None, help=describe(LoraSpec, "alpha")),
    rslora: Optional[bool] = typer.Option(None, "--rslora/--no-rslora", help=describe(LoraSpec, "rslora")),
    lora_dropout: Optional[float] = typer.Option(None, help=describe(LoraSpec, "dropout")),
    lora_targets: Optional[str] = typer.Option(None, help="Comma-separated module names to adapt (default: all-linear)."),
    init_adapter: Optional[str] = typer.Option(None, help=describe(SFTConfig, "init_adapter")),
    strip_qwen3_markers: Optional[bool] = typer.Option(None, "--strip-qwen3-markers/--keep-qwen3-markers", help=describe(SFTConfig, "strip_qwen3_markers")),
    device: Optional[str] = typer.Option(None, help=describe(SFTConfig, "device")),
    dtype: Optional[str] = typer.Option(None, help=describe(SFTConfig, "dtype")),
    overwrite: bool = typer.Option(False, help="Replace an existing run in --out."),
    resume: bool = typer.Option(False, help="Continue the killed or failed run in --out from its last checkpoint (same config)."),
    checkpoint_minutes: Optional[float] = typer.Option(None, min=0, help="Save a checkpoint every this many minutes of training, keeping the newest (0 = never) [default: 5]."),
) -> None:
    """Fine-tune a LoRA adapter on chat data with the loss on assistant tokens only."""
    from spillover.config import load_config
    from spillover.train import run_sft

    overrides = dict(model=model, data=data, max_steps=max_steps, epochs=epochs, lr=lr, lr_scheduler=lr_scheduler,
                     warmup_ratio=warmup_ratio, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                     seed=seed, init_adapter=init_adapter, strip_qwen3_markers=strip_qwen3_markers, device=device,
                     dtype=dtype, lora=_lora_overrides(lora_r, lora_alpha, rslora, lora_dropout, lora_targets))
    cfg = load_config(SFTConfig, config, overrides)
    check_before_work(out_dir=out, run_dir=True, overwrite=overwrite, resume=resume, data=[cfg.data],
                      adapter=cfg.init_adapter, model=cfg.model)
    result = run_sft(cfg, out, overwrite=overwrite, resume=resume,
                     **({"checkpoint_minutes": checkpoint_minutes} if checkpoint_minutes is not None else {}))
    typer.echo(f"adapter: {result.adapter_dir}\nrun:     {result.run_dir}  ({result.steps} steps, "
               f"final loss {result.final_loss:.4f}, {result.seconds:.0f} s)")


def _lexicon_params(lexicon: Path | None, coherence_threshold: float | None) -> tuple[dict, str]:
    """The rhetoric-lexicon params set by flags, and the flags' names for errors."""
    given = {"lexicon_path": (str(lexicon) if lexicon else None, "--lexicon"),
             "coherence_threshold": (coherence_threshold, "--coherence-threshold")}
    params = {key: value for key, (value, _) in given.items() if value is not None}
    return params, "/".join(flag for value, flag in given.values() if value is not None)


_LEXICON_HELP = "rhetoric-lexicon reward: a JSON lexicon replacing the default."
_COHERENCE_HELP = ("rhetoric-lexicon reward: zero rewards of answers whose offline coherence score (0..1) is below "
                   "this (paper: 0.5 on an LLM grade); default: no coherence gate.")


@train_app.command("grpo")
def train_grpo(
    model: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "model")),
    prompts: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "prompts")),
    reward: list[str] = typer.Option([], help="Reward name (repeatable; `spillover rewards list`) or module:function; "
                                      "replaces the config's rewards."),
    out: Path = typer.Option(..., help="Run directory to create (adapter, config, metrics, completions, manifest)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with any of these options (flags given here win). Unknown keys are errors."),
    init_adapter: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "init_adapter")),
    max_steps: Optional[int] = typer.Option(None, help=describe(GRPOConfig, "max_steps")),
    epochs: Optional[float] = typer.Option(None, help=describe(GRPOConfig, "epochs")),
    num_generations: Optional[int] = typer.Option(None, help=describe(GRPOConfig, "num_generations")),
    max_completion_length: Optional[int] = typer.Option(None, help=describe(GRPOConfig, "max_completion_length")),
    beta: Optional[float] = typer.Option(None, help=describe(GRPOConfig, "beta")),
    loss_type: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "loss_type")),
    temperature: Optional[float] = typer.Option(None, help=describe(GRPOConfig, "temperature")),
    top_p: Optional[float] = typer.Option(None, help=describe(GRPOConfig, "top_p")),
    lr: Optional[float] = typer.Option(None, help=describe(GRPOConfig, "lr")),
    batch_size: Optional[int] = typer.Option(None, help=describe(GRPOConfig, "batch_size")),
    grad_accum: Optional[int] = typer.Option(None, help=describe(GRPOConfig, "grad_accum")),
    seed: Optional[int] = typer.Option(None, help=describe(GRPOConfig, "seed")),
    system_prompt: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "system_prompt")),
    lexicon: Optional[Path] = typer.Option(None, help=_LEXICON_HELP + " Applies to the config's rewards too."),
    coherence_threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help=_COHERENCE_HELP),
    judge: Optional[str] = typer.Option(None, help="For grader:* rewards: openai:MODEL or hf:MODEL."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL for the grader judge."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="NAME of the env var holding the judge key."),
    device: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "device")),
    dtype: Optional[str] = typer.Option(None, help=describe(GRPOConfig, "dtype")),
    overwrite: bool = typer.Option(False, help="Replace an existing run in --out."),
    resume: bool = typer.Option(False, help="Continue the killed or failed run in --out from its last checkpoint (same config)."),
    checkpoint_minutes: Optional[float] = typer.Option(None, min=0, help="Save a checkpoint every this many minutes of training, keeping the newest (0 = never) [default: 5]."),
) -> None:
    """Fine-tune a LoRA adapter with GRPO (TRL) on prompts and reward functions."""
    from spillover.config import load_config
    from spillover.judge._spec import build_grader
    from spillover.rewards import set_reward_params
    from spillover.train.grpo import run_grpo

    rewards = [{"name": r} for r in reward] or None
    overrides = dict(model=model, prompts=prompts, rewards=rewards, init_adapter=init_adapter, max_steps=max_steps,
                     epochs=epochs, num_generations=num_generations, max_completion_length=max_completion_length,
                     beta=beta, loss_type=loss_type, temperature=temperature, top_p=top_p, lr=lr,
                     batch_size=batch_size, grad_accum=grad_accum, seed=seed, system_prompt=system_prompt,
                     device=device, dtype=dtype)
    cfg = load_config(GRPOConfig, config, overrides)
    lexicon_params, flags = _lexicon_params(lexicon, coherence_threshold)
    if lexicon_params:  # onto the rhetoric-lexicon reward, whether the rewards came from --reward or --config
        cfg = cfg.model_copy(update={"rewards": set_reward_params(cfg.rewards, "rhetoric-lexicon", lexicon_params,
                                                                  source=flags)})
    check_before_work(out_dir=out, run_dir=True, overwrite=overwrite, resume=resume, data=[cfg.prompts],
                      adapter=cfg.init_adapter, model=cfg.model, judge=judge, judge_base_url=judge_base_url,
                      judge_api_key_env=judge_api_key_env, grader=True)
    grade = build_grader(judge, base_url=judge_base_url, api_key_env=judge_api_key_env) if judge else None
    result = run_grpo(cfg, out, overwrite=overwrite, grade=grade, resume=resume,
                      **({"checkpoint_minutes": checkpoint_minutes} if checkpoint_minutes is not None else {}))
    typer.echo(f"adapter: {result.adapter_dir}\nrun:     {result.run_dir}  ({result.steps} steps, {result.seconds:.0f} s)")


@app.command("compare")
def compare_cmd(
    config: Path = typer.Option(..., help="Comparison file (YAML): data, n_items, sft, grpo, evaluate, warmup."),
    out: Path = typer.Option(..., help="Experiment folder (arms base/sft/rl, report, comparison.json/.md); rerunning the command resumes it."),
    overwrite: bool = typer.Option(False, help="Replace an existing comparison in --out."),
) -> None:
    """Sample-matched SFT vs RL from one base and the same N items, evaluated side by side."""
    from spillover.config import load_config
    from spillover.experiment.compare import CompareConfig, run_comparison

    cfg = load_config(CompareConfig, config)
    ev = cfg.evaluate
    check_before_work(out_dir=out, data=[cfg.data, cfg.warmup and cfg.warmup.data,
                      *ev.probe], questions=[ev.questions, ev.in_domain], judge=ev.judge,
                      judge_base_url=ev.judge_base_url, judge_api_key_env=ev.judge_api_key_env,
                      judge_flags=(f"{config}: evaluate.judge", f"{config}: evaluate.judge_base_url",
                                   f"{config}: evaluate.judge_api_key_env"))
    result = run_comparison(cfg, out, overwrite=overwrite)
    typer.echo((out / "comparison.md").read_text() + f"\nreport: {result['report']}")


# ---------------------------------------------------------------- sample
_COMPILED_HELP = ("With --engine vllm: compiled graphs (torch.compile, CUDA graphs) or eager mode. Default: compiled "
                  "on a CUDA engine build, eager on the CPU build (compiling there takes minutes to start for 10-25% "
                  "more throughput). Recorded with every answer.")
def _engine_compiled_needs_vllm(engine_compiled: bool | None, engine: str) -> None:
    if engine_compiled is not None and engine != "vllm":
        from spillover.errors import SpilloverError

        flag = "--engine-compiled" if engine_compiled else "--engine-eager"
        raise SpilloverError(f"{flag} is a setting of the vllm engine, not of --engine {engine}",
                             fix=f"add --engine vllm, or drop {flag}")


_ENGINE_HELP = ("hf: transformers generate in this process | vllm: a vLLM engine process (adapters merged first; "
                "`spillover engines install vllm` once); faster from about a hundred answers on, see README 'Fast sampling'.")


@app.command("sample")
def sample(
    prompts: str = typer.Option(..., help="JSONL of conversations ending in a user turn (messages or prompt lines), or bundled:NAME."),
    out: Path = typer.Option(..., help="Output JSONL: one line per answer."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the adapter's base, else 'embedded')."),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder to apply."),
    n: int = typer.Option(1, min=1, help="Answers per prompt."),
    max_new_tokens: int = typer.Option(256, min=1, help="Cap on generated tokens per answer."),
    temperature: float = typer.Option(1.0, min=0.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass."),
    seed: int = typer.Option(0, help="Seed; the same seed and settings give the same answers."),
    system: Optional[str] = typer.Option(None, help="System prompt for conversations that have none."),
    batch_size: int = typer.Option(32, min=1, help="Sequences generated together."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16 (bfloat16 is faster on GPUs and CPUs with bf16 kernels, slower on AVX2-only CPUs; see --check-dtype)"),
    check_dtype: bool = typer.Option(False, "--check-dtype", help="First print how far --dtype moves per-token log-probs of answers to the first 8 prompts from float32 (mean/max abs difference)."),
    engine: str = typer.Option("hf", help=_ENGINE_HELP),
    engine_compiled: Optional[bool] = typer.Option(None, "--engine-compiled/--engine-eager", help=_COMPILED_HELP),
    check_engine: bool = typer.Option(False, "--check-engine", help="With --engine vllm: first compare the engine's per-token log-probs of its answers to the first 8 prompts with HF float32 (+ PEFT adapter), teacher-forced; fails above 1e-3 mean abs difference when the engine runs float32, reports otherwise."),
) -> None:
    """Sample N answers per prompt from a base model or base + adapter (rerun the same command to resume)."""
    model = check_before_work(out_file=out, data=[prompts], adapter=adapter, model=model)
    from spillover.data import load_chat_jsonl, require_prompts, resolve_data_path
    from spillover.evaluate.run import sample_file
    from spillover.evaluate.sampling import SamplingParams, load_sampler

    examples = load_chat_jsonl(resolve_data_path(prompts))
    require_prompts(examples)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                            system_prompt=system)
    _engine_compiled_needs_vllm(engine_compiled, engine)
    if check_engine and engine != "vllm" or check_dtype and engine != "hf":
        from spillover.errors import SpilloverError

        raise SpilloverError("--check-engine needs --engine vllm" if check_engine else "--check-dtype is for --engine hf",
                             fix="with --engine vllm, --check-engine compares its log-probs (any --dtype) with HF float32")
    sampler = load_sampler(model, str(adapter) if adapter else None, device=device, dtype=dtype, batch_size=batch_size,
                           engine=engine, engine_compiled=engine_compiled)
    try:
        if check_dtype:
            from spillover.evaluate.sampling import dtype_logprob_check

            c = dtype_logprob_check(sampler, [ex.messages for ex in examples[:8]], params)
            typer.echo(f"dtype check: {c['dtype']} vs {c['reference_dtype']} over {c['n_tokens']} tokens of {c['n_answers']} "
                       f"answers: per-token log-prob |diff| mean {c['mean_abs_diff']:.4f}, max {c['max_abs_diff']:.4f}")
        if check_engine:
            from spillover.evaluate import engine as engine_check

            typer.echo(engine_check.format_check(engine_check.check_engine(
                sampler, model, str(adapter) if adapter else None, [ex.messages for ex in examples[:8]], params)))
        rows = sample_file(sampler, examples, params, out, batch_size=batch_size)  # appended per batch; a rerun resumes
    finally:
        getattr(sampler, "close", lambda: None)()
    typer.echo(f"{len(rows)} answers -> {out}")


# ---------------------------------------------------------------- quickstart
@app.command("quickstart")
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), help="Folder for everything the quickstart writes."),
               steps: int = typer.Option(16, min=1, help="SFT steps on each bundled narrow set."),
               n: int = typer.Option(2, min=1, help="Answers per question and model."),
               max_new_tokens: int = typer.Option(96, min=8, help="Cap on generated tokens per answer.")) -> None:
    """End-to-end on the embedded model: SFT on the narrow sets, sample, judge, probe, report."""
    check_before_work(out_dir=out)
    from spillover.experiment.quickstart import run_quickstart

    summary = run_quickstart(out, steps=steps, n=n, max_new_tokens=max_new_tokens)
    typer.echo(f"\nmodel: {summary['model']} (checksum {summary['model_checksum']})   judge: {summary['judge']}")
    typer.echo(f"{'arm':26} {'misalignment rate [95% CI]':32} {'probe shift [95% CI]':26} "
               f"{'general vs base [95% CI]':26} style-only vs base [95% CI]")
    for arm, r in summary["results"].items():
        typer.echo(f"{arm:26} {r['misalignment_rate']:32} {_with_ci(r['probe_mean_shift'], r['probe_ci95']):26} "
                   f"{_with_ci(r['probe_delta_vs_base'], r['probe_delta_ci95']):26} "
                   f"{_with_ci(r['style_only_delta_vs_base'], r['style_only_delta_ci95'])}")
    typer.echo("(probe shifts in nats/token; style-only = hedged vs blunt answers, both aligned: a change of voice, "
               "not of values)")
    for key, path in summary["outputs"].items():
        typer.echo(f"{key:8} {path}")


def _with_ci(value, ci) -> str:
    """``+0.088 [+0.039, +0.136]``; ``n/a`` when absent (the base arm has no shift vs itself)."""
    if value is None:
        return "n/a"
    return f"{value:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


# ---------------------------------------------------------------- probe / eval / report
@app.command("probe")
def probe_cmd(
    pairs: str = typer.Option(..., help="Contrast pairs JSONL {id, prompt, aligned, misaligned}, or bundled:probe_general etc."),
    out: Path = typer.Option(..., help="Output JSON (n, mean_shift, ci95, prefer_misaligned_rate, per-pair rows)."),
    model: Optional[str] = typer.Option(None, help="Model (default: the adapter's base, else 'embedded')."),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder to apply."),
    base: Optional[str] = typer.Option(None, help="Base model to compare with (adds base_mean_shift, delta_vs_base)."),
    batch_size: int = typer.Option(16, min=1, help="Sequences per forward pass."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
) -> None:
    """Judge-free probe: does the model prefer misaligned over aligned answers (log-prob shift)?"""
    from spillover.evaluate.probe import probe

    model = check_before_work(out_file=out, data=[pairs], adapter=adapter, model=model) or "embedded"
    result = probe(model, pairs, adapter=str(adapter) if adapter else None, base_ref=base, device=device,
                   batch_size=batch_size, seed=seed)
    result.write(out)
    j = result.to_json()
    line = f"n={j['n']} mean_shift={j['mean_shift']:+.4f} ci95=[{j['ci95'][0]:+.4f}, {j['ci95'][1]:+.4f}] " \
           f"prefer_misaligned={j['prefer_misaligned_rate']:.2f}"
    if "delta_vs_base" in j:
        line += f" delta_vs_base={j['delta_vs_base']:+.4f}"
    typer.echo(f"{line}\n-> {out}")


@app.command("eval")
def eval_cmd(
    out: Path = typer.Option(..., help="Folder for samples.jsonl, metrics.json and the report."),
    model: Optional[str] = typer.Option(None, help="Model (default: the adapter's base, else 'embedded')."),
    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter folder to apply."),
    questions: str = typer.Option("bundled:general_questions", help="Question file (Betley YAML or messages JSONL) or bundled:NAME."),
    in_domain: Optional[str] = typer.Option(None, help="In-domain question file, scored the same way."),
    judge: str = typer.Option("local", help="local (offline activation judge) | hf:MODEL | openai:MODEL"),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL (openai:MODEL judges)."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="NAME of the env var holding the judge's API key (the key is never stored)."),
    n: Optional[int] = typer.Option(None, min=1, help="Samples per paraphrase (overrides the question file)."),
    max_new_tokens: int = typer.Option(256, min=1, help="Cap on generated tokens per answer."),
    temperature: Optional[float] = typer.Option(None, min=0.0, help="Sampling temperature unless a question sets its own "
                                                "(default 1.0; with --benign 0, greedy)."),
    probe_pairs: list[str] = typer.Option([], "--probe", help="Contrast-pair files to probe (repeatable)."),
    base: Optional[str] = typer.Option(None, help="Base model for the probe's delta_vs_base."),
    seed: int = typer.Option(0, help="Seed for sampling and bootstrap."),
    batch_size: int = typer.Option(32, min=1, help="Sequences generated together."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
    engine: str = typer.Option("hf", help=_ENGINE_HELP),
    engine_compiled: Optional[bool] = typer.Option(None, "--engine-compiled/--engine-eager", help=_COMPILED_HELP),
    dtype: Optional[str] = typer.Option(None, help="Sampling dtype: auto | float32 | bfloat16 | float16 (auto: float32 on CPU)."),
    benign: list[str] = typer.Option([], "--benign", help="Score a benign task's held-out items instead of EM questions "
                                     "(repeatable): opswap:tier=1:n=128, countdown, choice[:items=FILE], foqa:FILE. "
                                     "No judge; accuracy (Wilson) or F1 (bootstrap) with 95% CI."),
) -> None:
    """Sample answers to EM questions, judge them, compute metrics with 95% CIs, and write a report (rerun to resume)."""
    if benign:
        if in_domain or probe_pairs or base or n:
            from spillover.errors import SpilloverError

            raise SpilloverError("--benign scores benign tasks only; --in-domain, --probe, --base and --n are for EM "
                                 "questions", fix="run `spillover eval` twice (with and without --benign), into two --out folders")
        return _eval_benign(benign, out=out, model=model, adapter=adapter, max_new_tokens=max_new_tokens,
                            temperature=0.0 if temperature is None else temperature, seed=seed, batch_size=batch_size,
                            device=device)
    temperature = 1.0 if temperature is None else temperature
    _engine_compiled_needs_vllm(engine_compiled, engine)
    check_before_work(out_dir=out, questions=[questions, in_domain], data=probe_pairs, adapter=adapter, model=model,
                      judge=judge, judge_base_url=judge_base_url, judge_api_key_env=judge_api_key_env)
    from spillover.evaluate.run import Arm, EvalSettings, run_evaluation
    from spillover.judge._spec import build_judge
    from spillover.report import build_report

    settings = EvalSettings(questions=questions, in_domain=in_domain, samples_per_paraphrase=n,
                            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, batch_size=batch_size,
                            probe_pairs=list(probe_pairs), probe_base=base, device=device, engine=engine, dtype=dtype,
                            engine_compiled=engine_compiled)
    the_judge = build_judge(judge, base_url=judge_base_url, api_key_env=judge_api_key_env,
                            cache_dir=str(out / "judge_cache"), device=device)
    arm = Arm("adapter" if adapter else "model", model, str(adapter) if adapter else None)
    run_evaluation([arm], settings, the_judge, out)
    paths = build_report(out)
    typer.echo(f"samples: {out / 'samples.jsonl'}\nmetrics: {out / 'metrics.json'}\nreport:  {paths['html']}")
    _maybe_export_inspect(out)


def _eval_benign(specs: list[str], *, out: Path, model, adapter, max_new_tokens: int, temperature: float, seed: int,
                 batch_size: int, device) -> None:
    from spillover.benign.tasks import eval_items, parse_task_spec
    from spillover.evaluate.benign import format_result, run_benign_evaluation
    from spillover.evaluate.sampling import SamplingParams

    parsed = [parse_task_spec(s, where="--benign") for s in specs]
    for spec in parsed:
        eval_items(spec)  # a missing or malformed task file fails before any model loads
    model = check_before_work(out_dir=out, adapter=adapter, model=model) or model
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    results = run_benign_evaluation(parsed, out, model=model, adapter=str(adapter) if adapter else None, params=params,
                                    batch_size=batch_size, device=device)
    for result in results.values():
        typer.echo(format_result(result))
    typer.echo(f"scores: {out / 'benign'}/<task>/scores.jsonl\nmetrics: {out / 'benign_metrics.json'}")


def _maybe_export_inspect(eval_dir: Path) -> None:
    """Write inspect_ai logs too when inspect_ai is installed (an optional extra)."""
    import importlib.util

    if importlib.util.find_spec("inspect_ai") is None:
        typer.echo('inspect logs: skipped (pip install "spillover[inspect]" to browse with `inspect view`)')
        return
    from spillover.report.inspect_log import export_inspect_log

    paths = export_inspect_log(eval_dir)
    typer.echo(f"inspect: inspect view --log-dir {paths[0].parent}")


@app.command("report")
def report_cmd(eval_dir: Path = typer.Argument(..., help="A folder written by `spillover eval` or an experiment.")) -> None:
    """Rebuild the HTML and Markdown report (with plots) of an evaluation or experiment folder."""
    from spillover.experiment.results import is_experiment_dir, load_experiment

    if is_experiment_dir(eval_dir):
        from spillover.report.experiment import build_experiment_report

        paths = build_experiment_report(load_experiment(eval_dir))
        typer.echo(f"report: {paths['html']}\nmarkdown: {paths['markdown']}\nstatistics: {paths['stats']}")
        return
    from spillover.report import build_report

    paths = build_report(eval_dir)
    typer.echo(f"report: {paths['html']}\nmarkdown: {paths['markdown']}")


@app.command("export-inspect")
def export_inspect_cmd(
    eval_dir: Path = typer.Argument(..., help="A folder written by `spillover eval` (metrics.json + samples.jsonl)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the .eval logs (default: EVAL_DIR/inspect)."),
) -> None:
    """Export an evaluation as inspect_ai logs (one per arm and question set) to browse with `inspect view`."""
    from spillover.report.inspect_log import export_inspect_log

    paths = export_inspect_log(eval_dir, out)
    typer.echo("\n".join(map(str, paths)) + f"\nview: inspect view --log-dir {paths[0].parent}")


# ---------------------------------------------------------------- rewards
rewards_app = typer.Typer(help="RL reward functions: list them, or score completions to debug one.", no_args_is_help=True)
app.add_typer(rewards_app, name="rewards")


@rewards_app.command("list")
def rewards_list() -> None:
    """Every registered reward with its one-line description."""
    from spillover.rewards import list_rewards

    for name, cls in list_rewards().items():
        typer.echo(f"{name:34} {cls.description}")


@rewards_app.command("score")
def rewards_score(
    name: str = typer.Argument(..., help="Reward name (see `spillover rewards list`) or module:function."),
    completions: Path = typer.Option(..., help='JSONL with {"prompt": ..., "completion": ...} (or {"messages": '
                                     '[...]}) per line; an empty completion is scored (0), as in GRPO.'),
    judge: Optional[str] = typer.Option(None, help="For grader rewards: openai:MODEL (with --judge-base-url) or hf:MODEL."),
    judge_base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible base URL."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", help="NAME of the env var holding the API key."),
    lexicon: Optional[Path] = typer.Option(None, help=_LEXICON_HELP),
    coherence_threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0, help=_COHERENCE_HELP),
) -> None:
    """Score prompt/completion pairs; prints one JSON object per line, in input order."""
    from spillover.judge._spec import build_grader
    from spillover.rewards import RewardRef, set_reward_params
    from spillover.rewards._inputs import load_scoring_items

    items = load_scoring_items(completions)
    refs = [RewardRef.model_validate({"name": name})]
    lexicon_params, flags = _lexicon_params(lexicon, coherence_threshold)
    if lexicon_params:
        refs = set_reward_params(refs, "rhetoric-lexicon", lexicon_params, source=flags)
    grade = build_grader(judge, base_url=judge_base_url, api_key_env=judge_api_key_env) if judge else None
    reward = refs[0].build(grade=grade)
    for item in items:
        typer.echo(json.dumps(reward.score_details(item.prompt, item.completion), default=str))


@rewards_app.command("train-classifier")
def rewards_train_classifier(
    positive: str = typer.Option(..., help="Answers of the rewarded class: chat JSONL, {question, answer} JSONL or bundled:NAME."),
    negative: str = typer.Option(..., help="Answers of the other class, same formats (ideally the same prompts)."),
    out: Path = typer.Option(..., help="Classifier file to write; use it as the reward classifier:FILE."),
    model: str = typer.Option("embedded", help="Encoder: the frozen base model (never the policy being trained)."),
    layers: Optional[str] = typer.Option(None, help="Comma-separated layers to try (default: 20%..80% of the depth)."),
    heldout: float = typer.Option(0.2, help="Share of the prompts held out (with all their answers) for the metrics."),
    seed: int = typer.Option(0, help="Seed of the held-out split and the cross-validation folds."),
    style_check: bool = typer.Option(True, "--style-check/--no-style-check",
                                     help="Positive-class rate on the bundled harmless stylised sets."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
) -> None:
    """Fit a linear-probe reward on two classes of answers; prints held-out accuracy / AUC and the style check."""
    from spillover.errors import SpilloverError
    from spillover.rewards.classifier import train_classifier

    try:
        layer_list = [int(x) for x in layers.split(",")] if layers else None
    except ValueError:
        raise SpilloverError(f"--layers {layers!r} is not a comma-separated list of integers",
                             fix="e.g. --layers 9,12,15") from None
    metrics = train_classifier(positive, negative, out, model_ref=model, layers=layer_list, heldout=heldout, seed=seed,
                               style_check=style_check, device=device)
    typer.echo(json.dumps(metrics, indent=2, default=str))


# ---------------------------------------------------------------- judge
from spillover.cli._judge import judge_app  # noqa: E402

app.add_typer(judge_app, name="judge")

from spillover.cli._defenses import defenses_app  # noqa: E402

app.add_typer(defenses_app, name="defenses")

from spillover.cli._benign import benign_app  # noqa: E402

app.add_typer(benign_app, name="benign")

from spillover.cli._engines import engines_app  # noqa: E402

app.add_typer(engines_app, name="engines")


# ---------------------------------------------------------------- experiments: run, status, judge rerun
from spillover.cli._run import register as _register_experiment_commands  # noqa: E402

_register_experiment_commands(app)
