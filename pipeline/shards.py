"""Sharded Parquet manifests in, one committed output shard per input shard out.

The unit of commit is the input shard: `<output>/part-00007.parquet` is written whole, then
`<output>/_committed/part-00007.parquet.json` marks it committed. A shard without its marker is not done and is
written again by a rerun; a committed shard is never touched again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import store
from schemas import LOST_IN_OUTPUT, MANIFEST_V1, OPTIONAL, SchemaError, check_columns, check_reserved, validate_manifest


def list_shards(manifest: str, recursive: bool = False) -> list[str]:
    """The Parquet shards as URLs, sorted: a folder of *.parquet files, one file, or a glob.

    Manifest shards must have unique file names (outputs are named after them). `recursive` lists a folder at any
    depth, as label shards are kept (labels/<batch>/part-*.parquet): names may repeat there, the URL is the identity.
    """
    return list(_listing(manifest, recursive))


def manifest_listing(manifest: str) -> dict[str, list]:
    """url -> [size, version] of every shard, from one listing (no reads): version is the object's ETag (object
    stores) or mtime (disks), so a rewritten shard shows as changed."""
    return {
        url: [info.get("size"), str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")]
        for url, info in _listing(manifest, recursive=False).items()
    }


def _listing(manifest: str, recursive: bool) -> dict[str, dict]:
    fs, path = store.filesystem(manifest)
    if any(c in path for c in "*?["):
        infos = fs.glob(path, detail=True)
    elif store.retry(lambda: fs.isdir(path), f"stat {manifest}"):
        listed = fs.find(path, detail=True) if recursive else {i["name"]: i for i in fs.ls(path, detail=True)}
        infos = {p: i for p, i in listed.items() if p.endswith(".parquet")}
    else:
        # one file; a missing one is listed as is, and its readers say that it is missing
        exists = store.retry(lambda: fs.exists(path), f"stat {manifest}")
        infos = {path: store.retry(lambda: fs.info(path), f"stat {manifest}") if exists else {}}
    if not infos:
        raise FileNotFoundError(f"no Parquet shards found at {manifest}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    urls = {p if protocol in ("file", "local") else f"{protocol}://{p}": i for p, i in infos.items()}
    names = [store.basename(u) for u in urls]
    if not recursive and len(set(names)) != len(names):
        raise ValueError(f"shard file names must be unique (outputs are named after them): {manifest}")
    return dict(sorted(urls.items()))


@dataclass
class Shard:
    url: str
    name: str  # file name, e.g. part-00007.parquet; the output shard has the same name
    num_rows: int


def unreadable(url: str, e: Exception) -> SchemaError:
    """The validation error for a shard file that cannot be read as Parquet."""
    return SchemaError(url, None, f"not a readable Parquet file: {type(e).__name__}: {str(e)[:300]}")


def read_shard_schema(url: str) -> pa.Schema:
    """A shard's schema from its footer; a file that is not Parquet, truncated or unreadable is a SchemaError."""
    try:
        return store.read_parquet_schema(url)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(url, e) from e


def read_shard(url: str, columns: list[str] | None = None) -> pa.Table:
    """A shard's rows (all columns, or `columns`); corrupt data is a SchemaError naming the shard, as in
    read_shard_schema."""
    try:
        return store.read_parquet(url, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(url, e) from e


def read_rows(batch: pa.Table, columns: list[str]) -> pa.Table:
    """Read task: one manifest shard's `columns` (batch: its url, in column "shard"), each row tagged with the
    shard's url in column "path", which routes it to its shard in the driver.

    A shard that no longer reads (rewritten or emptied after validation) yields no rows: the job goes on with the
    other shards and then fails naming it (pipeline.job), with the reason in the job's log.
    """
    url = batch.column("shard")[0].as_py()
    try:
        table = read_shard(url, columns)
    except SchemaError as e:
        print(f"qcurate: {e}; its rows are left out and the shard is not committed", file=sys.stderr, flush=True)
        table = pa.schema([(c, pa.string()) for c in columns]).empty_table()
    return table.append_column("path", pa.array([url] * table.num_rows, pa.string()))


def check_manifest_schema(url: str, reserved: Collection[str] = (), needs: Collection[str] = ()) -> pa.Schema:
    """A shard's schema: readable, with the manifest's columns (and the optional ones in `needs`: the scorer reads
    them), the optional columns it has of their types, and none named like a score output column."""
    schema = read_shard_schema(url)
    check_columns(schema, MANIFEST_V1, url)  # a missing column, named, before reading
    optional = [pa.field(n, t) for n, t in OPTIONAL.items() if n in needs or n in schema.names]
    check_columns(schema, pa.schema(optional), url)
    check_reserved(schema, reserved, url, LOST_IN_OUTPUT)
    return schema


def read_valid_shard(url: str, reserved: Collection[str] = (), needs: Collection[str] = ()) -> tuple[Shard, pa.Table]:
    """One manifest shard, checked against the manifest schema alone (pipeline.validation checks ids across
    shards, on the cluster). Returns the shard and its manifest columns.

    `reserved`: the names of the columns the output adds (schemas.output_columns); a manifest column with one of
    them is refused, since its values would be replaced in the output.
    """
    check_manifest_schema(url, reserved, needs)
    table = read_shard(url, columns=MANIFEST_V1.names)
    validate_manifest(table, url)
    return Shard(url, store.basename(url), table.num_rows), table


def check_ids_across_shards(urls: list[str], ids: list[pa.ChunkedArray]) -> None:
    """Ids must be unique across shards (each shard already checked alone): the error names the shards of one."""
    ids = [i.combine_chunks().cast(pa.string()) for i in ids]
    counts = pc.value_counts(pa.chunked_array(ids, type=pa.string()))
    dupes = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(dupes):
        first = dupes[0]
        where = [url for url, shard_ids in zip(urls, ids) if pc.any(pc.equal(shard_ids, first)).as_py()]
        raise SchemaError(where[-1], "id", f"{len(dupes)} id(s) appear in more than one shard, e.g. {first} in {where}")


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
        names = store.retry(lambda: fs.ls(path, detail=False), f"list {path}")
        return {store.basename(n).removesuffix(".json") for n in names if n.endswith(".json")}

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


def write_manifest(rows: list[dict], url: str, num_shards: int) -> list[str]:
    """Write rows as a sharded manifest `<url>/part-00000.parquet ...` (rows split in order). Returns the shard URLs."""
    table = pa.Table.from_pylist(rows)
    validate_manifest(table, url)
    per_shard = -(-len(rows) // num_shards)
    urls = []
    for i in range(num_shards):
        shard_url = store.join(url, f"part-{i:05d}.parquet")
        store.write_parquet(table.slice(i * per_shard, per_shard), shard_url)
        urls.append(shard_url)
    return urls
