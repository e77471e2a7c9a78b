"""A model registry in object storage: `<registry>/<name>/<version>/` folders and a `CURRENT` pointer.

Scoring accepts a model folder, a hub id, or a registry entry (a folder holding CURRENT, which names the version
folder to use). Remote folders are copied once to a local cache, since transformers loads from local paths.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline import store

CACHE = Path(os.environ.get("QCURATE_CACHE", Path.home() / ".cache" / "qcurate"))


@dataclass(frozen=True)
class ModelRef:
    path: str  # a model folder (local or remote URL) or a hub id
    revision: str  # what exactly will run: registry version, content hash of a folder, or hub revision


def _is_folder(url: str) -> bool:
    return "://" in url or Path(url).exists()


def weights_digest(url: str) -> str:
    """sha256 over a model folder's config and weight files: the honest revision of an unversioned folder."""
    fs, path = store.filesystem(url)
    digest = hashlib.sha256()
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith((".safetensors", "config.json", ".index.json")))
    for f in files:
        digest.update(store.basename(f).encode())
        with fs.open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def resolve(model: str, revision: str | None = None) -> ModelRef:
    """Which model folder (or hub id) `model` names, and its revision."""
    if _is_folder(model) and store.exists(store.join(model, "CURRENT")):
        version = store.read_text(store.join(model, "CURRENT")).strip()
        return ModelRef(store.join(model, version), f"{store.basename(model)}/{version}")
    if _is_folder(model):
        return ModelRef(model, revision or weights_digest(model))
    return ModelRef(model, revision or "unpinned")  # a hub id


def local_path(path: str) -> str:
    """A local folder holding the model: remote folders are downloaded once into the cache."""
    if "://" not in path or path.startswith("file://"):
        return path.removeprefix("file://")
    target = CACHE / "models" / hashlib.sha256(path.encode()).hexdigest()[:16]
    done = target / ".complete"
    if not done.exists():
        fs, remote = store.filesystem(path)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        store.retry(lambda: fs.get(remote.rstrip("/") + "/", str(tmp), recursive=True), f"download {path}")
        try:
            tmp.rename(target)
        except OSError:  # another worker on this node finished first
            shutil.rmtree(tmp, ignore_errors=True)
        done.touch()
    return str(target)


# ------------------------------------------------------------------------------------------------------------
# Versions written by the retraining job
#
#   <registry>/<name>/v0003/            one immutable version: model files, metrics.json, version.json (written last)
#   <registry>/<name>/CURRENT           the promoted version's folder name, e.g. "v0003"
#   <registry>/<name>/_runs/<run-id>/   Ray Train checkpoints of a run in progress (removed once its version exists)
#
# A version folder without version.json is an upload that did not finish: it is never listed, resolved or reused.

VERSION_FILE = "version.json"
METRICS_FILE = "metrics.json"
RUNS_DIR = "_runs"
_VERSION_NAME = re.compile(r"^v(\d{4,})$")


class VersionExistsError(FileExistsError):
    """A version folder already exists: versions are never overwritten."""


def entry_url(registry: str, name: str) -> str:
    """`<registry>/<name>`: the entry that `resolve` turns into its CURRENT version."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    return store.join(registry, name)


def _fresh(url: str) -> None:
    """Forget fsspec's cached listings under `url`: other runs write the registry while this process reads it."""
    fs, path = store.filesystem(url)
    fs.invalidate_cache(path)  # the path and its parents
    cache = getattr(fs, "dircache", {})
    for key in [k for k in cache if k.startswith(path.rstrip("/") + "/")]:
        cache.pop(key, None)


def _version_folders(entry: str) -> list[str]:
    """Every folder named like a version, finished or not, in version order."""
    _fresh(entry)
    fs, path = store.filesystem(entry)
    if not store.retry(lambda: fs.exists(path), f"exists {entry}"):
        return []
    names = [store.basename(p) for p in store.retry(lambda: fs.ls(path, detail=False), f"list {entry}")]
    return sorted((n for n in names if _VERSION_NAME.match(n)), key=lambda n: int(n[1:]))


def list_versions(entry: str) -> list[str]:
    """The finished versions of an entry (those with version.json), oldest first."""
    return [v for v in _version_folders(entry) if store.exists(store.join(entry, v, VERSION_FILE))]


def next_version_name(entry: str) -> str:
    """One past every version folder there is, finished or not, so no folder is ever written twice."""
    folders = _version_folders(entry)
    return f"v{int(folders[-1][1:]) + 1:04d}" if folders else "v0001"


def read_version(entry: str, version: str) -> dict:
    return store.read_json(store.join(entry, version, VERSION_FILE))


def current_version(entry: str) -> str | None:
    """The version CURRENT names, or None when the entry has none yet."""
    url = store.join(entry, "CURRENT")
    _fresh(entry)
    return store.read_text(url).strip() if store.exists(url) else None


def set_current(entry: str, version: str) -> None:
    """Point CURRENT at a finished version (one small object: readers see the old or the new name, never half)."""
    if not store.exists(store.join(entry, version, VERSION_FILE)):
        raise FileNotFoundError(f"{entry}/{version} is not a finished version; CURRENT is left as it is")
    store.write_text(store.join(entry, "CURRENT"), version + "\n")


def upload_version(entry: str, version: str, local_folder: str) -> str:
    """Copy a local folder's files to `<entry>/<version>/`, refusing when that folder already holds anything.

    version.json and metrics.json are not part of the upload: `finish_version` writes them, version.json last.
    """
    url = store.join(entry, version)
    fs, path = store.filesystem(url)
    if store.retry(lambda: fs.exists(path), f"exists {url}"):
        raise VersionExistsError(f"{url} already exists; versions are never overwritten")
    store.retry(lambda: fs.makedirs(path, exist_ok=True), f"mkdir {url}")
    for name in sorted(os.listdir(local_folder)):
        if name in (VERSION_FILE, METRICS_FILE) or not os.path.isfile(os.path.join(local_folder, name)):
            continue
        source, target = os.path.join(local_folder, name), f"{path.rstrip('/')}/{name}"
        store.retry(lambda s=source, t=target: fs.put_file(s, t), f"upload {url}/{name}")
    return url


def finish_version(entry: str, version: str, metrics: dict, record: dict) -> None:
    """Write metrics.json, then version.json: from that moment the version exists, and it never changes again."""
    if store.exists(store.join(entry, version, VERSION_FILE)):
        raise VersionExistsError(f"{entry}/{version} is already finished; versions are never overwritten")
    store.write_json(store.join(entry, version, METRICS_FILE), metrics)
    store.write_json(store.join(entry, version, VERSION_FILE), record)


def repair_current(entry: str) -> str | None:
    """Finish a promotion that a killed run decided (recorded in its version.json) but did not get to write.

    Only the newest finished version is considered, and only when it is newer than CURRENT.
    Returns the version CURRENT was moved to, or None.
    """
    versions = list_versions(entry)
    if not versions:
        return None
    newest, current = versions[-1], current_version(entry)
    if current is not None and int(current[1:]) >= int(newest[1:]):
        return None
    if read_version(entry, newest).get("promotion", {}).get("promoted"):
        set_current(entry, newest)
        return newest
    return None


def seen_shards(entry: str, version: str | None) -> dict[str, str]:
    """url -> digest of every label shard the version's lineage was trained or measured on ({} for no version)."""
    if version is None:
        return {}
    return dict(read_version(entry, version).get("seen_shards", {}))


def find_run(entry: str, run_id: str) -> str | None:
    """The finished version that a run with this id produced, if any (a rerun of a finished run does nothing)."""
    for version in reversed(list_versions(entry)):
        if read_version(entry, version).get("run", {}).get("id") == run_id:
            return version
    return None


def runs_url(entry: str) -> str:
    """Where Ray Train keeps the entry's runs in progress (checkpoints, to resume a killed run)."""
    return store.join(entry, RUNS_DIR)


def remove_run(entry: str, run_id: str) -> None:
    _fresh(runs_url(entry))
    fs, path = store.filesystem(store.join(runs_url(entry), run_id))
    if store.retry(lambda: fs.exists(path), f"exists {path}"):
        store.retry(lambda: fs.rm(path, recursive=True), f"remove {path}")
