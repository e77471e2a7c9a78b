"""The commit path: one input shard's score rows -> its output shard, written whole, then marked committed.

The unit of commit is the input shard: `<output>/part-00007.parquet` is written whole, then
`<output>/_committed/part-00007.parquet.json` marks it committed. A shard in a sub-folder of the manifest
(`source=laion/part-0.parquet`) has its output and marker at the same relative path. A shard without its marker is
not done and is written again by a rerun; a committed shard is never touched again. So killed at any moment and
rerun, a job ends with every manifest row in the output exactly once.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.corpora.shards import Shard, read_shard
from pipeline.infra import store
from pipeline.scorers import Kind
from pipeline.scoring.config import JobError
from schemas import validate_scores


class Output:
    """An output folder of score shards with commit markers."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def shard_url(self, name: str) -> str:
        return store.join(self.url, name)

    def marker_url(self, name: str) -> str:
        return store.join(self.url, "_committed", f"{name}.json")

    def committed(self) -> set[str]:
        fs, path = store.filesystem(store.join(self.url, "_committed"))
        if not store.exists(store.join(self.url, "_committed")):
            return set()
        root = path.rstrip("/")
        names = store.retry(lambda: fs.find(root, detail=False), f"list {path}")
        return {n[len(root) + 1 :].removesuffix(".json") for n in names if n.endswith(".json")}

    def markers(self, names: list[str]) -> list[dict]:
        """The commit markers of these shards, fetched concurrently (one request each, many in flight)."""
        fs, _ = store.filesystem(self.url)
        paths = [store.filesystem(self.marker_url(n))[1] for n in names]
        found = store.retry(lambda: fs.cat(paths), f"read the markers of {self.url}") if paths else {}
        return [json.loads(found[p]) for p in paths]

    def commit(self, name: str, table: pa.Table, summary: dict) -> None:
        """Write the shard whole, then its marker: a crash between the two leaves an uncommitted shard."""
        store.write_parquet(table, self.shard_url(name))
        marker = {"rows": table.num_rows, "committed_at": datetime.now(timezone.utc).isoformat(), **summary}
        store.write_json(self.marker_url(name), marker)

    def clear(self) -> None:
        fs, path = store.filesystem(self.url)
        if store.exists(self.url):
            store.retry(lambda: fs.rm(path, recursive=True), f"remove {self.url}")


def error_kind(error: str) -> str:
    return error.split(":", 1)[0]


def assemble(shard: Shard, results: pa.Table | None, kind: Kind) -> pa.Table:
    """The output shard: the manifest's rows in their order, score columns first, extra columns carried through."""
    manifest = read_shard(shard.url, partitions=shard.partitions, name=shard.name)  # all columns but the bytes
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


def commit_shard(shard: Shard, parts: list[pa.Table], kind: Kind, output: Output) -> Counter:
    """Assemble one shard's output from its scored parts, write it and mark it committed. Returns its counts."""
    table = assemble(shard, pa.concat_tables(parts) if parts else None, kind)
    errors = [e for e in table.column("error").to_pylist() if e is not None]
    by_kind = Counter(error_kind(e) for e in errors)
    output.commit(shard.name, table, {"errors": len(errors), "errors_by_kind": dict(by_kind)})
    return Counter({"shards": 1, "rows": table.num_rows, "errors": len(errors)})


def totals(output: Output, names: list[str]) -> Counter:
    """Rows, errors and errors by kind (`error:<kind>`) over these committed shards, from their markers."""
    total: Counter = Counter()
    for m in output.markers(names):
        total.update({"rows": m["rows"], "errors": m["errors"]})
        total.update({f"error:{k}": v for k, v in m["errors_by_kind"].items()})
    return total
