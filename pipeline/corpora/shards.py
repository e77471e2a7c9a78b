"""Sharded Parquet manifests: listing a manifest's shards, reading them with their schema checked, writing one.

The output side (one committed score shard per input shard) is pipeline.scoring.commit.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.infra import store
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
    other shards and then fails naming it (pipeline.scoring.job), with the reason in the job's log.
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
    """One manifest shard, checked against the manifest schema alone (pipeline.scoring.validation checks ids across
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
