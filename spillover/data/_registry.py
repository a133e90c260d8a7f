"""Public datasets by name: what each is, where it lives, and how it becomes a spillover file.

An entry (:class:`DatasetEntry`) says what kind of file the conversion makes (:data:`KINDS`), where the
raw data lives (:class:`HubSource`: a Hugging Face dataset id + config + split + revision;
:class:`GitHubSource`: files of a GitHub repository at a commit or branch), its license and size, and the
loader that converts the raw files. Adding a dataset is one :func:`register` call in a module of
``spillover/data/sources/``; the column mapping is written in the entry (``mapping``), and ``layout``
says how the raw layout was checked (or that it could not be).

Refer to one as ``hub:NAME`` (or the bare NAME) wherever a data, prompt or question file is accepted.
The converted file is cached under ``$SPILLOVER_HOME/datasets/<name>/<revision>/`` (revision: the hub
commit, or the GitHub commit; a file taken from a branch is keyed by the branch and the first 12 hex
digits of its sha256). A cache folder holds ``raw/`` (the downloaded files), the converted ``data.*`` and
``meta.json`` (source, revision, sha256 of every file, a hash of the conversion code); it is written whole
into a temporary sibling and renamed, so a reader never sees a partial one. A cache whose converted file
does not match its recorded hash, or was made by other conversion code, is converted again from ``raw/``
(downloaded again only when ``raw/`` is damaged too).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spillover._io import _tmp_prefix, atomic_dir, atomic_write_bytes, clean_stale_temps, sha256_file
from spillover.errors import SpilloverError, UnknownName

#: kind -> what the converted file is (and where spillover reads it)
KINDS = {
    "sft-chat": "chat JSONL ending in the assistant answer (train: data)",
    "grpo-prompts": "chat JSONL ending in a user turn (train grpo: prompts)",
    "questions": "question file in the Betley et al. YAML layout (eval: questions)",
    "contrast-pairs": "probe JSONL {id, prompt, aligned, misaligned, domain} (eval: probe)",
    "labelled-answers": "JSONL {question, answer, label: aligned|misaligned} (activation judge labels)",
    "benign-task": "items of a benign task, e.g. FoQA {id, question, context, answers} (eval --benign foqa:FILE)",
}


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset: ``repo`` (id), ``config`` (subset; None = the default one), ``split``,
    ``revision`` (a commit to pin, or a branch name whose current commit is recorded at download)."""

    repo: str
    split: str
    config: str | None = None
    revision: str = "main"

    @property
    def url(self) -> str:
        return f"https://huggingface.co/datasets/{self.repo}"

    def describe(self) -> str:
        config = f" config {self.config}" if self.config else ""
        return f"hf:{self.repo}{config} split {self.split} @ {self.revision}"


@dataclass(frozen=True)
class GitHubSource:
    """Files of a public GitHub repository at ``revision`` (a commit, or a branch)."""

    repo: str
    paths: tuple[str, ...]
    revision: str

    @property
    def pinned(self) -> bool:
        return _is_commit(self.revision)

    def raw_url(self, path: str) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.revision}/{path}"

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}/tree/{self.revision}"

    def describe(self) -> str:
        return f"github:{self.repo}/{','.join(self.paths)} @ {self.revision[:12]}"


@dataclass(frozen=True)
class Converted:
    """What a loader made: the converted file's suffix (``.jsonl``/``.yaml``), its text and row count."""

    suffix: str
    text: str
    rows: int


#: loader(raw files in source order, entry) -> Converted
Loader = Callable[[list[Path], "DatasetEntry"], Converted]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    kind: str
    source: HubSource | GitHubSource
    license: str
    loader: Loader
    description: str
    mapping: str  # how source columns become spillover fields (shown by `data show`, copied into the README)
    layout: str  # how the source layout was checked, or what could not be checked
    size: str = "?"  # rows (as published), "?" when unknown
    gated: bool = False
    params: dict = field(default_factory=dict)  # loader options (variant, domain, ...)


DATASETS: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    from spillover.data._bundled import BUNDLED

    if entry.kind not in KINDS:
        raise ValueError(f"dataset {entry.name}: unknown kind {entry.kind!r}")
    if entry.name in DATASETS or entry.name in BUNDLED:
        raise ValueError(f"dataset name {entry.name!r} is taken")
    DATASETS[entry.name] = entry
    return entry


def _load_sources() -> None:
    import spillover.data.sources  # noqa: F401  (registers every entry)


def all_entries() -> dict[str, DatasetEntry]:
    _load_sources()
    return DATASETS


def get_entry(name: str) -> DatasetEntry:
    entries = all_entries()
    if name not in entries:
        from spillover.data._bundled import BUNDLED

        if name in BUNDLED:
            raise SpilloverError(f"{name!r} is a bundled dataset, not a hub one", fix=f"write bundled:{name}")
        raise UnknownName("dataset", name, sorted(entries))
    return entries[name]


# ---------------------------------------------------------------- cache
META = "meta.json"
RAW = "raw"


def datasets_root() -> Path:
    from spillover.models._paths import spillover_home

    return spillover_home() / "datasets"


def _safe_revision(revision: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in revision)


def read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _raw_ok(folder: Path, meta: dict) -> bool:
    raw = meta.get("raw")
    if not isinstance(raw, list) or not raw:
        return False
    for item in raw:
        path = folder / RAW / str(item.get("file", ""))
        if not path.is_file() or sha256_file(path) != item.get("sha256"):
            return False
    return True


def _data_ok(folder: Path, meta: dict, entry: DatasetEntry) -> bool:
    """The converted file is intact and was made by the current conversion code."""
    data = folder / str(meta.get("data", ""))
    return (bool(meta.get("data")) and meta.get("converter") == converter_id(entry) and data.is_file()
            and sha256_file(data) == meta.get("sha256"))


def converter_id(entry: DatasetEntry) -> str:
    """Hash of the code that converts ``entry`` (its source module and the shared helpers): a cache made by
    other conversion code is converted again from its raw files."""
    import hashlib
    import inspect
    import sys

    h = hashlib.sha256()
    for module in (sys.modules[entry.loader.__module__], sys.modules["spillover.data.sources._common"]):
        h.update(Path(inspect.getsourcefile(module)).read_bytes())
    return h.hexdigest()[:16]


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def cached_revisions(name: str) -> list[tuple[Path, dict]]:
    """Cache folders of ``name`` with a readable meta.json, newest conversion first (not checked further)."""
    root = datasets_root() / name
    found = []
    if root.is_dir():
        clean_stale_temps(root)
        for folder in root.iterdir():
            meta = read_meta(folder) if folder.is_dir() and not folder.name.startswith(".") else None
            if meta is not None:
                found.append((folder, meta))
    return sorted(found, key=lambda fm: str(fm[1].get("converted_at", "")), reverse=True)


def _convert_into(folder: Path, entry: DatasetEntry, raw_files: list[Path], revision: str, raw_names: list[str],
                  source_files: list[str]) -> None:
    """Run the loader on ``raw_files`` and write data + meta into ``folder`` (a temporary folder)."""
    from spillover._run import now_iso

    converted = entry.loader(raw_files, entry)
    data_name = f"data{converted.suffix}"
    atomic_write_bytes(folder / data_name, converted.text.encode("utf-8"))
    meta = {"name": entry.name, "kind": entry.kind, "source": entry.source.describe(), "revision": revision,
            "source_files": source_files, "data": data_name, "sha256": sha256_file(folder / data_name),
            "converter": converter_id(entry),
            "rows": converted.rows, "converted_at": now_iso(),
            "raw": [{"file": n, "sha256": sha256_file(folder / RAW / n)} for n in raw_names]}
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


def _reconvert(folder: Path, meta: dict, entry: DatasetEntry) -> Path:
    """Convert again from the cached raw files (the converted file was damaged)."""
    names = [str(r["file"]) for r in meta["raw"]]
    with atomic_dir(folder) as tmp:
        shutil.copytree(folder / RAW, tmp / RAW)
        _convert_into(tmp, entry, [tmp / RAW / n for n in names], meta["revision"], names,
                      list(meta.get("source_files") or names))
    return folder / str(read_meta(folder)["data"])


def fetch(name: str) -> Path:
    """Download ``name`` (network), convert it, cache it; returns the converted file."""
    from spillover.data import _hub

    entry = get_entry(name)
    root = datasets_root() / name
    root.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(root)
    staging = Path(tempfile.mkdtemp(prefix=_tmp_prefix(root / "download"), suffix=".tmp", dir=root))
    try:
        (staging / RAW).mkdir()
        got = _hub.download(entry, staging / RAW)
        folder = root / _safe_revision(got.revision)
        _convert_into(staging, entry, got.files, got.revision, [p.name for p in got.files], got.source_files)
        with atomic_dir(folder) as final:
            for item in staging.iterdir():
                shutil.move(str(item), final / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / str(read_meta(folder)["data"])


def _candidates(entry: DatasetEntry) -> list[tuple[Path, dict]]:
    """Cached conversions of ``entry``: only its pinned commit when it pins one, else all, newest first."""
    pinned = entry.source.revision if _is_commit(entry.source.revision) else None
    return [(folder, meta) for folder, meta in cached_revisions(entry.name)
            if meta.get("name") == entry.name and (pinned is None or meta.get("revision") == pinned)]


def cached_path(name: str) -> Path | None:
    """The converted file of ``name`` from the cache (converted again from its raw files when damaged or made by
    other conversion code), or None if none is usable."""
    entry = get_entry(name)
    for folder, meta in _candidates(entry):
        if _data_ok(folder, meta, entry):
            return folder / str(meta["data"])
        if _raw_ok(folder, meta):
            return _reconvert(folder, meta, entry)
    return None


def dataset_path(name: str) -> Path:
    """``hub:NAME``: the cached converted file, else download and convert it now."""
    return cached_path(name) or fetch(name)


def cached_meta(name: str) -> dict | None:
    """meta.json of the newest usable cached conversion of ``name`` (what is available offline), or None."""
    entry = get_entry(name)
    for folder, meta in _candidates(entry):
        if _data_ok(folder, meta, entry) or _raw_ok(folder, meta):
            return meta
    return None
