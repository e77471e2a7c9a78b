"""A model registry in object storage: `<registry>/<name>/<version>/` folders and a `CURRENT` pointer.

Scoring accepts a model folder, a hub id, or a registry entry (a folder holding CURRENT, which names the version
folder to use). Remote folders and hub snapshots become local folders of safetensors (pipeline.registry.checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.infra import store
from pipeline.infra.console import console
from pipeline.infra.version import code_version
from pipeline.registry import checkpoint


@dataclass(frozen=True)
class ModelRef:
    path: str  # a model folder (local or remote URL), or a hub id pinned to a commit (`org/name@sha`)
    revision: str  # what exactly will run: hub commit sha, registry version (+ digest), or content hash of a folder


def _is_folder(url: str) -> bool:
    return "://" in url or Path(url).exists()


def weights_digest(url: str) -> str:
    """sha256 over a model folder's config and weight files: the honest revision of an unversioned folder."""
    fs, path = store.filesystem(url)
    digest = hashlib.sha256()
    kinds = (".safetensors", ".bin", "config.json", ".index.json")
    files = sorted(f for f in fs.ls(path, detail=False) if f.endswith(kinds))
    for f in files:
        digest.update(store.basename(f).encode())
        with fs.open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def resolve(model: str, revision: str | None = None) -> ModelRef:
    """Which model folder (or pinned hub id) `model` names, at which revision.

    `revision` selects: a version of a registry entry (`v0003`; default CURRENT), or a branch, tag, `refs/pr/N` or
    commit of a hub id (default main). A plain folder has no revisions: it is identified by the digest of its files.
    """
    if _is_folder(model) and store.exists(store.join(model, "CURRENT")):
        version = revision or store.read_text(store.join(model, "CURRENT")).strip()
        if not store.exists(store.join(model, version, VERSION_FILE)):
            raise FileNotFoundError(f"{model}: no finished version {version!r} (versions: {list_versions(model)})")
        digest = read_version(model, version).get("digest")
        name = f"{store.basename(model)}/{version}"
        return ModelRef(store.join(model, version), f"{name}@{digest}" if digest else name)
    if _is_folder(model):
        if revision:
            raise ValueError(
                f"--model-revision {revision!r}: {model} is a plain folder, which has no revisions (it is identified "
                "by the digest of its files); revisions select a hub id's commit or a registry entry's version"
            )
        return ModelRef(model, weights_digest(model))
    if not checkpoint.is_hub_id(model):
        raise FileNotFoundError(f"{model}: no such model folder, and not a hub id (org/name)")
    sha = checkpoint.hub_revision(model, revision)
    return ModelRef(checkpoint.pinned(model, sha), sha)


def local_path(path: str) -> str:
    """A local folder holding the model's safetensors files (see pipeline.registry.checkpoint.local_folder)."""
    return checkpoint.local_folder(path)


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


# ------------------------------------------------------------------------------------------------------------
# Versions imported from published checkpoints (jobs/import_model.py)


def is_original_vtamiq(source: str) -> bool:
    """Whether `source` names a `.pth` file of the VTAMIQ authors' code (pipeline.models.vtamiq_original)."""
    return source.endswith(".pth")


def _original_vtamiq(source: str, original: dict | None, work: Path) -> tuple[Path, str]:
    """The authors' VTAMIQ `.pth` (local or any fsspec URL), read safely, as a VTAMIQ folder under `work` with an
    original.json beside it (the run configuration, the output's polarity, the checkpoint's own entries); and the
    file's digest, its revision."""
    from pipeline.models.vtamiq_original import ORIGINAL_PUBLISHED, from_original

    local = work / "original.pth"
    fs, remote = store.filesystem(source)
    store.retry(lambda: fs.get_file(remote, str(local)), f"download {source}")
    digest = "sha256:" + hashlib.sha256(local.read_bytes()).hexdigest()[:16]
    state, entries = checkpoint.load_training_checkpoint(local)
    local.unlink()
    model = from_original(state, original)
    folder = work / "model"
    model.save(folder)
    record = {
        "source": source,
        "source_digest": digest,
        "run_configuration": original or ORIGINAL_PUBLISHED,
        "higher_is_better": model.config.higher_is_better,
        "checkpoint_entries": entries,
    }
    (folder / "original.json").write_text(json.dumps(record, indent=2) + "\n")
    return folder, digest


def import_checkpoint(
    source: str,
    registry: str,
    name: str,
    revision: str | None = None,
    promote: bool = False,
    log=console.say,
    original: dict | None = None,
) -> tuple[str, dict]:
    """Write a published checkpoint (hub id, or a folder: local or any fsspec URL; or the VTAMIQ authors' `.pth`,
    configured by `original`, their run configuration, default the published one) as a new immutable safetensors
    version of `<registry>/<name>`; `.bin` and `.pth` weights are read safely on the way (weights_only,
    pipeline.registry.checkpoint), remote code is left behind. The entry's first version becomes CURRENT; a later
    one only with `promote`. Returns (version, its version.json record)."""
    import tempfile
    from datetime import datetime, timezone

    entry = entry_url(registry, name)
    with tempfile.TemporaryDirectory(prefix="qcurate-import-") as work:
        if is_original_vtamiq(source):
            if revision:
                raise ValueError(f"--revision {revision!r}: a .pth file has no revisions (its digest is recorded)")
            folder, source_revision = _original_vtamiq(source, original, Path(work))
            base = {"path": source, "revision": source_revision}
        else:
            if original is not None:
                raise ValueError("a run configuration of the original VTAMIQ applies to its .pth files only")
            ref = resolve(source, revision)
            if checkpoint.is_hub_id(source):
                log(f"import: {source} at commit {ref.revision}")
            folder, source_revision = Path(checkpoint.local_folder(ref.path)), ref.revision
            base = {"path": ref.path, "revision": ref.revision}
        staging = Path(work) / "staging"
        staging.mkdir()
        # Link (not copy) the files to upload: the weights may be many GB. Never pickles or remote code.
        for path in sorted(folder.iterdir()):
            if (
                path.is_file()
                and path.suffix not in (".bin", ".pth", ".py", ".pyc", ".lock")
                and not path.name.startswith(".")
            ):
                os.symlink(path.resolve(), staging / path.name)
        digest = weights_digest(str(staging))
        version = next_version_name(entry)
        log(f"import: uploading {len(os.listdir(staging))} files to {entry}/{version}")
        upload_version(entry, version, str(staging))
    current = current_version(entry)
    promoted = current is None or promote
    reason = (
        "first version of the entry"
        if current is None
        else ("--promote" if promote else f"CURRENT stays at {current} (pass --promote to move it)")
    )
    record = {
        "method": "import",
        "source": source,
        "source_revision": source_revision,
        "digest": digest,
        "base_model": base,
        "parent": None,
        "seen_shards": {},
        "code_version": code_version(),
        "created_at": datetime.now(timezone.utc).isoformat(),
        "promotion": {"promoted": promoted, "reason": reason},
    }
    finish_version(entry, version, {}, record)
    if promoted:
        set_current(entry, version)
    return version, record
