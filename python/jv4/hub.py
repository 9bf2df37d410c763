"""Model names to local GGUF files, through huggingface_hub.

A model is given as a path, or as a Hugging Face repository with a quant:
``from_pretrained("jinaai/jina-embeddings-v4-text-code-GGUF", quant="Q8_0")``
or the llama.cpp-style ``"jinaai/jina-embeddings-v4-text-code-GGUF:Q8_0"``.
A string naming an existing path is always that path.

Resolution looks in huggingface_hub's cache first (``HF_HOME``,
``HF_HUB_CACHE`` or ``cache_dir=``), so a model that was downloaded once
loads with no request at all. Otherwise, unless ``HF_HUB_OFFLINE=1``, the
repository's files are listed and the chosen one downloaded by
huggingface_hub (its progress bars, tokens, ``HF_ENDPOINT``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

__all__ = ["ModelNotFoundError", "HubRef", "parse_model_ref", "resolve", "quant_of", "DEFAULT_QUANT"]

DEFAULT_QUANT = "Q4_K_M"

# owner/name, then an optional :QUANT (letters, digits, '_', '.', '-')
_REPO_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?::(?P<quant>[\w.-]+))?$")
# the part files of a split GGUF: name-00001-of-00003.gguf
_SPLIT_RE = re.compile(r"-(\d{5})-of-(\d{5})$")


class ModelNotFoundError(FileNotFoundError):
    """A model name could not be turned into a local file: the repository or
    revision does not exist, the Hub cannot be reached, or it is not in the
    cache while offline."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    quant: Optional[str] = None

    def __str__(self) -> str:
        return self.repo_id + (f":{self.quant}" if self.quant else "")


def parse_model_ref(model: Union[str, os.PathLike]) -> Union[Path, HubRef]:
    """A path when ``model`` is a path-like or names an existing file or
    folder; a ``HubRef`` when it reads ``owner/name[:quant]``; otherwise the
    path (loading it then reports that it does not exist)."""
    if not isinstance(model, str):
        return Path(os.fspath(model))
    if os.path.exists(model):
        return Path(model)
    m = _REPO_RE.match(model)
    if m is None or model.endswith(".gguf") or model.startswith((".", "/", "~")):
        return Path(model)
    return HubRef(m.group("repo"), m.group("quant"))


def quant_of(filename: str) -> Optional[str]:
    """The quant tag a GGUF file name carries (``...-Q4_K_M.gguf`` ->
    ``Q4_K_M``), or None for a name that is not a model GGUF."""
    name = filename.rsplit("/", 1)[-1]
    if not name.lower().endswith(".gguf") or name.lower().startswith("mmproj"):
        return None
    stem = _SPLIT_RE.sub("", name[: -len(".gguf")])
    tag = re.split(r"[-.]", stem)[-1]
    return tag or None


def _is_first_part(filename: str) -> bool:
    m = _SPLIT_RE.search(filename[: -len(".gguf")])
    return m is None or int(m.group(1)) == 1


def _parts(files: list[str], first: str) -> list[str]:
    """All files of a split GGUF given its first part (just [first] otherwise)."""
    m = _SPLIT_RE.search(first[: -len(".gguf")])
    if m is None:
        return [first]
    base = first[: m.start()]
    total = int(m.group(2))
    want = [f"{base}-{i:05d}-of-{total:05d}.gguf" for i in range(1, total + 1)]
    missing = [w for w in want if w not in files]
    if missing:
        raise ModelNotFoundError(f"split model {first} is incomplete: {', '.join(missing)} missing")
    return want


def _choose(files: list[str], quant: Optional[str], where: str) -> str:
    """The GGUF among `files` whose name carries `quant` (case-insensitive)."""
    ggufs = sorted(f for f in files if quant_of(f) is not None and _is_first_part(f))
    if not ggufs:
        raise ModelNotFoundError(f"{where} holds no GGUF model file")
    available = sorted({quant_of(f) for f in ggufs}, key=str.upper)
    if quant is None:
        matches = [f for f in ggufs if quant_of(f).upper() == DEFAULT_QUANT]
        if not matches and len(ggufs) == 1:
            return ggufs[0]
        if not matches:
            raise ValueError(f"{where} has several quants and no {DEFAULT_QUANT}: pick one of "
                             f"{', '.join(available)} (e.g. '...:{available[0]}')")
    else:
        matches = [f for f in ggufs if quant_of(f).upper() == quant.upper()]
        if not matches:
            raise ValueError(f"{where} has no {quant} file; available quants: {', '.join(available)}")
    if len(matches) > 1:
        # the same quant in several folders: take the one nearest the root
        matches.sort(key=lambda f: (f.count("/"), f))
        if matches[0].count("/") == matches[1].count("/"):
            raise ValueError(f"{where} has several {quant or DEFAULT_QUANT} files "
                             f"({', '.join(matches)}); pass a path instead")
    return matches[0]


def _offline() -> bool:
    import huggingface_hub

    check = getattr(huggingface_hub, "is_offline_mode", None)
    if check is not None:
        return bool(check())
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_files(repo_id: str, revision: Optional[str], cache_dir) -> Optional[list[str]]:
    """Files of the cached snapshot of `revision` (a branch, tag or commit),
    relative to the snapshot; None when the cache has no such snapshot. Read
    from huggingface_hub's cache layout (models--owner--name/refs, snapshots)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE)
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = revision or constants.DEFAULT_REVISION
    commit = rev
    ref = storage / "refs" / rev
    if ref.is_file():
        commit = ref.read_text().strip()
    snap = storage / "snapshots" / commit
    if not snap.is_dir():
        return None
    return sorted(p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file())


def _from_cache(repo_id, files, chosen, revision, cache_dir) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    paths = []
    for f in _parts(files, chosen):
        p = try_to_load_from_cache(repo_id, f, cache_dir=cache_dir, revision=revision)
        if not isinstance(p, str):
            return None
        paths.append(p)
    return Path(paths[0])


def resolve(repo_id: str, quant: Optional[str] = None, *, revision: Optional[str] = None,
            cache_dir: Union[str, os.PathLike, None] = None, token: Union[str, bool, None] = None,
            force_download: bool = False) -> Path:
    """The local path of the GGUF of ``repo_id`` carrying ``quant`` (default
    ``Q4_K_M``, or the repository's only GGUF), downloading it if needed.

    Raises ValueError when the repository has no file of that quant (listing
    the quants it has) and ModelNotFoundError when the repository, revision or
    Hub cannot be reached, or the model is not cached while ``HF_HUB_OFFLINE=1``.
    """
    if not isinstance(repo_id, str) or _REPO_RE.match(repo_id) is None or ":" in repo_id:
        raise ValueError(f"repo_id must read 'owner/name' (got {repo_id!r})")
    if quant is not None and (not isinstance(quant, str) or not quant):
        raise ValueError(f"quant must be a non-empty str such as 'Q4_K_M' or None (got {quant!r})")
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    where = repo_id + (f"@{revision}" if revision else "")

    cached = None if force_download else _cached_files(repo_id, revision, cache_dir)
    if cached:
        try:
            chosen = _choose(cached, quant, where + " (cached)")
            path = _from_cache(repo_id, cached, chosen, revision, cache_dir)
            if path is not None:
                return path
        except (ValueError, ModelNotFoundError):
            if _offline():
                raise _offline_error(where, quant, cached) from None

    if _offline():
        raise _offline_error(where, quant, cached)

    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision, token=token)
        chosen = _choose(files, quant, where)
        paths = [hf_hub_download(repo_id, f, revision=revision, cache_dir=cache_dir, token=token,
                                 force_download=force_download)
                 for f in _parts(files, chosen)]
    except GatedRepoError:
        raise ModelNotFoundError(f"{where} is gated: accept its terms on the Hub and log in "
                                 "(`hf auth login` or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{where}: no such model repository on the Hub (or it is private: "
                                 "log in with `hf auth login` or set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"{where}: no revision {revision!r} in that repository") from None
    except HfHubHTTPError as err:
        raise ModelNotFoundError(f"{where}: the Hub answered {_first_line(err)}") from None
    except OSError as err:  # connection errors, timeouts, full disk
        if isinstance(err, ModelNotFoundError):
            raise
        raise ModelNotFoundError(f"{where}: cannot download from the Hub ({_endpoint()}): "
                                 f"{_first_line(err)}") from None
    except Exception as err:  # httpx errors that are not OSErrors (ConnectError, timeouts)
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise ModelNotFoundError(f"{where}: cannot reach the Hub ({_endpoint()}): "
                                     f"{_first_line(err)}") from None
        raise
    return Path(paths[0])


def _offline_error(where: str, quant: Optional[str], cached: Optional[list[str]]) -> ModelNotFoundError:
    wanted = quant or DEFAULT_QUANT
    if cached:
        have = sorted({q for q in map(quant_of, cached) if q}, key=str.upper)
        return ModelNotFoundError(
            f"{where}:{wanted} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids "
            f"downloading it (cached quants: {', '.join(have) or 'none'})")
    return ModelNotFoundError(
        f"{where} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
        "download it once while online, or pass a local .gguf path")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
