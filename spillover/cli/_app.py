"""Command tree. Each command parses options, calls one library function and prints where results are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from spillover.cli._common import describe, quiet_libraries
from spillover.models import LoraSpec
from spillover.train._config import SFTConfig

app = typer.Typer(help="spillover: emergent-misalignment experiments (fine-tune, sample, judge, probe, report).",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
models_app = typer.Typer(help="Inspect, resolve and merge models.", no_args_is_help=True)
data_app = typer.Typer(help="Bundled datasets and data validation.", no_args_is_help=True)
train_app = typer.Typer(help="Fine-tune a LoRA adapter (SFT now; GRPO later).", no_args_is_help=True)
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
    from spillover.models import merge_adapter

    typer.echo(f"merged model: {merge_adapter(model, adapter, out)}")


# ---------------------------------------------------------------- data
@data_app.command("list")
def data_list() -> None:
    """List the datasets shipped with spillover (use them as bundled:NAME)."""
    from spillover.data import BUNDLED, bundled_path

    for name, (_, text) in BUNDLED.items():
        n = sum(1 for line in bundled_path(name).open() if line.strip()) if bundled_path(name).suffix == ".jsonl" else None
        typer.echo(f"bundled:{name:32} {'' if n is None else f'{n:4} lines  '}{text}")


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
) -> None:
    """Fine-tune a LoRA adapter on chat data with the loss on assistant tokens only."""
    from spillover.config import load_config
    from spillover.train import run_sft

    overrides = dict(model=model, data=data, max_steps=max_steps, epochs=epochs, lr=lr, lr_scheduler=lr_scheduler,
                     warmup_ratio=warmup_ratio, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
                     seed=seed, init_adapter=init_adapter, strip_qwen3_markers=strip_qwen3_markers, device=device,
                     dtype=dtype, lora=_lora_overrides(lora_r, lora_alpha, rslora, lora_dropout, lora_targets))
    cfg = load_config(SFTConfig, config, overrides)
    result = run_sft(cfg, out, overwrite=overwrite)
    typer.echo(f"adapter: {result.adapter_dir}\nrun:     {result.run_dir}  ({result.steps} steps, "
               f"final loss {result.final_loss:.4f}, {result.seconds:.0f} s)")


# ---------------------------------------------------------------- sample
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
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
) -> None:
    """Sample N answers per prompt from a base model or base + adapter."""
    from spillover._io import atomic_write_jsonl
    from spillover.data import load_chat_jsonl, require_prompts, resolve_data_path
    from spillover.evaluate.sampling import SamplingParams, load_sampler, sample_examples

    examples = load_chat_jsonl(resolve_data_path(prompts))
    require_prompts(examples)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                            system_prompt=system)
    sampler = load_sampler(model, str(adapter) if adapter else None, device=device, dtype=dtype, batch_size=batch_size)
    rows = sample_examples(sampler, examples, params)
    atomic_write_jsonl(out, rows)
    typer.echo(f"{len(rows)} answers -> {out}")


# ---------------------------------------------------------------- quickstart
@app.command("quickstart")
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), help="Folder for everything the quickstart writes."),
               steps: int = typer.Option(30, min=1, help="SFT steps on the bundled insecure-code set."),
               n: int = typer.Option(2, min=1, help="Answers per question and model."),
               max_new_tokens: int = typer.Option(96, min=8, help="Cap on generated tokens per answer.")) -> None:
    """End-to-end on the embedded model: SFT on insecure code, then sample base and fine-tuned answers."""
    from spillover.experiment.quickstart import run_quickstart

    summary = run_quickstart(out, steps=steps, n=n, max_new_tokens=max_new_tokens)
    typer.echo(json.dumps(summary, indent=2))
