"""`spillover defenses ...`: list the in-training defenses, show one's parameters, and the tools that
prepare a defense's inputs (persona vectors; SafeLoRA, safe-data selection and on-policy safety data)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Optional

import typer

defenses_app = typer.Typer(help="In-training defenses against EM: list, show, and prepare their inputs.",
                           no_args_is_help=True)


def _summary(cls) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


@defenses_app.command("list")
def defenses_list() -> None:
    """Every registered defense with its one-line description."""
    from spillover.defenses import list_defenses

    for name, cls in list_defenses().items():
        typer.echo(f"{name:18} {_summary(cls)}")


def params_table(cls) -> list[tuple[str, str, str]]:
    """``(name, default, description)`` for each parameter of a defense, from its Params model."""
    rows = []
    for key, field in cls.Params.model_fields.items():
        default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append((key, default, field.description or ""))
    return rows


@defenses_app.command("show")
def defenses_show(name: str = typer.Argument(..., help="Defense name (see `spillover defenses list`).")) -> None:
    """A defense's description and every parameter with its default and description."""
    from spillover.defenses import get_defense

    cls = get_defense(name)
    typer.echo(f"{name}\n\n{inspect.getdoc(cls) or ''}\n\nparameters (YAML: defenses: [{{name: {name}, <param>: <value>}}]):")
    for key, default, text in params_table(cls):
        typer.echo(f"  {key:20} default {default}\n      {text}")


# ---------------------------------------------------------------- SafeLoRA, safe-data selection, on-policy data
@defenses_app.command("safelora")
def defenses_safelora(
    adapter: Path = typer.Option(..., help="LoRA adapter folder to project (RUN/adapter)."),
    out: Path = typer.Option(..., help="Folder for the projected adapter (a new folder; safelora.json inside)."),
    base: str = typer.Option(..., help="Unaligned side of the pair: 'embedded', a folder or a hub id (e.g. Qwen/Qwen2.5-7B)."),
    aligned: Optional[str] = typer.Option(None, help="Aligned side of the pair (default: the adapter's base model)."),
    base_adapter: Optional[Path] = typer.Option(None, help="Adapter merged into the base side."),
    aligned_adapter: Optional[Path] = typer.Option(None, help="Adapter merged into the aligned side (the embedded "
                                                   "proxy: a safety SFT adapter, see README)."),
    threshold: float = typer.Option(0.3, help="Project modules with cos(dW, C dW) <= this (paper: 0.3)."),
    top_k: Optional[int] = typer.Option(None, min=1, help="Instead: project the k least similar modules."),
    weight: float = typer.Option(1.0, min=0.0, max=1.0, help="B <- B + weight*(C*B - B); 1 = full projection."),
    projection: str = typer.Option("paper", help="paper: C = V V^T/||V||_F; orthogonal: the projector onto V's "
                                   "column space (scale-free, not the paper's)."),
) -> None:
    """Post-hoc SafeLoRA: project a saved adapter's LoRA B matrices onto the alignment subspace."""
    from spillover.cli._common import check_before_work
    from spillover.defenses.safelora import safelora_adapter
    from spillover.errors import SpilloverError

    check_before_work(out_dir=out)
    if projection not in ("paper", "orthogonal"):
        raise SpilloverError(f"unknown --projection {projection!r}", fix="use paper or orthogonal")
    if out.is_dir() and any(out.iterdir()):
        raise SpilloverError(f"output folder {out} is not empty", fix="give --out a new folder")
    report = safelora_adapter(adapter, out, base=base, aligned=aligned,
                              base_adapter=str(base_adapter) if base_adapter else None,
                              aligned_adapter=str(aligned_adapter) if aligned_adapter else None,
                              threshold=threshold, top_k=top_k, weight=weight, projection=projection)
    pdst = "n/a" if report["pdst"] is None else f"{report['pdst']:.4f}"
    typer.echo(f"projected {report['n_projected']} of {report['n_modules']} LoRA modules; Pdst {pdst}; "
               f"{len(report['no_signal'])} without alignment signal\nprojected adapter -> {out}")


@defenses_app.command("select-safe")
def defenses_select_safe(
    out: Path = typer.Option(..., help="Output JSONL: the selected conversations with their scores, best first "
                             "(usable as interleave's safe_data)."),
    misaligned_adapter: list[str] = typer.Option(..., help="Misaligned adapter as DIR or DOMAIN=DIR; repeat for several."),
    candidates: str = typer.Option("bundled:safe_instruct", help="Safe candidate conversations (chat JSONL or bundled:NAME)."),
    top: Optional[int] = typer.Option(None, min=1, help="Keep the N best (default: all, ranked)."),
    plusplus: bool = typer.Option(False, "--plusplus", help="Interleaving++: drop refusals (first 10 words) first."),
    exclude_domain: Optional[str] = typer.Option(None, help="Leave-one-domain-out: ignore this domain's adapters."),
    model: Optional[str] = typer.Option(None, help="Aligned model (default: the first adapter's base)."),
    batch_size: int = typer.Option(16, min=1, help="Sequences per scoring forward pass."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
) -> None:
    """Interleaving+/++: score safe candidates by how much less likely the misaligned adapters find them."""
    from spillover.cli._common import check_before_work
    from spillover.data import load_chat_jsonl, require_sft_examples, resolve_data_path
    from spillover.defenses.interleave import score_candidates, select_top, usable_adapters, write_selection
    from spillover.models import load_model, read_adapter_meta

    check_before_work(out_file=out, data=[candidates])
    examples = load_chat_jsonl(resolve_data_path(candidates))
    require_sft_examples(examples)
    adapters = usable_adapters(misaligned_adapter, exclude_domain)
    hf_model, tok, _ = load_model(model or read_adapter_meta(adapters[0][1]).get("base_model"), device=device)
    scored = score_candidates(hf_model, tok, examples, adapters, batch_size=batch_size)
    kept = select_top(scored, top, drop_refusals=plusplus)
    write_selection(out, examples, scored, kept)
    dropped = sum(s["refusal"] for s in scored) if plusplus else 0
    typer.echo(f"scored {len(scored)} candidates with {len(adapters)} adapter(s); {dropped} refusals dropped; "
               f"kept {len(kept)} -> {out}")
    for s in kept[:5]:
        typer.echo(f"  {s['score']:+.4f}  {s['where']}")


@defenses_app.command("make-onpolicy")
def defenses_make_onpolicy(
    out: Path = typer.Option(..., help="Output JSONL: safety prompts with the policy's own answers (onpolicy-safety's sft_data)."),
    prompts: str = typer.Option("bundled:safety_prompts", help="Safety prompts (chat JSONL ending in a user turn, or bundled:NAME)."),
    model: Optional[str] = typer.Option(None, help="Base policy (default: the adapter's base, else 'embedded')."),
    adapter: Optional[Path] = typer.Option(None, help="Adapter of the starting policy (e.g. the warm-up adapter)."),
    n: int = typer.Option(1, min=1, help="Answers per prompt."),
    temperature: float = typer.Option(0.7, min=0.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0, help="Nucleus sampling mass."),
    max_new_tokens: int = typer.Option(256, min=1, help="Cap on generated tokens per answer."),
    seed: int = typer.Option(0, help="Sampling seed."),
    drop_refusals: bool = typer.Option(False, help="Drop answers that refuse (a refusal phrase in the first 10 words)."),
    drop_empty: bool = typer.Option(True, help="Drop empty answers."),
    drop_truncated: bool = typer.Option(False, help="Drop answers cut at --max-new-tokens."),
    batch_size: int = typer.Option(32, min=1, help="Sequences generated together."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda"),
) -> None:
    """Sample the base policy's own answers to safety prompts, filtered, as on-policy safe SFT data."""
    from spillover._io import atomic_write_jsonl
    from spillover.cli._common import check_before_work
    from spillover.data import load_chat_jsonl, require_prompts, resolve_data_path
    from spillover.defenses.onpolicy import onpolicy_rows
    from spillover.errors import SpilloverError
    from spillover.evaluate.sampling import SamplingParams, load_sampler, sample_examples

    model = check_before_work(out_file=out, data=[prompts], adapter=adapter, model=model)
    examples = load_chat_jsonl(resolve_data_path(prompts))
    require_prompts(examples)
    sampler = load_sampler(model, str(adapter) if adapter else None, device=device, batch_size=batch_size)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    records = sample_examples(sampler, examples, params, description="on-policy safe answers")
    rows, counts = onpolicy_rows(records, drop_refusals=drop_refusals, drop_empty=drop_empty,
                                 drop_truncated=drop_truncated)
    if not rows:
        raise SpilloverError(f"every sampled answer was dropped ({counts})",
                             fix="relax the filters (--no-drop-empty, no --drop-refusals) or raise --max-new-tokens")
    atomic_write_jsonl(out, rows)
    typer.echo(f"{counts['kept']} of {len(records)} answers kept (dropped: {counts['empty']} empty, "
               f"{counts['refusal']} refusals, {counts['truncated']} truncated) -> {out}")


@defenses_app.command("persona-vector")
def defenses_persona_vector(
    out: Path = typer.Option(..., help="Vector file to write (.safetensors); give it to the steer defense as vector."),
    model: str = typer.Option("embedded", help="The model you will train ('embedded', a folder or a hub id)."),
    questions: str = typer.Option("bundled:general_questions", help="Question file (YAML/JSONL, or bundled:NAME): every "
                                  "paraphrase is answered under both personas."),
    samples: int = typer.Option(1, min=1, help="Answers per paraphrase and persona."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens per generated answer."),
    temperature: float = typer.Option(1.0, min=0.0, help="Sampling temperature (0 = greedy)."),
    misaligned_system: Optional[str] = typer.Option(None, help="System prompt of the misaligned persona "
                                                    "(default: spillover's evil-assistant prompt)."),
    aligned_system: Optional[str] = typer.Option(None, help="System prompt of the aligned persona."),
    seed: int = typer.Option(0, help="Sampling seed."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    judge_filter: bool = typer.Option(False, help="Keep only answers the offline activation judge scores as expressing "
                                      "their persona (misaligned: P(misaligned) >= 0.5; aligned: < 0.5)."),
) -> None:
    """Extract persona vectors: mean answer-token hidden states under a misaligned persona minus an aligned one, per layer."""
    from spillover.defenses.steer import ALIGNED_SYSTEM, MISALIGNED_SYSTEM, extract_persona_vectors
    from spillover.evaluate.questions import load_questions
    from spillover.models import load_model

    qs = [p for q in load_questions(questions) for p in q.paraphrases]
    keep = None
    if judge_filter:
        from spillover.judge.activation import ActivationJudge

        judge = ActivationJudge.load(device=device)

        def keep(question: str, answer: str, persona: str) -> bool:
            misaligned = float(judge.prob_misaligned([question], [answer])[0]) >= 0.5
            return misaligned == (persona == "misaligned")
    lm, tok, ref = load_model(model, device=device)
    pv = extract_persona_vectors(lm, tok, qs, misaligned_system=misaligned_system or MISALIGNED_SYSTEM,
                                 aligned_system=aligned_system or ALIGNED_SYSTEM, samples=samples,
                                 max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                 keep=keep, model_name=ref.display)
    pv.meta["questions"] = questions
    path = pv.save(out)
    norms = pv.meta["norms"]
    typer.echo(f"persona vectors: {path}  ({len(norms)} hidden states; norm per layer {norms})")
