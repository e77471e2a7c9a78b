"""Checkpoints as they are published, made loadable: a hub id or a folder becomes a local folder of safetensors.

The Q-Align family (`q-future/one-align`, ...) ships its weights only as pickled `pytorch_model-0000N-of-0000M.bin`
shards. qcurate never unpickles them in full: each shard is read with `torch.load(weights_only=True)`, which refuses
any pickle that would build an object other than tensors and plain containers, and is written once as safetensors.
Every later load, on every actor, reads safetensors. Remote code beside a config (`auto_map`) is never imported: the
native model classes load these checkpoints (pipeline.models).

    local_folder("q-future/one-align@<sha>")   hub snapshot at that commit (HF cache; HF_HUB_OFFLINE=1 works)
    local_folder("s3://bucket/models/x/v0001") downloaded once per node into the qcurate cache
    local_folder("/data/ckpt")                 as is, or its safetensors conversion in the per-node cache
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import torch
from filelock import FileLock
from safetensors.torch import save_file

from pipeline.infra import store

# transformers otherwise asks the hub's conversion service to turn a `.bin` repo into safetensors (a network call
# from every actor); qcurate converts locally instead.
os.environ.setdefault("DISABLE_SAFETENSORS_CONVERSION", "1")

log = logging.getLogger("qcurate.checkpoint")

CACHE = Path(os.environ.get("QCURATE_CACHE", Path.home() / ".cache" / "qcurate"))
# What a model folder needs besides its weights: config, tokenizer, processor, chat template.
META_PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
SAFETENSORS_PATTERNS = ["*.safetensors", "*.safetensors.index.json"]
BIN_PATTERNS = ["*.bin", "*.bin.index.json"]
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
ST_INDEX, ST_SINGLE = "model.safetensors.index.json", "model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class UnsafeCheckpointError(ValueError):
    """A pickled weight file holds something other than tensors: it is refused, and nothing in it ran."""


class CheckpointError(ValueError):
    """A checkpoint folder cannot be made loadable (no weights, an index naming missing shards, ...)."""


# ------------------------------------------------------------------------------------------------------------
# Hub ids
# ------------------------------------------------------------------------------------------------------------


def is_hub_id(model: str) -> bool:
    """`org/name` (optionally `@revision`) that is neither a URL nor an existing local path."""
    return "://" not in model and not Path(model).exists() and bool(_HUB_ID.match(model.split("@", 1)[0]))


def pinned(repo_id: str, sha: str) -> str:
    """The path form of a hub checkpoint at one commit: what every actor resolves, so all load the same files."""
    return f"{repo_id}@{sha}"


def hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit sha that `revision` (a branch, tag, `refs/pr/N` or sha; default main) names, fetching only the
    small config files (offline: read from the Hugging Face cache's `refs/`)."""
    from huggingface_hub import snapshot_download

    folder = snapshot_download(repo_id, revision=revision, allow_patterns=META_PATTERNS)
    return Path(folder).name


def hub_snapshot(repo_id: str, sha: str) -> Path:
    """The snapshot folder of `repo_id` at commit `sha`, with its safetensors weights, else its `.bin` ones
    (downloaded only when the first are absent); remote code files are not fetched."""
    from huggingface_hub import constants, snapshot_download

    # A commit sha skips the hub's ref lookup, so offline mode must be passed on to reach the cache.
    def fetch(patterns: list[str]) -> Path:
        offline = constants.is_offline_mode()
        return Path(snapshot_download(repo_id, revision=sha, allow_patterns=patterns, local_files_only=offline))

    folder = fetch(META_PATTERNS + SAFETENSORS_PATTERNS)
    return folder if weight_files(folder)[1] else fetch(META_PATTERNS + BIN_PATTERNS)


# ------------------------------------------------------------------------------------------------------------
# Weights in a folder
# ------------------------------------------------------------------------------------------------------------


def weight_files(folder: Path) -> tuple[str, list[str]]:
    """("safetensors" | "bin" | "", the weight files) of a model folder, by its index file or its single file."""
    for kind, index, single in (("safetensors", ST_INDEX, ST_SINGLE), ("bin", BIN_INDEX, BIN_SINGLE)):
        if (folder / index).exists():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise CheckpointError(f"{folder}/{index} names shards that are not there: {missing}")
            return kind, shards
        if (folder / single).exists():
            return kind, [single]
    return "", []


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, read without running any code from it (weights_only): tensors only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused: the pickle holds more than tensors ({first}); it was not run. "
            "Only plain state dicts of tensors are loaded."
        ) from None
    except RuntimeError as e:  # not a torch file at all (truncated, another format)
        raise CheckpointError(f"{path}: not a readable PyTorch weight file: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafeCheckpointError(f"{path}: refused: not a state dict of tensors")
    return state


def _numpy_scalar_globals() -> list:
    """What a pickled numpy float (a metric logged beside the weights) needs, by its numpy 1 and numpy 2 names:
    the scalar reconstructor and dtypes. Nothing else is allowed in."""
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"]
    return [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *dtypes,
    ]


def load_training_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A training script's checkpoint, {"model_state_dict": tensors, other entries: numbers}, as the authors of
    VTAMIQ (pipeline.models.vtamiq_original) save it: read with weights_only (tensors, containers, numbers and numpy
    scalars; nothing in it runs). Returns the state dict and the other entries as plain numbers."""
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused: the pickle holds more than tensors and numbers ({first}); it was not run"
        ) from None
    except RuntimeError as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {e}") from None
    state = data.get("model_state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = list(data)[:6] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: no model_state_dict of tensors (found: {found})")
    meta = {k: v.item() if hasattr(v, "item") else v for k, v in data.items() if k != "model_state_dict"}
    return dict(state), meta


def convert_folder(source: Path, target: Path) -> None:
    """Write `source` (a `.bin` checkpoint) to `target` as safetensors: the same tensors, names, dtypes and shard
    split (so peak memory is one source shard, read memory-mapped), plus the metadata files (config, tokenizer,
    processor). Remote code and pickles are not copied."""
    kind, shards = weight_files(source)
    if kind != "bin":
        raise CheckpointError(f"{source}: no pytorch_model*.bin weights to convert")
    target.mkdir(parents=True)
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        state = load_bin(source / shard)
        name = ST_SINGLE if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        # safetensors refuses tensors that share memory (tied weights pickled once): give each its own copy.
        seen: set[int] = set()
        tensors = {}
        for key, tensor in state.items():
            ptr = tensor.untyped_storage().data_ptr()
            tensors[key] = tensor.clone() if ptr in seen else tensor.contiguous()
            seen.add(ptr)
            weight_map[key] = name
            total += tensor.numel() * tensor.element_size()
        save_file(tensors, str(target / name), metadata={"format": "pt"})
        del state, tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (target / ST_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix not in (".bin", ".py", ".pyc") and path.name != BIN_INDEX:
            shutil.copyfile(path, target / path.name)


def safetensors_folder(folder: Path) -> Path:
    """`folder` itself when it has safetensors weights, else its conversion, made once per node.

    The conversion lives in the qcurate cache, keyed by the source's weight files (name, size, mtime); a file lock
    makes the other actors of the node wait for it, and a marker is written only once it is complete.
    """
    kind, shards = weight_files(folder)
    if kind == "safetensors":
        return folder
    if kind == "":
        raise CheckpointError(
            f"{folder}: no weights (model.safetensors[.index.json] or pytorch_model*.bin[.index.json])"
        )
    stats = [(s, (folder / s).stat().st_size, int((folder / s).stat().st_mtime)) for s in shards]
    key = hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()[:16]
    target = CACHE / "converted" / key
    done = target / ".complete"
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if done.exists():  # another actor of this node converted it while we waited
            return target
        shutil.rmtree(target, ignore_errors=True)  # a conversion killed half-way
        log.warning(
            "%s has only pickled .bin weights: converting them to safetensors once on this node (%s). "
            "`python jobs/import_model.py` converts once for the whole cluster and is the faster way.",
            folder,
            target,
        )
        start = time.perf_counter()
        tmp = target.with_name(f"{key}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        convert_folder(folder, tmp)
        tmp.rename(target)
        done.write_text(json.dumps({"source": str(folder), "seconds": round(time.perf_counter() - start, 2)}))
    return target


# ------------------------------------------------------------------------------------------------------------
# Any model path -> a local folder of safetensors
# ------------------------------------------------------------------------------------------------------------


def download(url: str) -> Path:
    """A remote model folder (any fsspec URL), downloaded once into the cache (per node)."""
    target = CACHE / "models" / hashlib.sha256(url.encode()).hexdigest()[:16]
    done = target / ".complete"
    if not done.exists():
        fs, remote = store.filesystem(url)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        store.retry(lambda: fs.get(remote.rstrip("/") + "/", str(tmp), recursive=True), f"download {url}")
        try:
            tmp.rename(target)
        except OSError:  # another worker on this node finished first
            shutil.rmtree(tmp, ignore_errors=True)
        done.touch()
    return target


def local_folder(path: str) -> str:
    """A local folder holding the model with safetensors weights, for any model path qcurate accepts:
    a local folder, a remote folder URL, or a pinned hub id (`org/name@sha`, see `pinned`)."""
    if path.startswith("file://") or ("://" not in path and Path(path).exists()):
        folder = Path(path.removeprefix("file://"))
    elif "://" in path:
        folder = download(path)
    elif is_hub_id(path):
        repo_id, _, sha = path.partition("@")
        folder = hub_snapshot(repo_id, sha or hub_revision(repo_id))
    else:
        raise CheckpointError(f"{path}: neither a model folder, a URL, nor a hub id (org/name)")
    return str(safetensors_folder(folder))


def metadata_folder(path: str) -> str:
    """A local folder with the model's config, tokenizer and processor files but not its weights (for the driver,
    which reads what a checkpoint is without loading it)."""
    if path.startswith("file://") or ("://" not in path and Path(path).exists()):
        return path.removeprefix("file://")
    if "://" in path:
        target = CACHE / "metadata" / hashlib.sha256(path.encode()).hexdigest()[:16]
        fs, remote = store.filesystem(path)
        target.mkdir(parents=True, exist_ok=True)
        for name in store.retry(lambda: fs.ls(remote, detail=False), f"list {path}"):
            if name.endswith((".json", ".jinja")) and not name.endswith(".index.json"):
                store.retry(lambda n=name: fs.get_file(n, str(target / store.basename(n))), f"download {name}")
        return str(target)
    repo_id, _, sha = path.partition("@")
    from huggingface_hub import constants, snapshot_download

    return snapshot_download(
        repo_id, revision=sha or None, allow_patterns=META_PATTERNS, local_files_only=constants.is_offline_mode()
    )
