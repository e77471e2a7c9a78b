"""Manifest validation on the cluster, with a driver whose memory does not grow with rows or shards.

    every shard -> a Ray task: schema, types, media types, ids unique within the shard (pipeline.corpora.shards);
                   its ids hashed to 64 bits and sent, by hash range, to one of a few bucket actors
    every bucket -> the hashes seen more than once, with the shards they came from (candidates)
    candidates -> confirmed on the ids themselves (the named shards are read again), so a hash collision is never
                  reported as a duplicate; the first real one fails the manifest, naming both shards and the id

The driver holds one small summary per shard (name, rows, size) and a bounded window of tasks in flight; the ids
live in the bucket actors (12 bytes a row, spread over the cluster) only while the check runs.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.corpora.shards import Shard, ShardFile, read_shard, read_valid_shard
from pipeline.infra import store
from pipeline.infra.console import console
from schemas import SchemaError

CANDIDATES_PER_PAGE = 64


def id_hashes(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """64-bit hashes of string ids (pandas' SipHash, the same on every node)."""
    values = ids.to_numpy(zero_copy_only=False) if isinstance(ids, pa.Array) else ids.to_numpy()
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


class IdBucket:
    """The hashes of one hash range of ids, with the index of the shard each came from."""

    def __init__(self) -> None:
        self.hashes: list[np.ndarray] = []
        self.shards: list[np.ndarray] = []
        self.groups: list[tuple[int, list[int]]] | None = None

    def add(self, shard: int, hashes: np.ndarray) -> None:
        self.hashes.append(hashes)
        self.shards.append(np.full(len(hashes), shard, dtype=np.uint32))

    def candidates(self, offset: int, limit: int) -> tuple[int, list[tuple[int, list[int]]]]:
        """(how many hashes occur more than once, a page of them as (hash, shard indices))."""
        if self.groups is None:
            hashes = np.concatenate(self.hashes) if self.hashes else np.empty(0, np.uint64)
            shards = np.concatenate(self.shards) if self.shards else np.empty(0, np.uint32)
            self.hashes, self.shards = [], []
            order = np.argsort(hashes, kind="stable")
            hashes, shards = hashes[order], shards[order]
            repeated = np.flatnonzero(hashes[1:] == hashes[:-1])
            groups: dict[int, set[int]] = defaultdict(set)
            for i in repeated:
                groups[int(hashes[i])].update((int(shards[i]), int(shards[i + 1])))
            self.groups = [(h, sorted(s)) for h, s in groups.items()]
        return len(self.groups), self.groups[offset : offset + limit]


def _check_shard(
    file: ShardFile, index: int, n_buckets: int, videos_allowed: bool, reserved: tuple[str, ...], needs: tuple[str, ...]
) -> tuple:
    """One shard's checks. Returns (url, rows, index), then its id hashes split into one array per bucket.

    The task hands its hashes back rather than calling the buckets itself: a task blocked in ray.get lends its CPU
    out, so Ray starts another worker process for the next shard, and on a small node that process churn cost more
    than the checks (2 CPUs were slower than 1)."""
    shard, table = read_valid_shard(file, reserved, needs)
    if not videos_allowed and pc.any(pc.equal(table.column("media_type"), "video")).as_py():
        raise SchemaError(file.url, "media_type", "videos are scored for quality only, not for this task")
    hashes = id_hashes(table.column("id").combine_chunks())
    which = hashes % np.uint64(n_buckets)
    return ((file.url, shard.num_rows, index), *(hashes[which == i] for i in range(n_buckets)))


def _ids_with_hashes(url: str, hashes: list[int]) -> list[str]:
    """The ids of a shard whose hash is one of `hashes`."""
    ids = read_shard(url, ["id"]).column("id").combine_chunks()
    return ids.filter(pa.array(np.isin(id_hashes(ids), np.array(hashes, dtype=np.uint64)))).to_pylist()


def validate_manifest_shards(
    files: list[ShardFile] | list[str],
    videos_allowed: bool = True,
    reserved: tuple[str, ...] = (),
    needs: tuple[str, ...] = (),
    # A shard's check is CPU work (Parquet decode, uniqueness, hashing): a whole CPU each. A quarter CPU each was
    # 4x slower on 2 CPUs (10 M rows: 49 s vs 12 s), four worker processes a core contending.
    cpus_per_task: float = 1.0,
    stall_s: float = 600.0,
    log=console.say,
) -> list[Shard]:
    """Check every shard of a manifest on the cluster (see the module docstring); raise SchemaError on the first
    problem, naming the shard and the column. `reserved`: column names the output adds, refused in a manifest;
    `needs`: optional manifest columns (schemas.OPTIONAL) that the scorer reads, required here.
    `files`: the listed shards (pipeline.corpora.shards.list_manifest), or URLs (each named by its file name).
    Returns the shards in their order."""
    import ray

    files = [ShardFile(f, store.basename(f)) if isinstance(f, str) else f for f in files]
    urls = [f.url for f in files]

    from pipeline.infra.watchdog import wait_or_fail

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Actors hold ids but need no CPU: num_cpus=0, so they can never starve the shard tasks.
    buckets = [ray.remote(num_cpus=0)(IdBucket).remote() for _ in range(max(1, min(cpus, len(urls))))]
    check = ray.remote(_check_shard).options(num_cpus=cpus_per_task, max_retries=3, num_returns=1 + len(buckets))
    window = max(2, 2 * int(cpus / cpus_per_task))
    rows: dict[int, int] = {}
    pending: dict = {}  # a shard task's summary ref -> the refs of its hash parts (the driver never fetches those)
    adding: list = []  # the buckets' add calls not yet done
    todo = list(enumerate(files))
    start = last_log = time.perf_counter()
    try:
        while todo or pending:
            while todo and len(pending) < window:
                index, file = todo.pop(0)
                summary, *parts = check.remote(file, index, len(buckets), videos_allowed, reserved, needs)
                pending[summary] = parts
            done, _ = wait_or_fail(list(pending), stall_s, "manifest validation (shard checks)")
            for ref in done:
                _, n, index = _get(ref)
                rows[index] = n
                # The bucket actors fetch the hashes straight from the object store.
                adding += [b.add.remote(index, part) for b, part in zip(buckets, pending.pop(ref))]
            if len(adding) > window * len(buckets):
                _, adding = wait_or_fail(adding, stall_s, "manifest validation (id buckets)", len(adding) // 2)
            if time.perf_counter() - last_log > 30:
                last_log = time.perf_counter()
                log(f"validating: {len(rows)}/{len(urls)} shards checked ({time.perf_counter() - start:.0f} s)")
        while adding:
            _, adding = wait_or_fail(adding, stall_s, "manifest validation (id buckets)", len(adding))
        _confirm_duplicates(urls, buckets, stall_s)
    finally:  # on a failure too: the ids held by the buckets go with them
        # Shard tasks still in flight (a window of 2 per CPU) are not cancelled but left to finish, their results
        # dropped: ray.cancel racing a task's completion aborted the driver (Ray 2.60, a failed RAY_CHECK in
        # TaskManager::CompletePendingTask, seen when a duplicate id failed validation mid-window).
        for b in buckets:
            ray.kill(b)
    return [Shard(f.url, f.name, rows[i], f.partitions) for i, f in enumerate(files)]


def _confirm_duplicates(urls: list[str], buckets: list, stall_s: float) -> None:
    """Page through the hash candidates of every bucket and confirm them on the ids; fail on the first real one."""
    import ray

    from pipeline.infra.watchdog import wait_or_fail

    lookup = ray.remote(_ids_with_hashes)
    for bucket in buckets:
        offset = 0
        while True:
            (ref,), _ = wait_or_fail([bucket.candidates.remote(offset, CANDIDATES_PER_PAGE)], stall_s, "id check")
            total, page = _get(ref)
            if not page:
                break
            by_shard: dict[int, list[int]] = defaultdict(list)
            for h, shards in page:
                for s in shards:
                    by_shard[s].append(h)
            refs = {s: lookup.remote(urls[s], hs) for s, hs in by_shard.items()}
            found = {s: set(_get(r)) for s, r in refs.items()}
            for _, shards in page:
                seen: dict[str, int] = {}
                for s in shards:  # an id is unique within its shard: seen in two of them means a duplicate
                    for item_id in sorted(found[s]):
                        if item_id in seen:
                            where = [urls[seen[item_id]], urls[s]]
                            raise SchemaError(
                                urls[s], "id", f"ids appear in more than one shard, e.g. {item_id!r} in {where}"
                            )
                        seen[item_id] = s
            offset += len(page)
            if offset >= total:
                break


def _get(ref):
    """ray.get that re-raises a task's SchemaError as itself (not wrapped in RayTaskError)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, SchemaError):
            raise e.cause from None
        raise
