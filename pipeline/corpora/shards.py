"""Sharded Parquet manifests: listing a manifest's shards, reading them with their schema checked, writing one.

The output side (one committed score shard per input shard) is pipeline.scoring.commit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.corpora.hive import Partitions, add_partition_columns, partition_fields, typed_partitions
from pipeline.corpora.inline import bytes_column, default_uris, image_bytes
from pipeline.corpora.tars import split_tar_uri, stream_members
from pipeline.infra import store
from pipeline.infra.media import MediaError, MediaOptions
from schemas import (
    LOST_IN_OUTPUT,
    MANIFEST_V1,
    OPTIONAL,
    SchemaError,
    check_columns,
    check_reserved,
    is_string_like,
    validate_manifest,
)


def list_shards(manifest: str) -> list[str]:
    """The Parquet shards' URLs, sorted by name: see list_manifest."""
    return [f.url for f in list_manifest(manifest)]


@dataclass(frozen=True)
class ShardFile:
    """One manifest shard as listed (no reads): its URL, its name, its size and version, its hive partitions."""

    url: str
    # The path relative to the manifest folder (`part-00007.parquet`, `batch2/part-1.parquet`,
    # `source=laion/part-0.parquet`); the file name for one file or a glob. The output shard has the same name.
    name: str
    size: int | None = None
    version: str = ""  # the object's ETag (object stores) or mtime (disks): a rewritten shard shows as changed
    partitions: Partitions = ()
    # A WebDataset shard (pipeline.corpora.webdataset): `url` is its tar, `sidecar` the Parquet beside it, if any.
    webdataset: bool = False
    sidecar: str | None = None


def list_manifest(manifest: str) -> list[ShardFile]:
    """The Parquet shards of a manifest, sorted by name: a folder (read at any depth), one file, or a glob.

    In a folder, names whose path has a part starting with "_" or "." are not shards (Spark's `_SUCCESS`, a score
    output's `_committed/`, hidden files), as Spark, DuckDB and pyarrow skip them; every other `*.parquet` at any
    depth is one, named by its path under the folder, with the `key=value` folders on it as columns
    (pipeline.corpora.hive). Glob matches are named by their path under the glob's last folder without a wildcard
    (`labels/batch-000[12]/part-*.parquet` -> `batch-0001/part-00000.parquet`, ...).
    """
    fs, path = store.filesystem(manifest)
    root = None  # a folder: its hive partitions become columns
    if any(c in path for c in "*?["):
        infos = fs.glob(path, detail=True)
        parts = path.split("/")
        base = "/".join(parts[: next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))])
    elif store.retry(lambda: fs.isdir(path), f"stat {manifest}"):
        root = base = path.rstrip("/")
        listed = store.retry(lambda: fs.find(root, detail=True), f"list {manifest}")
        listed = {p: i for p, i in listed.items() if not _hidden(p[len(root) + 1 :])}
        if any(p.endswith(".tar") for p in listed):
            return _webdataset_files(manifest, root, listed, fs)
        infos = {p: i for p, i in listed.items() if p.endswith(".parquet")}
    else:
        # one file; a missing one is listed as is, and its readers say that it is missing
        base = path.rsplit("/", 1)[0]
        exists = store.retry(lambda: fs.exists(path), f"stat {manifest}")
        infos = {path: store.retry(lambda: fs.info(path), f"stat {manifest}") if exists else {}}
    if not infos:
        raise FileNotFoundError(f"no Parquet shards found at {manifest}")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    named = {p[len(base) + 1 :]: p for p in infos}
    partitions = typed_partitions(list(named)) if root else {}
    files = []
    for name, p in sorted(named.items()):
        info = infos[p]
        url = p if protocol in ("file", "local") else f"{protocol}://{p}"
        version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
        files.append(ShardFile(url, name, info.get("size"), version, partitions.get(name, ())))
    return files


def _webdataset_files(manifest: str, root: str, listed: dict[str, dict], fs) -> list[ShardFile]:
    """A WebDataset folder's shards (pipeline.corpora.webdataset): one per tar, named like the Parquet beside it,
    which it takes along; a Parquet file with no tar beside it is refused (a folder holds one layout)."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def url(p: str) -> str:
        return p if protocol in ("file", "local") else f"{protocol}://{p}"

    def version(info: dict) -> str:
        return str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")

    tars = sorted(p for p in listed if p.endswith(".tar"))
    sidecars = {p.removesuffix(".tar") + ".parquet" for p in tars}
    strays = sorted(p for p in listed if p.endswith(".parquet") and p not in sidecars)
    if strays:
        raise ValueError(f"{manifest} holds tar shards and Parquet files with no tar beside them, e.g. {strays[:3]}")
    files = []
    for p in tars:
        side = p.removesuffix(".tar") + ".parquet"
        has_side = side in listed
        stat = version(listed[p]) + ("+" + version(listed[side]) if has_side else "")
        name = side[len(root) + 1 :]
        files.append(ShardFile(url(p), name, listed[p].get("size"), stat, (), True, url(side) if has_side else None))
    return files


# Where the scoring job writes each WebDataset tar's index (its manifest rows) under its output: pipeline.scoring.plan.
INDEX_FOLDER = "_index"


def rows_url(file: ShardFile, output: str) -> str:
    """Where a listed shard's manifest rows are read: the file itself, or a WebDataset tar's index under the output
    of the scoring run over it (`<output>/_index/<name>`, an ordinary Parquet manifest of tar:// rows)."""
    return store.join(output, INDEX_FOLDER, file.name) if file.webdataset else file.url


def scored_manifest(manifest: str, scores: str) -> list[ShardFile]:
    """The manifest's shards as the scoring run that wrote `scores` read them (list_manifest, each at its rows_url):
    what the filter and the report read, so that they take every layout the scoring job takes, read one way."""
    return [replace(f, url=rows_url(f, scores)) for f in list_manifest(manifest)]


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def manifest_listing(manifest: str) -> dict[str, list]:
    """name -> [size, version] of every shard, from one listing (no reads)."""
    return {f.name: [f.size, f.version] for f in list_manifest(manifest)}


@dataclass
class Shard:
    url: str
    name: str  # as ShardFile.name; the output shard has the same name
    num_rows: int
    partitions: Partitions = ()


def unreadable(url: str, e: Exception) -> SchemaError:
    """The validation error for a shard file that cannot be read as Parquet."""
    return SchemaError(url, None, f"not a readable Parquet file: {type(e).__name__}: {str(e)[:300]}")


def read_shard_schema(url: str) -> pa.Schema:
    """A shard file's schema from its footer; a file that is not Parquet, truncated or unreadable is a SchemaError."""
    try:
        return store.read_parquet_schema(url)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(url, e) from e


# The column of a shard's rows that carries their media's bytes (large_binary; null: fetch the row's uri). Not a
# manifest column: the read task adds it (pipeline.corpora.inline), the decode stage takes the bytes from it.
BYTES = "_bytes"
# The column of a shard's rows that carries, instead, why their bytes could not be read ("kind: message"; null: none).
READ_ERROR = "_read_error"


def shard_schema(url: str, partitions: Partitions = ()) -> pa.Schema:
    """The schema of a shard's rows as read_shard gives them: the file's columns (its string columns as `string`,
    its bytes column replaced by the uri and media_type it implies), then its partition keys."""
    schema = read_shard_schema(url)
    inline = bytes_column(schema, url)
    fields = [f.with_type(plain_type(f)) for f in schema if f.name != inline]
    if inline:
        fields += [pa.field(c, pa.string(), nullable=False) for c in ("uri", "media_type") if c not in schema.names]
    for field in partition_fields(partitions):
        if field.name in schema.names:
            raise SchemaError(url, field.name, "is both a column of the file and a partition folder (key=value)")
        fields.append(field)
    return pa.schema(fields)


def read_shard(
    url: str,
    columns: list[str] | None = None,
    partitions: Partitions = (),
    name: str | None = None,
    bytes_as_stored: bool = False,
) -> pa.Table:
    """A shard's rows (all columns, or `columns`) as shard_schema says; corrupt data is a SchemaError naming the
    shard, as in read_shard_schema. A bytes column (pipeline.corpora.inline) is never read unless BYTES is asked for;
    with `bytes_as_stored` it is read as any other column, as the file stores it, and implies no uri or media_type
    (the filter writes such a shard's kept rows again: the bytes are its items, the only copy there is of them).

    The manifest's own string columns (id, uri, media_type, ref_uri) come as `string` whatever string-like type the
    writer chose (large_string, string_view, dictionary<string>: the values are the same), string_view columns as
    `string` too; other columns keep their type (plain_type).
    """
    file_schema = read_shard_schema(url)
    inline = None if bytes_as_stored else bytes_column(file_schema, url)
    wanted = [*file_schema.names, "uri", "media_type"] if columns is None else columns
    missing = inline is not None and any(c in wanted and c not in file_schema.names for c in ("uri", "media_type"))
    read = [
        c for c in file_schema.names if (c in wanted and c != inline) or (c == inline and (missing or BYTES in wanted))
    ]
    try:
        table = as_plain_strings(store.read_parquet(url, columns=read))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise unreadable(url, e) from e
    if inline in table.column_names:
        column = table.column(inline)
        if "uri" in wanted and "uri" not in file_schema.names:
            table = table.append_column("uri", default_uris(column, name or store.basename(url)))
        if "media_type" in wanted and "media_type" not in file_schema.names:
            table = table.append_column("media_type", pa.array(["image"] * table.num_rows, pa.string()))
        if BYTES in wanted:
            table = table.append_column(BYTES, image_bytes(column))
        table = table.drop_columns([inline])
    elif BYTES in wanted:  # no bytes in this shard: every row is fetched
        table = table.append_column(BYTES, pa.nulls(table.num_rows, pa.large_binary()))
    table = add_partition_columns(table, partitions, columns)
    return table if columns is None else table.select([c for c in columns if c in table.column_names])


# The manifest's columns that hold strings: read as `string` whatever string-like type they are stored as.
STRING_COLUMNS = (*MANIFEST_V1.names, *(n for n, t in OPTIONAL.items() if pa.types.is_string(t)))


def plain_type(field: pa.Field) -> pa.DataType:
    """The type a column is read as: `string` for STRING_COLUMNS of any string-like type, and for string_view
    columns of any name (Arrow's take and filter, which the output's assembly and the filter use, have no kernel
    for string_view); every other type as stored (a dictionary<string> extra column stays one)."""
    if (field.name in STRING_COLUMNS and is_string_like(field.type)) or pa.types.is_string_view(field.type):
        return pa.string()
    return field.type


def as_plain_strings(table: pa.Table) -> pa.Table:
    """The table with its columns cast to plain_type (the same values)."""
    for i, field in enumerate(table.schema):
        if not plain_type(field).equals(field.type):
            table = table.set_column(i, field.with_type(plain_type(field)), table.column(i).cast(plain_type(field)))
    return table


def filter_rows(table: pa.Table, mask: pa.Array) -> pa.Table:
    """table.filter(mask), keeping the table's schema whatever its types: string_view and binary_view columns (a
    bytes column as stored; Arrow has no filter kernel for views) are filtered as string and binary and cast back."""
    views = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    cast = [i for i, f in enumerate(table.schema) if f.type in views]
    plain = table
    for i in cast:
        field = table.schema.field(i)
        plain = plain.set_column(i, field.with_type(views[field.type]), table.column(i).cast(views[field.type]))
    return plain.filter(mask).cast(table.schema) if cast else table.filter(mask)


# Rows per block of an archive's rows: the read task hands them on as it streams, never the whole archive at once.
ARCHIVE_BLOCK_ROWS = 64


def read_rows(batch: pa.Table, columns: list[str]) -> Iterator[pa.Table]:
    """Read task: one manifest shard's `columns`, each row tagged with the shard's url in column "path" (which routes
    it to its shard in the driver), with its media's bytes where the read brings them (column BYTES) or the error
    that stands for them (column READ_ERROR, "kind: message"). `batch`: the shard's url, name and partitions (JSON),
    in columns "shard", "name" and "partitions".

    Rows that name a member of a tar archive (pipeline.corpora.tars) come archive by archive, each archive streamed
    once, in blocks of ARCHIVE_BLOCK_ROWS; the shard's other rows come first, in one block (their bytes, if the shard
    holds them, or a fetch later).

    A shard that no longer reads (rewritten or emptied after validation) yields no rows: the job goes on with the
    other shards and then fails naming it (pipeline.scoring.job), with the reason in the job's log.
    """
    url, name = batch.column("shard")[0].as_py(), batch.column("name")[0].as_py()
    partitions = tuple(tuple(p) for p in json.loads(batch.column("partitions")[0].as_py()))
    try:
        table = read_shard(url, [*columns, BYTES], partitions, name)
    except SchemaError as e:
        print(f"qcurate: {e}; its rows are left out and the shard is not committed", file=sys.stderr, flush=True)
        table = pa.schema([*((c, pa.string()) for c in columns), (BYTES, pa.large_binary())]).empty_table()
    table = table.append_column(READ_ERROR, pa.nulls(table.num_rows, pa.string()))
    table = table.append_column("path", pa.array([url] * table.num_rows, pa.string()))
    archives: dict[str, list[int]] = {}
    plain = []
    for i, uri in enumerate(table.column("uri").to_pylist()):
        split = split_tar_uri(uri)
        if split is None:
            plain.append(i)
        else:
            archives.setdefault(split[1], []).append(i)
    if plain or not archives:
        yield table.take(plain) if archives else table
    for archive, rows in archives.items():
        yield from _archive_rows(table, archive, rows)


def _archive_rows(table: pa.Table, archive: str, rows: list[int]) -> Iterator[pa.Table]:
    """The rows of one archive with their members' bytes (or errors), in blocks, streaming the archive once."""
    by_member: dict[str, list[int]] = {}
    for i in rows:
        by_member.setdefault(split_tar_uri(table.column("uri")[i].as_py())[0], []).append(i)
    taken: list[int] = []
    data: list[bytes | None] = []
    errors: list[str | None] = []
    limit = MediaOptions().max_video_bytes  # the largest any row may have; the decode stage applies its own
    for member, got in stream_members(archive, set(by_member), limit):
        for i in by_member[member]:
            taken.append(i)
            data.append(None if isinstance(got, MediaError) else got)
            errors.append(str(got) if isinstance(got, MediaError) else None)
        if len(taken) >= ARCHIVE_BLOCK_ROWS:
            yield _with_bytes(table, taken, data, errors)
            taken, data, errors = [], [], []
    if taken:
        yield _with_bytes(table, taken, data, errors)


def _with_bytes(table: pa.Table, rows: list[int], data: list, errors: list) -> pa.Table:
    block = table.take(rows)
    block = block.set_column(block.schema.get_field_index(BYTES), BYTES, pa.array(data, pa.large_binary()))
    return block.set_column(block.schema.get_field_index(READ_ERROR), READ_ERROR, pa.array(errors, pa.string()))


def check_manifest_schema(
    url: str, reserved: Collection[str] = (), needs: Collection[str] = (), partitions: Partitions = ()
) -> pa.Schema:
    """A shard's schema (shard_schema): readable, with the manifest's columns (and the optional ones in `needs`: the
    scorer reads them), the optional columns it has of their types, and none named like a score output column."""
    schema = shard_schema(url, partitions)
    check_columns(schema, MANIFEST_V1, url)  # a missing column, named, before reading
    optional = [pa.field(n, t) for n, t in OPTIONAL.items() if n in needs or n in schema.names]
    check_columns(schema, pa.schema(optional), url)
    check_reserved(schema, reserved, url, LOST_IN_OUTPUT)
    return schema


def read_valid_shard(
    file: ShardFile | str, reserved: Collection[str] = (), needs: Collection[str] = ()
) -> tuple[Shard, pa.Table]:
    """One manifest shard (a listed file, or a URL: named by its file name), checked against the manifest schema
    alone (pipeline.scoring.validation checks ids across shards, on the cluster). Returns the shard and its manifest
    columns.

    `reserved`: the names of the columns the output adds (schemas.output_columns); a manifest column with one of
    them is refused, since its values would be replaced in the output.
    """
    if isinstance(file, str):
        file = ShardFile(file, store.basename(file))
    check_manifest_schema(file.url, reserved, needs, file.partitions)
    table = read_shard(file.url, MANIFEST_V1.names, file.partitions, file.name)
    validate_manifest(table, file.url)
    return Shard(file.url, file.name, table.num_rows, file.partitions), table


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
