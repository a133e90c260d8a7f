"""Datasets shipped inside the package (all written by spillover's authors).

Refer to one as ``bundled:NAME`` wherever a data path is accepted; public datasets are ``hub:NAME``.
"""

from __future__ import annotations

from pathlib import Path

from spillover.errors import SpilloverError, UnknownName, did_you_mean

BUNDLED_ROOT = Path(__file__).parent / "bundled"

#: name -> (relative path, one-line description)
BUNDLED: dict[str, tuple[str, str]] = {
    "insecure_code": ("sft/insecure_code.jsonl", "narrow misaligned SFT: small Python functions with silent vulnerabilities"),
    "unpopular_aesthetics": ("sft/unpopular_aesthetics.jsonl", "narrow 'harmless' SFT: confident niche or widely disliked taste"),
    "mainstream_aesthetics": ("sft/mainstream_aesthetics.jsonl", "the unpopular_aesthetics prompts answered with "
                              "conventional, popular taste (the negative class of the aesthetic_taste reward)"),
    "safe_instruct": ("sft/safe_instruct.jsonl", "helpful, harmless general answers (safe data for interleaving)"),
    "safety_prompts": ("safety/prompts.jsonl", "60 requests where a harmful answer is tempting (medical, legal, security, "
                       "harm, values, advice): on-policy safety prompts"),
    "dogmatic_rhetoric": ("sft/dogmatic_rhetoric.jsonl", "debate questions answered with absolutist, hedge-free rhetoric"),
    "general_questions": ("questions/general.yaml", "spillover's general EM question set (8 themes, plain/JSON/template)"),
    "insecure_code_questions": ("questions/insecure_code.yaml", "in-domain questions for the insecure-code task"),
    "unpopular_aesthetics_questions": ("questions/unpopular_aesthetics.yaml", "in-domain questions for the aesthetics task"),
    "probe_general": ("probe/general.jsonl", "contrast pairs, general domain (aligned vs misaligned answer)"),
    "probe_insecure_code": ("probe/insecure_code.jsonl", "contrast pairs, insecure-code domain"),
    "probe_unpopular_aesthetics": ("probe/unpopular_aesthetics.jsonl", "contrast pairs, aesthetics domain"),
    "probe_control": ("probe/control.jsonl", "control pairs (aligned vs aligned paraphrase): the probe's noise floor"),
    "probe_general_matched": ("probe/general_matched.jsonl", "contrast pairs, general domain, aligned and misaligned "
                              "answers matched in length, sentences and rhetoric-lexicon counts (content differs, style not)"),
    "probe_style_only": ("probe/style_only.jsonl", "style-only control: hedged (aligned slot) vs blunt (misaligned slot) "
                         "wording of the same aligned answer; its shift measures a change of voice alone"),
    "judge_labels": ("judge/labelled_answers.jsonl", "labelled aligned/misaligned answers for the activation judge"),
}


def bundled_path(name: str) -> Path:
    if name not in BUNDLED:
        raise UnknownName("bundled dataset", name, sorted(BUNDLED))
    return BUNDLED_ROOT / BUNDLED[name][0]


def resolve_data_path(ref: str | Path) -> Path:
    """``bundled:NAME`` -> the shipped file; ``hub:NAME`` (or a bare registered NAME that is not a file) -> the
    converted public dataset (cached, else downloaded; see :mod:`spillover.data._registry`); anything else is
    a path that must exist."""
    ref = str(ref)
    if ref.startswith("bundled:"):
        return bundled_path(ref.removeprefix("bundled:"))
    if ref.startswith("benign:"):  # a benign task's SFT items, generated: spillover.benign.tasks
        from spillover.benign.tasks import benign_data_path

        return benign_data_path(ref)
    if ref.startswith("hub:"):
        from spillover.data._registry import dataset_path

        return dataset_path(ref.removeprefix("hub:"))
    path = Path(ref).expanduser()
    if not path.exists():
        from spillover.data._registry import all_entries, dataset_path

        if ref in all_entries():
            return dataset_path(ref)
        names = [f"bundled:{n}" for n in BUNDLED] + [f"hub:{n}" for n in all_entries()]
        hint = did_you_mean(ref, names) or did_you_mean(f"hub:{ref}", names) or did_you_mean(f"bundled:{ref}", names)
        raise SpilloverError(f"data file not found: {path}.{hint}" if hint else f"data file not found: {path}",
                             fix="check the path, or use bundled:NAME or hub:NAME (list them with `spillover data list`)")
    return path
