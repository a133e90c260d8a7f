"""The one place spillover downloads a public dataset: :func:`download`.

Hugging Face datasets: the branch or tag is first resolved to its commit (``HfApi.dataset_info``), then
``datasets.load_dataset_builder`` reads the repository's own config/split declarations (README ``configs``
or the hub's default layout) to find the data files of the entry's config and split at that commit, and
``huggingface_hub.hf_hub_download`` fetches exactly those files in their published format (parquet, CSV,
JSONL). ``datasets`` is used only to resolve the layout, not to load rows, so the loaders see the source's
own files and are tested on fixtures in the same format. GitHub files are fetched from
raw.githubusercontent.com at the entry's commit with httpx.

No network (``HF_HUB_OFFLINE`` set, or the host unreachable) and gated datasets without a token are
errors that say what to run; tests replace :func:`download` with a copy of local fixture files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from spillover.errors import SpilloverError

_TRUE = {"1", "ON", "YES", "TRUE"}
_HF_FILE = re.compile(r"^hf://datasets/(?P<repo>[^@]+)@(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class Fetched:
    files: list[Path]  # downloaded raw files (inside the destination folder), in source order
    revision: str  # the commit they were taken at (or branch + content hash for an unpinned GitHub file)
    source_files: list[str]  # their paths in the source repository


def offline() -> bool:
    return any(os.environ.get(k, "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def offline_error(name: str, why: str) -> SpilloverError:
    return SpilloverError(f"dataset {name!r} is not in the local cache and {why}",
                          fix=f"run `spillover data fetch {name}` while online (unset HF_HUB_OFFLINE), with the same "
                              "SPILLOVER_HOME; or copy $SPILLOVER_HOME/datasets/" + name + "/ from a machine that has it")


def gated_error(entry) -> SpilloverError:
    url = entry.source.url
    return SpilloverError(f"dataset {entry.name!r} ({entry.source.repo}) is gated: its files need an account "
                          "that accepted the terms",
                          fix=f"log in at {url}, accept the terms on that page, create a read token at "
                              f"https://huggingface.co/settings/tokens, then `export HF_TOKEN=<token>` and run "
                              f"`spillover data fetch {entry.name}`")


def download(entry, dest: Path) -> Fetched:
    """Fetch the raw files of ``entry`` into ``dest`` (an empty folder)."""
    from spillover.data._registry import GitHubSource

    if offline():
        raise offline_error(entry.name, "the network is off (HF_HUB_OFFLINE is set)")
    if isinstance(entry.source, GitHubSource):
        return _download_github(entry, dest)
    return _download_hf(entry, dest)


def _download_github(entry, dest: Path) -> Fetched:
    import httpx

    src = entry.source
    files, digest = [], hashlib.sha256()
    for i, path in enumerate(src.paths):
        url = src.raw_url(path)
        try:
            response = httpx.get(url, follow_redirects=True, timeout=60)
        except httpx.HTTPError as e:
            if not is_network_error(e):
                raise
            raise offline_error(entry.name, f"{url} could not be reached ({type(e).__name__})") from None
        if response.status_code != 200:
            raise SpilloverError(f"dataset {entry.name!r}: {url} answered HTTP {response.status_code}",
                                 fix="the file may have moved; check the repository and update the registry entry")
        out = dest / f"{i:02d}-{Path(path).name}"
        out.write_bytes(response.content)
        digest.update(response.content)
        files.append(out)
    revision = src.revision if src.pinned else f"{src.revision}-{digest.hexdigest()[:12]}"
    return Fetched(files, revision, list(src.paths))


_NETWORK = {"TransportError", "NetworkError", "ConnectError", "TimeoutException", "ConnectionError", "TimeoutError"}


def is_network_error(e: BaseException) -> bool:
    """A failure to reach the host, from whichever HTTP stack raised it (httpx, the httpx fork huggingface_hub
    vendors, requests, urllib): judged by the exception's class hierarchy, or its cause's."""
    seen = 0
    while e is not None and seen < 5:
        if isinstance(e, (ConnectionError, TimeoutError)) or _NETWORK & {c.__name__ for c in type(e).__mro__}:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _download_hf(entry, dest: Path) -> Fetched:
    from datasets import load_dataset_builder
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import HfApi, get_token, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    src = entry.source
    token = get_token()
    if entry.gated and token is None:
        raise gated_error(entry)
    try:
        sha = HfApi().dataset_info(src.repo, revision=src.revision, token=token).sha
        builder = load_dataset_builder(src.repo, src.config, revision=sha, token=token)
        data_files = builder.config.data_files or {}
        if src.split not in data_files:
            raise SpilloverError(f"dataset {entry.name!r}: {src.repo} (config {src.config}) has no split "
                                 f"{src.split!r}; it has {sorted(data_files)}",
                                 fix="the dataset's layout changed; update the registry entry")
        files, names = [], []
        for i, url in enumerate(data_files[src.split]):
            m = _HF_FILE.match(str(url))
            if not m:
                raise SpilloverError(f"dataset {entry.name!r}: unexpected data file location {url}",
                                     fix="report this; the registry expects files inside the hub repository")
            got = Path(hf_hub_download(m["repo"], unquote(m["path"]), repo_type="dataset", revision=unquote(m["rev"]),
                                       token=token, local_dir=dest / ".hf"))
            out = dest / f"{i:02d}-{Path(m['path']).name}"
            shutil.move(str(got), out)
            files.append(out)
            names.append(unquote(m["path"]))
    except GatedRepoError:
        raise gated_error(entry) from None
    except DatasetNotFoundError as e:
        if "gated" in str(e).lower():
            raise gated_error(entry) from None
        raise SpilloverError(f"dataset {entry.name!r}: {src.repo} was not found on the hub ({e})",
                             fix="check the id; a gated dataset also reads as not found without a token") from None
    except RepositoryNotFoundError:
        raise SpilloverError(f"dataset {entry.name!r}: {src.repo} was not found on the hub",
                             fix="check the id; a gated or private dataset also reads as not found without a token"
                             ) from None
    except HfHubHTTPError as e:
        raise SpilloverError(f"dataset {entry.name!r}: the hub answered an error: {e}",
                             fix="retry later; if it persists, check the dataset page " + src.url) from None
    except Exception as e:
        if not is_network_error(e):
            raise
        raise offline_error(entry.name, f"the hub could not be reached ({type(e).__name__}: {e})") from None
    finally:
        shutil.rmtree(dest / ".hf", ignore_errors=True)
    if not files:
        raise SpilloverError(f"dataset {entry.name!r}: split {src.split!r} of {src.repo} has no data files",
                             fix="the dataset's layout changed; update the registry entry")
    return Fetched(files, sha, names)
