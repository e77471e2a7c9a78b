"""WebDataset folders as img2dataset, video2dataset, NeMo Curator and DataComp write them: `NNNNN.tar` shards holding
`<key>.jpg`, `<key>.json`, `<key>.txt`, ... with, usually, a `NNNNN.parquet` beside each tar listing its keys with
url, caption, status, width, height, ...

Such a folder is a manifest as it is (`--manifest s3://bucket/laion-shards/`): each tar is one shard, named like its
Parquet (`00000.tar` -> `00000.parquet`, the name of its score shard). Its rows are its members with an image or
video extension (MEDIA_EXTENSIONS; one per key, the first in the archive), WebDataset's way: the key is the member's
path up to the first dot of its file name. The key is the row's id (see prefix_ids for keys that repeat across
shards), the member its `tar://<member>::<archive>` uri (pipeline.corpora.tars), the extension its media type. The
Parquet beside the tar, when there is one, gives the rows' extra columns (joined on its `key`; every column but
`key`); its rows whose `status` is not "success" are skipped and counted, and a success row whose key has no member
in the tar is kept (its error: not_in_archive).

The job indexes each tar once, before validation (one pass over the tar's headers, skipping the data by seeking),
into an ordinary manifest shard of tar:// rows under the output (`<output>/_index/<name>`); from there on a tar shard
is scored, committed and resumed like any Parquet shard.
"""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.corpora.tars import READ_BLOCK, tar_uri
from pipeline.infra import store

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "heic", "heif", "avif")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
MEDIA_EXTENSIONS = {**{e: "image" for e in IMAGE_EXTENSIONS}, **{e: "video" for e in VIDEO_EXTENSIONS}}
# The header scan reads the archive in blocks of this size (one request each on an object store): seeking over a
# member larger than a block skips its data unread; small members (images) are read through, a block at a time.
SCAN_BLOCK = READ_BLOCK


def split_key(member: str) -> tuple[str, str]:
    """(key, extension) of a member name, WebDataset's way: `a/b/000123.seg.jpg` -> (`a/b/000123`, `seg.jpg`)."""
    folder, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def media_members(archive: str, size: int | None = None) -> list[tuple[str, str, str]]:
    """(key, member, media type) of the archive's media members, one per key (the first), in archive order. `size`:
    the archive's, from the listing (an object store then needs no HEAD to open it)."""
    fs, path = store.filesystem(archive)
    found: dict[str, tuple[str, str, str]] = {}
    known = {"size": size} if size is not None else {}
    with fs.open(path, "rb", block_size=SCAN_BLOCK, **known) as fh:
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                for info in tar:
                    key, ext = split_key(info.name.lstrip("/"))
                    kind = MEDIA_EXTENSIONS.get(ext.rsplit(".", 1)[-1])
                    if info.isfile() and kind and key not in found:
                        found[key] = (key, info.name.lstrip("/"), kind)
        except (tarfile.ReadError, EOFError):
            # A truncated archive: the members before the cut are its rows (the sidecar's other success rows too);
            # reading them finds the cut and gives each row that needs more of it archive_truncated.
            pass
    return list(found.values())


def index_table(archive: str, sidecar: str | None, size: int | None = None) -> tuple[pa.Table, int]:
    """The archive's rows as a manifest table (id, uri, media_type, then the sidecar's columns), and how many
    sidecar rows were skipped for their status. `size`: the archive's, as media_members."""
    members = media_members(archive, size)
    rows = pa.table(
        {
            "id": pa.array([k for k, _, _ in members], pa.string()),
            "uri": pa.array([tar_uri(m, archive) for _, m, _ in members], pa.string()),
            "media_type": pa.array([t for _, _, t in members], pa.string()),
            "_order": pa.array(range(len(members)), pa.int64()),
        }
    )
    if sidecar is None:
        return rows.drop_columns(["_order"]), 0
    fs, path = store.filesystem(sidecar)
    # read whole in one GET (a Parquet reader would ask for its size, its footer and its data: three or four)
    side = pq.read_table(io.BytesIO(store.retry(lambda: fs.cat_file(path), f"read {sidecar}")))
    if "key" not in side.column_names:
        raise ValueError(f"{sidecar}: a WebDataset shard's Parquet needs a 'key' column, it has {side.column_names}")
    skipped = 0
    if "status" in side.column_names:
        ok = pc.fill_null(pc.equal(side.column("status").cast(pa.string()), "success"), False)
        skipped = side.num_rows - pc.sum(ok).as_py() if side.num_rows else 0
        side = side.filter(ok)
    side = side.drop_columns([c for c in ("id", "uri", "media_type", "_order") if c in side.column_names])
    side = side.set_column(side.schema.get_field_index("key"), "id", side.column("key").cast(pa.string()))
    joined = rows.join(side, "id", join_type="full outer")
    # a success row with no member: its uri names the key alone, which the archive lacks (not_in_archive)
    lacking = pc.is_null(joined.column("uri"))
    uri = pc.if_else(
        lacking, pc.binary_join_element_wise("tar://", joined.column("id"), f"::{archive}", ""), joined.column("uri")
    )
    joined = joined.set_column(joined.schema.get_field_index("uri"), "uri", uri)
    media = pc.fill_null(joined.column("media_type"), "image")
    joined = joined.set_column(joined.schema.get_field_index("media_type"), "media_type", media)
    order = pc.fill_null(joined.column("_order"), len(members))
    joined = joined.take(
        pc.sort_indices(pa.table({"o": order, "id": joined.column("id")}), [("o", "ascending"), ("id", "ascending")])
    )
    return joined.drop_columns(["_order"]), skipped


def write_index(
    archive: str, sidecar: str | None, url: str, prefix: str | None = None, size: int | None = None
) -> tuple[int, int]:
    """Index one tar (index_table) into the manifest shard at `url`, its ids prefixed by `prefix/` when given (keys
    that repeat across shards). Returns (rows, rows skipped for their status)."""
    table, skipped = index_table(archive, sidecar, size)
    if prefix is not None:
        ids = pc.binary_join_element_wise(prefix, table.column("id"), "/")
        table = table.set_column(0, "id", ids)
    store.write_parquet(table, url)
    return table.num_rows, skipped
