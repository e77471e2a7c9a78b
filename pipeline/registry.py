"""A model registry in object storage: `<registry>/<name>/<version>/` folders and a `CURRENT` pointer.

Scoring accepts a model folder, a hub id, or a registry entry (a folder holding CURRENT, which names the version
folder to use). Remote folders are copied once to a local cache, since transformers loads from local paths.
"""

from __future__ import annotations

import hashlib
import os
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
