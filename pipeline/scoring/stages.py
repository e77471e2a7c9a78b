"""Executing a scoring run on Ray Data: the CPU stage, the device stage, and the loop that commits each shard.

    read_rows(pending shards) -> map_batches(PrepareStage, CPU actors) -> map_batches(ScoreStage, one per GPU)
        -> the driver collects each shard's score rows (small: no pixels) and commits the shard once it is complete.

What a stage does with a row is the kind of scorer's (pipeline.scorers: an LMM's levels, a full-reference metric);
a kind that computes everything while preparing (PSNR, SSIM) runs no scorer actors. Decoded pixels travel between
Ray workers only.
"""

from __future__ import annotations

import json
import pickle
import time
from collections import Counter, defaultdict
from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.corpora.shards import BYTES, READ_ERROR, Shard, read_rows
from pipeline.infra.console import console
from pipeline.infra.media import MediaError, MediaOptions, Prefetcher, given_bytes
from pipeline.infra.watchdog import watch
from pipeline.scorers import Kind, step_columns
from pipeline.scoring.commit import commit_shard, error_kind
from pipeline.scoring.config import JobError
from pipeline.scoring.plan import Plan
from pipeline.scoring.progress import ScoringProgress
from schemas import MANIFEST_V1


class PrepareStage:
    """CPU stage: fetch, decode and prepare each row the kind's way (pipeline.scorers). Bad items become errors."""

    def __init__(self, kind: Kind, options: MediaOptions) -> None:
        self.prepare = kind.preparer(options)
        self.columns, self.keep_inputs = kind.prepared_columns, kind.runs_on_device
        self.reads, self.references = kind.reads, kind.references
        self.options = options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        # "" = no error: an all-null column would come back from Arrow as floats (NaN) in the next stage
        errors, inputs = np.full(n, "", object), np.full(n, b"", object)
        values = {c: np.full(n, np.nan) for c in self.columns}
        rows = [{k: batch[k][i] for k in ("id", "uri", "media_type", *self.reads)} for i in range(n)]
        # Bytes the read task brought along (a manifest's bytes column, pipeline.corpora.inline): no fetch for those.
        # Or the error that stands for them (a member missing from its archive, pipeline.corpora.tars).
        given = batch[BYTES] if BYTES in batch else np.full(n, None, object)
        if READ_ERROR in batch:
            given = [MediaError(*e.split(": ", 1)) if e else b for b, e in zip(given, batch[READ_ERROR])]
        # The objects each row reads (its item unless given; a full-reference kind's reference too), fetched a few
        # rows ahead while this thread decodes and prepares one row at a time, in order. Each row keeps its outcome.
        reads = [
            [
                *([] if given[i] is not None else [(row["uri"], row["media_type"])]),
                *((row[c], "image") for c in self.references),
            ]
            for i, row in enumerate(rows)
        ]
        with Prefetcher(reads, self.options) as prefetch:
            for i, row in enumerate(rows):
                prefetch.advance(i)
                try:
                    with given_bytes(row["uri"], given[i]) if given[i] is not None else nullcontext():
                        prepared = self.prepare(row)
                    inputs[i] = pickle.dumps(prepared.inputs, protocol=5)
                    for c, v in prepared.values.items():
                        values[c][i] = v
                except MediaError as e:
                    errors[i] = str(e)
                except Exception as e:  # a processor failing on one odd item must not stop the shard
                    errors[i] = f"preprocess_error: {type(e).__name__}: {e}"
        out = {"id": batch["id"], "path": batch["path"], "error": errors, **values}
        return order_by_shape({**out, "inputs": inputs} if self.keep_inputs else out)


# Rows of a prepared window are sorted by these (where the kind prepares them) so that the scorer's consecutive batches
# hold items of about one shape: videos of one frame count, prompts of about one token count, little padding.
SHAPE_COLUMNS = ("frames", "tokens")
# PrepareStage works on windows of this many scorer batches: wide enough to find rows of like shape, small enough
# that a window's rows still reach the scorer (and their shard's commit) moments after they were read.
SHAPE_WINDOW = 4


def order_by_shape(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prepared rows sorted by (frames, tokens), ascending, errors (NaN) last; ties keep their order. Free to do:
    the driver puts every shard's rows back in manifest order by id (`assemble`)."""
    keys = [rows[c] for c in reversed(SHAPE_COLUMNS) if c in rows]  # np.lexsort: the last key is the primary one
    if not keys:
        return rows
    order = np.lexsort(keys)
    return {k: v[order] for k, v in rows.items()}


class ScoreStage:
    """Scorer actor: holds the kind's model on its GPU (or CPU) and scores each batch in one device step.

    It is given a few batches at a time (SCORER_TASKS_IN_FLIGHT): Ray fetches the queued batches' blocks into the
    actor's node while the current one runs, so the device does not wait on the object store between batches.
    """

    def __init__(self, kind: Kind) -> None:
        import torch

        self.step = kind.device_step("cuda" if torch.cuda.is_available() else "cpu")
        self.columns = step_columns(kind)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        ok = batch["error"] == ""
        out = {k: v for k, v in batch.items() if k != "inputs"}
        values = {c: np.full(n, np.nan) for c in self.columns}
        if ok.any():
            for c, v in self.step([pickle.loads(b) for b in batch["inputs"][ok]]).items():
                values[c][ok] = v
        return {**out, **values}


# Logical CPUs, which only decide what Ray runs at once. A read task takes one (Ray Data's default, which lets the
# split into blocks run inside the read task) and one is always left free for reads, so that reads never wait on
# actors that wait on reads.
READ_CPUS = 1.0


def logical_cpus(cpus: float, gpus: float, num_scorers: int) -> tuple[float, float, int]:
    """(CPUs per decoder, CPUs per scorer, number of decoders) for a cluster of `cpus` and `gpus`.

    On large machines a decoder and a GPU scorer each take a CPU. On small ones decoders and CPU scorers take a
    quarter each, sharing the cores, with at most one decoder per core.
    """
    unit = 1.0 if cpus >= 8 else 0.25
    scorer_cpus = 1.0 if gpus else unit
    decoders = min(int(cpus), int((cpus - READ_CPUS - num_scorers * scorer_cpus) / unit))
    return unit, scorer_cpus, max(1, decoders)


# Batches queued on each scorer actor: one running, two being fetched (Ray Data's default is 2: one running, one
# fetched, which leaves the device idle whenever one batch's transfer or decode runs late).
SCORER_TASKS_IN_FLIGHT = 3


def execute(plan: Plan, log=console.say) -> tuple[Counter, dict[str, float], dict[str, str]]:
    """Run the pipeline over the plan's pending shards that hold rows, committing each as it completes. Returns counts,
    timings (the time to the first scored rows, i.e. actor start-up and model load, and the steady rate after it) and
    the shards that yielded fewer rows than validation counted (name -> "rows seen of rows expected"), which are not
    committed."""
    import ray

    config, kind, output = plan.config, plan.kind, plan.output
    pending = [s for s in plan.pending if s.num_rows]
    if not pending:
        return Counter(), {}, {}

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver prints its own progress lines
    # Rows come back in manifest order, so shards complete one after another: the driver holds the rows of about
    # one partly gathered shard at a time, however many shards there are (Ray Data reorders in the object store).
    ctx.execution_options.preserve_order = True
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
    num_scorers = config.num_scorers or max(1, int(gpus / config.gpus_per_scorer))
    if not kind.runs_on_device:  # preparation computes everything: no scorer actors, every CPU decodes
        num_scorers = 0
    scorer_gpus = config.gpus_per_scorer if gpus else 0
    unit, scorer_cpus, decoders = logical_cpus(cpus, gpus, num_scorers)
    need_cpus, need_gpus = num_scorers * scorer_cpus + unit + READ_CPUS, num_scorers * scorer_gpus
    if need_cpus > cpus or need_gpus > gpus:  # would wait forever for resources that are not there
        raise JobError(
            f"--num-scorers {num_scorers} (each {scorer_cpus:g} CPU, {scorer_gpus:g} GPU) with one decoder and the "
            f"reads needs {need_cpus:g} CPU(s) and {need_gpus:g} GPU(s); the cluster has {cpus:g} and {gpus:g}"
        )
    options = MediaOptions(
        sample_fps=config.fps,
        max_frames=config.max_frames,
        draft=config.draft,
        fetch_concurrency=config.fetch_concurrency,
    )

    # One read task per pending shard, from the listing validation already made: no second listing of the manifest
    # and no footer reads on the cluster before the first row (Ray Data's read_parquet starts 32 footer-reading actors).
    source = ray.data.from_items(
        [{"shard": s.url, "name": s.name, "partitions": json.dumps(s.partitions)} for s in pending],
        override_num_blocks=len(pending),
    )
    ds = (
        source.map_batches(
            read_rows,
            fn_kwargs={"columns": [*MANIFEST_V1.names, *kind.reads]},
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=READ_CPUS,
        )
        # Manifest files are read as one block each; split into blocks of a few batches so that decoding and
        # scoring overlap (streaming) and finished rows reach the driver, and its commits, early.
        .repartition(target_num_rows_per_block=config.batch_size * 8)
        .map_batches(
            PrepareStage,
            fn_constructor_kwargs={"kind": kind, "options": options},
            # a window of a few scorer batches, sorted by shape inside (order_by_shape)
            batch_size=config.batch_size * SHAPE_WINDOW,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=decoders),  # all started at once: their start-up overlaps
            num_cpus=unit,
        )
    )
    if num_scorers:
        ds = ds.map_batches(
            ScoreStage,
            fn_constructor_kwargs={"kind": kind},
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=num_scorers, max_tasks_in_flight_per_actor=SCORER_TASKS_IN_FLIGHT),
            num_gpus=scorer_gpus,
            num_cpus=scorer_cpus,
        )
    by_path = {s.url: s for s in pending}
    parts: dict[str, list[pa.Table]] = defaultdict(list)
    seen: Counter = Counter()
    counts: Counter = Counter()
    t0 = time.perf_counter()
    t_first, rows_first = None, 0
    max_partial = 0
    terminal = console.stdout if console.is_terminal() else None
    progress = ScoringProgress(sum(s.num_rows for s in pending), len(pending), log, terminal, config.progress_every_s)
    for block in watch(ds.iter_batches(batch_size=None, batch_format="pyarrow"), config.stall_timeout_s, "scoring"):
        if t_first is None:
            t_first, rows_first = time.perf_counter(), block.num_rows
        errors = Counter(error_kind(e) for e in block.column("error").to_pylist() if e)
        for path in pc.unique(block.column("path")).to_pylist():
            part = block.filter(pc.equal(block.column("path"), path)).drop_columns(["path"])
            shard = by_path[path]
            parts[shard.name].append(part)
            seen[shard.name] += part.num_rows
            if seen[shard.name] == shard.num_rows:
                counts += commit_shard(shard, parts.pop(shard.name), kind, output)
        max_partial = max(max_partial, len(parts))
        progress.update(block.num_rows, errors, counts["shards"])
    progress.close()
    short = _short_shards(pending, seen)
    timing = {}
    if t_first is not None:  # no rows at all: nothing to time
        steady_s = time.perf_counter() - t_first
        steady_rows = sum(seen.values()) - rows_first
        timing["first_result_s"] = round(t_first - t0, 2)
        timing["max_partial_shards"] = max_partial
        if steady_rows and steady_s > 0:
            timing["steady_rows_per_s"] = round(steady_rows / steady_s, 2)
    return counts, timing, short


def _short_shards(pending: list[Shard], seen: Counter) -> dict[str, str]:
    """Shards that yielded fewer rows than validation counted: name -> "rows seen of rows expected".

    A file changed after validation may hold fewer rows or none (`read_rows`): such a shard never completes, so it
    is never committed, and the job fails naming it.
    """
    return {s.name: f"{seen[s.name]} of {s.num_rows} rows" for s in pending if seen[s.name] < s.num_rows}
