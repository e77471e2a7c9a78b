"""Planning a scoring run: everything decided before the first row is read.

The model is resolved (pipeline.registry), the kind of scorer chosen (pipeline.scorers), the output compared with the
run that wrote it before (a rerun adds to an output only with the same identity), and the manifest validated on the
cluster (pipeline.scoring.validation), so that a bad manifest fails before any GPU work starts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace

from pipeline import registry, scorers
from pipeline.corpora.shards import Shard, ShardFile, list_manifest, rows_url
from pipeline.corpora.webdataset import write_index
from pipeline.infra import store
from pipeline.infra.console import console
from pipeline.infra.version import code_version
from pipeline.scorers import Kind, ScorerArgs
from pipeline.scoring.commit import Output
from pipeline.scoring.config import JobConfig, JobError
from pipeline.scoring.validation import validate_manifest_shards
from schemas import SchemaError, output_columns


@dataclass
class Plan:
    """A run, planned: what scores (kind), where to (output), what it is (identity and args), which shards remain."""

    config: JobConfig
    kind: Kind
    output: Output
    run_info: dict  # written to _run.json: the kind's identity, the model's path, the code version, the arguments
    shards: list[Shard]  # every manifest shard, validated
    pending: list[Shard]  # those not yet committed
    ray_start_s: float


def plan(config: JobConfig, log=console.say) -> Plan:
    """Resolve the model and the kind of scorer, open the output and refuse to mix runs, start Ray, validate the
    manifest (a bad one fails here, before any scoring) and find the shards left to score."""
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
    identity = kind.identity()
    run_info = {
        **identity,
        "model_path": path,
        "code_version": code_version(),
        "args": {k: v for k, v in asdict(config).items() if k != "levels"},
    }
    check_previous_run(output, run_info, config.restart)
    skip = ("scorer", "model", "levels", "recipe")  # the recipe's fingerprint is long: its name and version say it
    what = ", ".join(f"{k} {v}" for k, v in identity.items() if k not in skip)
    log(f"score: {config.manifest} -> {config.output} with {kind.name} {kind.model} ({what})")

    ray_start_s = init_ray()
    shards = checked_manifest(config, output, kind, log)
    committed = output.committed()
    pending = [s for s in shards if s.name not in committed]
    log(
        f"manifest: {len(shards)} shards, {sum(s.num_rows for s in shards)} rows; "
        f"{len(shards) - len(pending)} already committed, {len(pending)} to score"
    )
    return Plan(config, kind, output, run_info, shards, pending, ray_start_s)


def check_previous_run(output: Output, run: dict, restart: bool) -> None:
    """Refuse to mix scores of different models, revisions, tasks, levels or prompt recipes in one output."""
    run_url = store.join(output.url, "_run.json")
    if restart:
        output.clear()
        return
    if not store.exists(run_url):
        return
    previous = store.read_json(run_url)
    previous.setdefault("scorer", "lmm")  # written before kinds of scorers existed
    if "prompt_recipe" in previous:
        previous.setdefault("recipe_version", 1)  # written before recipes had versions: their first
    again = "use another --output, or --restart to delete the old scores and start over"
    for key in ("scorer", "model", "model_revision", "prompt_recipe", "recipe_version", "task", "levels"):
        if key in ("prompt_recipe", "recipe_version") and key not in previous:
            continue  # an output written before recipes were recorded: its model, revision and task still decide
        if previous.get(key) != run.get(key):
            changed = recipe_changes(previous.get("recipe"), run.get("recipe"))
            if key == "recipe_version" and not changed:  # an output written before recipes had fingerprints
                changed = "; ".join((run.get("recipe") or {}).get("changes", [])[previous[key] - 1 :])
            raise JobError(
                f"{output.url} holds scores with {key}={previous.get(key)!r}, this run has {run.get(key)!r}"
                f"{f' (the recipe changed: {changed})' if changed else ''}; {again}"
            )
    changed = recipe_changes(previous.get("recipe"), run.get("recipe"))
    if changed:  # one recipe version, other settings (a recipe edited without a new version)
        recipe = run.get("prompt_recipe")
        raise JobError(f"{output.url} holds scores of prompt recipe {recipe!r} with {changed}; {again}")


def recipe_changes(previous: dict | None, current: dict | None) -> str:
    """The recipe settings that differ between two outputs' fingerprints, as 'name: old -> new'; '' when either
    output predates fingerprints or nothing differs."""
    if not previous or not current:
        return ""
    differ = [k for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]
    return "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in differ)


MANIFEST_FILE = "_manifest.json"


def checked_manifest(config: JobConfig, output: Output, kind: Kind, log=console.say) -> list[Shard]:
    """The manifest's shards, validated on the cluster; a rerun over an unchanged manifest (same shard names, sizes
    and ETags or mtimes, from one listing) reuses the last validation. A shard rewritten after it was committed is
    refused: its committed scores would no longer match it."""
    files = list_manifest(config.manifest)
    listing = {f.name: [f.size, f.version] for f in files}
    digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
    url = store.join(output.url, MANIFEST_FILE)
    previous = store.read_json(url) if store.exists(url) else None
    if previous and previous["digest"] == digest and previous.get("checks") == _checks(kind):
        return [Shard(rows_url(f, output.url), f.name, previous["rows"][f.name], f.partitions) for f in files]
    if previous:
        committed = output.committed()
        rewritten = [n for n, stat in listing.items() if n in committed and previous["listing"].get(n) != stat]
        if rewritten:
            raise JobError(
                f"{config.manifest}: shard(s) {rewritten[:5]} changed after their scores were committed to "
                f"{output.url}; use --restart to score the manifest again, or another --output"
            )
        log(f"manifest changed since the last run ({previous['digest']} -> {digest}): validating it again")
    webdataset = any(f.webdataset for f in files)
    skipped = index_archives(files, output, log) if webdataset else {}

    def validate() -> list[Shard]:
        return validate_manifest_shards(
            [replace(f, url=rows_url(f, output.url)) for f in files],
            videos_allowed=kind.videos_allowed,
            reserved=tuple(output_columns(kind.columns)),
            needs=kind.reads,
            stall_s=config.stall_timeout_s,
            log=log,
        )

    try:
        shards = validate()
    except SchemaError as e:
        if not webdataset or e.column != "id" or "more than one shard" not in e.problem:
            raise
        log("webdataset: keys repeat across shards; ids are <shard>/<key>")
        skipped = index_archives(files, output, log, prefixed=True)
        shards = validate()
    record = {
        "digest": digest,
        "checks": _checks(kind),
        "listing": listing,
        "rows": {s.name: s.num_rows for s in shards},
        "skipped": skipped,  # WebDataset rows whose status is not "success", by shard
    }
    store.write_json(url, record)
    return shards


def index_archives(files: list[ShardFile], output: Output, log=console.say, prefixed: bool = False) -> dict[str, int]:
    """Index every WebDataset tar (pipeline.corpora.webdataset) into `<output>/_index/<name>`, one Ray task each; ids
    are `<shard>/<key>` when `prefixed`. Returns the rows skipped for their status, by shard (those with any)."""
    import ray

    task = ray.remote(write_index).options(num_cpus=1, max_retries=3)
    tars = [f for f in files if f.webdataset]
    refs = [
        task.remote(
            f.url, f.sidecar, rows_url(f, output.url), f.name.removesuffix(".parquet") if prefixed else None, f.size
        )
        for f in tars
    ]
    try:
        counts = ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        raise JobError(f"cannot index the WebDataset shards of {output.url}: {e.cause}") from e
    skipped = {f.name: s for f, (_, s) in zip(tars, counts) if s}
    log(
        f"webdataset: {len(tars)} tar(s) indexed, {sum(n for n, _ in counts)} rows, "
        f"{sum(skipped.values())} skipped (status != success)"
    )
    return skipped


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
