"""``spillover data list | fetch | show``: bundled sets and the registry of public datasets."""

from __future__ import annotations

import typer


def _size(path) -> str:
    """Lines of a JSONL file, entries of a YAML list."""
    if path.suffix == ".jsonl":
        with path.open("rb") as f:
            return str(sum(1 for line in f if line.strip()))
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return str(len(data)) if isinstance(data, list) else "?"


def data_list() -> None:
    """List every dataset spillover knows: bundled:NAME (shipped) and hub:NAME (public, fetched by name)."""
    from spillover.data import BUNDLED, bundled_path
    from spillover.data._registry import all_entries, cached_meta

    rows = [("NAME", "KIND", "SIZE", "SOURCE", "LICENSE", "OFFLINE")]
    for name, (rel, _) in BUNDLED.items():
        kind = {"sft": "sft-chat", "safety": "grpo-prompts", "questions": "questions", "probe": "contrast-pairs",
                "judge": "labelled-answers"}.get(rel.split("/")[0], "?")
        rows.append((f"bundled:{name}", kind, _size(bundled_path(name)), "shipped with spillover",
                     "spillover's own", "yes"))
    for name, entry in all_entries().items():
        meta = cached_meta(name)
        size = f"{meta['rows']} (cached)" if meta else entry.size
        gated = " (gated)" if entry.gated else ""
        rows.append((f"hub:{name}", entry.kind, size, entry.source.describe() + gated, entry.license,
                     "yes" if meta else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    typer.echo("\nhub:NAME: `spillover data show NAME` for its column mapping; `spillover data fetch NAME` downloads "
               "and converts it (needs the network once).")


def data_fetch(names: list[str] = typer.Argument(..., help="Registered dataset names (see `spillover data list`)."),
               force: bool = typer.Option(False, "--force", help="Download again even when a converted copy is cached "
                                          "(records the source's current revision).")) -> None:
    """Download public datasets, convert them to spillover's formats and cache them (for offline use)."""
    from spillover.data._registry import cached_path, fetch, get_entry, read_meta

    entries = [get_entry(n.removeprefix("hub:")) for n in names]  # every name checked before any download
    for entry in entries:
        path = None if force else cached_path(entry.name)
        path = path or fetch(entry.name)
        meta = read_meta(path.parent) or {}
        typer.echo(f"{entry.name}: {meta.get('rows', '?')} rows, revision {meta.get('revision', '?')}\n  {path}")


def data_show(name: str = typer.Argument(..., help="A registered dataset name.")) -> None:
    """What a registered dataset is, where it comes from, how its columns map, and whether it is cached."""
    from spillover.data._registry import KINDS, cached_meta, get_entry

    entry = get_entry(name.removeprefix("hub:"))
    meta = cached_meta(entry.name)
    fields = [("name", f"hub:{entry.name}"), ("kind", f"{entry.kind}: {KINDS[entry.kind]}"),
              ("about", entry.description), ("source", entry.source.describe()), ("page", entry.source.url),
              ("license", entry.license), ("size", entry.size), ("gated", "yes (accept the terms on the page, set "
                                                                          "HF_TOKEN)" if entry.gated else "no"),
              ("mapping", entry.mapping), ("layout", entry.layout),
              ("offline", f"yes: {meta['rows']} rows, revision {meta['revision']}" if meta
               else f"no (run `spillover data fetch {entry.name}`)")]
    for key, value in fields:
        typer.echo(f"{key:9} {value}")
