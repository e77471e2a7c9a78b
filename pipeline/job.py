"""The scoring job on Ray Data: manifest shards -> decode + prepare (CPU) -> scorer actors (GPU) -> score shards.

    read_rows(pending shards) -> map_batches(PrepareStage, CPU actors) -> map_batches(ScoreStage, one per GPU)
        -> the driver collects each shard's score rows (small: no pixels) and commits the shard once it is complete.

What a stage does with a row is the kind of scorer's (pipeline.scorers: an LMM's levels, a full-reference metric);
a kind that computes everything while preparing (PSNR, SSIM) runs no scorer actors.

Decoded pixels travel between Ray workers only. A rerun skips committed shards; a shard that was not committed when
the job died is scored again from scratch, so every manifest row ends up in the output exactly once.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import registry, scorers, store
from pipeline.console import console
from pipeline.levels import DEFAULT_LEVELS, Levels
from pipeline.media import MediaError, MediaOptions, Prefetcher
from pipeline.progress import ScoringProgress
from pipeline.scorers import Kind, ScorerArgs, step_columns
from pipeline.shards import Output, Shard, manifest_listing, read_rows, read_shard
from pipeline.validation import validate_manifest_shards
from pipeline.watchdog import DEFAULT_STALL_S, watch
from schemas import MANIFEST_V1, output_columns, validate_scores


class JobError(RuntimeError):
    """The job cannot start or must fail: the message says why and what to do."""


@dataclass
class JobConfig:
    manifest: str
    output: str
    model: str | None = None  # None: a scorer that needs no model (a classical metric)
    task: str = "quality"
    batch_size: int = 16
    num_scorers: int | None = None  # default: one per GPU in the cluster, or 1 without GPUs
    gpus_per_scorer: float = 1.0
    fps: float = 1.0
    max_frames: int = 16
    max_error_rate: float = 0.05
    restart: bool = False  # wipe an existing output instead of resuming it
    model_revision: str | None = None
    prompt_recipe: str | None = None  # None: the checkpoint's own (pipeline.recipes.for_checkpoint)
    levels: Levels = field(default_factory=lambda: DEFAULT_LEVELS)
    progress_every_s: float = 10.0
    stall_timeout_s: float = DEFAULT_STALL_S  # no progress for this long in any stage: the job fails, naming it
    scorer: str = "lmm"  # the kind of scorer (pipeline.scorers.KINDS)
    draft: bool = True  # large JPEGs decoded at a reduced DCT scale, never below twice the model's input side
    fetch_concurrency: int = 8  # objects each decode worker reads at once


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
        # The objects each row reads (its item; a full-reference kind's reference too), fetched a few rows ahead
        # while this thread decodes and prepares one row at a time, in order. Each row keeps its own outcome.
        reads = [[(row["uri"], row["media_type"]), *((row[c], "image") for c in self.references)] for row in rows]
        with Prefetcher(reads, self.options) as prefetch:
            for i, row in enumerate(rows):
                prefetch.advance(i)
                try:
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


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            text=True,
            capture_output=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version('qcurate')}+{sha}" if sha else version("qcurate")


def error_kind(error: str) -> str:
    return error.split(":", 1)[0]


def assemble(shard: Shard, results: pa.Table | None, config: JobConfig, kind: Kind) -> pa.Table:
    """The output shard: the manifest's rows in their order, score columns first, extra columns carried through."""
    manifest = read_shard(shard.url)
    values = [c for c in kind.columns.names if c not in kind.constants]
    if results is None:  # an empty manifest shard
        schema = pa.schema([("id", pa.string()), ("error", pa.string())] + [(c, pa.float64()) for c in values])
        results = schema.empty_table()
    order = pc.index_in(manifest.column("id"), results.column("id"))
    if order.null_count:  # the file changed after validation (rows added or replaced), or a bug
        raise JobError(
            f"{shard.url}: {order.null_count} manifest row(s) have no result; nothing was committed for this shard "
            "(was the file changed while the job ran? rerun to score it again)"
        )
    results = results.take(order)
    n = manifest.num_rows
    schema = kind.columns.schema()
    failed = pc.not_equal(results.column("error"), "")
    columns = {
        "id": manifest.column("id"),
        "uri": manifest.column("uri"),
        "media_type": manifest.column("media_type"),
        **{c: pa.array([v] * n) for c, v in kind.constants.items()},
        **{c: pc.if_else(failed, None, results.column(c)) for c in values},
        "model": pa.array([kind.model] * n),
        "model_revision": pa.array([kind.revision] * n, pa.string()),
        "error": pc.if_else(failed, results.column("error"), None),
        "scored_at": pa.array([datetime.now(timezone.utc)] * n, pa.timestamp("us", tz="UTC")),
    }
    table = pa.table({f.name: columns[f.name].cast(f.type) for f in schema}, schema=schema)
    for name in manifest.column_names:  # extra manifest columns follow, unchanged
        if name not in table.column_names:
            table = table.append_column(manifest.schema.field(name), manifest.column(name))
    validate_scores(table, shard.name, kind.columns)
    return table


def check_previous_run(output: Output, run: dict, restart: bool) -> None:
    """Refuse to mix scores of different models, revisions, tasks or levels in one output."""
    run_url = store.join(output.url, "_run.json")
    if restart:
        output.clear()
        return
    if not store.exists(run_url):
        return
    previous = store.read_json(run_url)
    previous.setdefault("scorer", "lmm")  # written before kinds of scorers existed
    for key in ("scorer", "model", "model_revision", "prompt_recipe", "task", "levels"):
        if key == "prompt_recipe" and key not in previous:
            continue  # an output written before recipes were recorded: its model, revision and task still decide
        if previous.get(key) != run.get(key):
            raise JobError(
                f"{output.url} holds scores with {key}={previous.get(key)!r}, this run has {run.get(key)!r}; "
                "use another --output, or --restart to delete the old scores and start over"
            )


MANIFEST_FILE = "_manifest.json"


def checked_manifest(config: JobConfig, output: Output, kind: Kind, log=console.say) -> list[Shard]:
    """The manifest's shards, validated on the cluster; a rerun over an unchanged manifest (same shard names, sizes
    and ETags or mtimes, from one listing) reuses the last validation. A shard rewritten after it was committed is
    refused: its committed scores would no longer match it."""
    listing = manifest_listing(config.manifest)
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
    url = store.join(output.url, MANIFEST_FILE)
    previous = store.read_json(url) if store.exists(url) else None
    if previous and previous["digest"] == digest and previous.get("checks") == _checks(kind):
        return [Shard(u, store.basename(u), previous["rows"][store.basename(u)]) for u in listing]
    if previous:
        committed = output.committed()
        rewritten = [
            store.basename(u)
            for u, stat in listing.items()
            if store.basename(u) in committed and previous["listing"].get(store.basename(u)) != stat
        ]
        if rewritten:
            raise JobError(
                f"{config.manifest}: shard(s) {rewritten[:5]} changed after their scores were committed to "
                f"{output.url}; use --restart to score the manifest again, or another --output"
            )
        log(f"manifest changed since the last run ({previous['digest']} -> {digest}): validating it again")
    shards = validate_manifest_shards(
        list(listing),
        videos_allowed=kind.videos_allowed,
        reserved=tuple(output_columns(kind.columns)),
        needs=kind.reads,
        stall_s=config.stall_timeout_s,
        log=log,
    )
    record = {
        "digest": digest,
        "checks": _checks(kind),
        "listing": {store.basename(u): stat for u, stat in listing.items()},
        "rows": {s.name: s.num_rows for s in shards},
    }
    store.write_json(url, record)
    return shards


def _checks(kind: Kind) -> dict:
    """What a manifest's validation checked for this kind: a rerun with other checks validates again."""
    return {"videos": kind.videos_allowed, "reserved": sorted(output_columns(kind.columns)), "needs": list(kind.reads)}


def init_ray() -> float:
    """Join the cluster named by RAY_ADDRESS (as `ray job submit` sets it), else start a local Ray. Returns seconds."""
    import ray

    start = time.perf_counter()
    if not ray.is_initialized():
        ray.init(log_to_driver=True, logging_level="WARNING")
    return time.perf_counter() - start


def run(config: JobConfig, log=console.say) -> dict:
    """Score every uncommitted shard of the manifest. Returns the run summary (also written to _run.json)."""

    t0 = time.perf_counter()
    path = revision = None
    if config.model:
        try:
            ref = registry.resolve(config.model, config.model_revision)
        except (ValueError, OSError) as e:  # no such folder, version or hub revision; a revision on a plain folder
            raise JobError(f"--model {config.model}: {e}") from e
        path, revision = ref.path, ref.revision
    args = ScorerArgs(config.model, path, revision, config.task, config.levels, config.prompt_recipe)
    try:
        kind = scorers.create(config.scorer, args)
    except ValueError as e:
        raise JobError(str(e)) from e
    output = Output(config.output)
    run_info = {
        **kind.identity(),
        "model_path": path,
        "code_version": code_version(),
        "args": {k: v for k, v in asdict(config).items() if k != "levels"},
    }
    check_previous_run(output, run_info, config.restart)
    what = ", ".join(f"{k} {v}" for k, v in kind.identity().items() if k not in ("scorer", "model", "levels"))
    log(f"score: {config.manifest} -> {config.output} with {kind.name} {kind.model} ({what})")

    ray_start_s = init_ray()
    shards = checked_manifest(config, output, kind, log)  # a bad manifest fails here, before any scoring
    committed = output.committed()
    pending = [s for s in shards if s.name not in committed]
    log(
        f"manifest: {len(shards)} shards, {sum(s.num_rows for s in shards)} rows; "
        f"{len(shards) - len(pending)} already committed, {len(pending)} to score"
    )
    store.write_json(store.join(output.url, "_run.json"), {**run_info, "status": "running"})

    counts: Counter = Counter()
    timing: dict[str, float] = {}
    short: dict[str, str] = {}
    t_score = time.perf_counter()
    for shard in [s for s in pending if s.num_rows == 0]:  # nothing to score: commit the empty shard now
        counts += _commit(shard, [], config, kind, output)
    if any(s.num_rows for s in pending):
        scored, timing, short = _score([s for s in pending if s.num_rows], config, kind, output, log)
        counts += scored
    scoring_s = time.perf_counter() - t_score

    done = committed | {s.name for s in pending if s.name not in short}
    total = Counter()
    for m in output.markers([s.name for s in shards if s.name in done]):
        total.update({"rows": m["rows"], "errors": m["errors"]})
        total.update({f"error:{k}": v for k, v in m["errors_by_kind"].items()})
    summary = {
        **run_info,
        "status": "done",
        "rows": total["rows"],
        "errors": total["errors"],
        "errors_by_kind": {k.split(":", 1)[1]: v for k, v in sorted(total.items()) if k.startswith("error:")},
        "this_run": {
            "shards": len(pending),
            "rows": counts["rows"],
            "errors": counts["errors"],
            "scoring_s": round(scoring_s, 2),
            "ray_start_s": round(ray_start_s, 2),
            "rows_per_s": round(counts["rows"] / scoring_s, 2) if counts["rows"] else None,
            **timing,
            "wall_s": round(time.perf_counter() - t0, 2),
        },
    }
    rate = counts["errors"] / counts["rows"] if counts["rows"] else 0.0
    if short:
        summary["status"] = "failed"
        summary["failure"] = (
            f"{len(short)} shard(s) yielded fewer rows than their manifest holds, nothing committed for them: "
            + ", ".join(f"{name} ({seen})" for name, seen in sorted(short.items()))
            + " (changed or emptied after validation? the job's log says why): check them, rerun"
        )
    elif rate > config.max_error_rate:
        summary["status"] = "failed"
        summary["failure"] = (
            f"error rate {rate:.1%} over --max-error-rate {config.max_error_rate:.1%} "
            f"({dict(summary['errors_by_kind'])}); the scored shards are committed"
        )
    store.write_json(store.join(output.url, "_run.json"), summary)
    log(
        f"done: {summary['rows']} rows in the output, {summary['errors']} errors {summary['errors_by_kind']}; "
        f"this run scored {counts['rows']} rows in {scoring_s:.1f} s "
        f"({summary['this_run']['rows_per_s']} rows/s; Ray start {ray_start_s:.1f} s)"
    )
    if summary["status"] == "failed":
        raise JobError(summary["failure"])
    return summary


def _score(
    pending: list[Shard], config: JobConfig, kind: Kind, output: Output, log
) -> tuple[Counter, dict[str, float], dict[str, str]]:
    """Run the pipeline over the pending shards, committing each as it completes. Returns counts, timings (the time
    to the first scored rows, i.e. actor start-up and model load, and the steady rate after it) and the shards that
    yielded fewer rows than validation counted (name -> "rows seen of rows expected"), which are not committed."""
    import ray

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
    source = ray.data.from_items([{"shard": s.url} for s in pending], override_num_blocks=len(pending))
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
                counts += _commit(shard, parts.pop(shard.name), config, kind, output)
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


def _commit(shard: Shard, parts: list[pa.Table], config: JobConfig, kind: Kind, output: Output) -> Counter:
    table = assemble(shard, pa.concat_tables(parts) if parts else None, config, kind)
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    by_kind = Counter(error_kind(e) for e in errors)
    output.commit(shard.name, table, {"errors": len(errors), "errors_by_kind": dict(by_kind)})
    return Counter({"shards": 1, "rows": table.num_rows, "errors": len(errors)})
