"""Manifests that hold their images' bytes (Hugging Face datasets' `Image` feature, image bytes written to Parquet).

The bytes column is found by its type: a column of binary type (binary, large_binary, binary_view), or a struct with
a binary `bytes` field (Hugging Face's `Image`: struct<bytes: binary, path: string>). A shard may have one; two are
refused, naming them. Its rows are scored from those bytes with no fetch at all (a row whose bytes are null is
fetched by its `uri`, as Hugging Face reads an `Image` whose bytes are null from its `path`).

Such a shard needs no `uri` or `media_type` column: `uri` is then the struct's `path` where it has one, else
`<shard name>#<row>`; `media_type` is "image". The bytes never reach the score rows; every other column does.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas import SchemaError


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def bytes_column(schema: pa.Schema, source: str) -> str | None:
    """The name of the shard's bytes column, or None; more than one is a SchemaError naming them."""
    found = [
        f.name
        for f in schema
        if _is_binary(f.type)
        or (pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0 and _is_binary(f.type["bytes"].type))
    ]
    if len(found) > 1:
        raise SchemaError(source, found[1], f"more than one column of image bytes {found}: keep one")
    return found[0] if found else None


def image_bytes(column: pa.ChunkedArray) -> pa.Array:
    """The bytes of a bytes column (the `bytes` field of a struct one) as large_binary, null where absent."""
    array = column.combine_chunks()
    if pa.types.is_struct(array.type):
        array = pc.struct_field(array, "bytes")
    return array.cast(pa.large_binary())


def default_uris(column: pa.ChunkedArray, name: str) -> pa.Array:
    """`uri` for a shard without one: the struct's `path` where given, else `<shard name>#<row>`."""
    n = len(column)
    fallback = pa.array([f"{name}#{i}" for i in range(n)], pa.string())
    array = column.combine_chunks()
    if pa.types.is_struct(array.type) and array.type.get_field_index("path") >= 0:
        path = pc.struct_field(array, "path").cast(pa.string())
        return pc.if_else(pc.fill_null(pc.greater(pc.utf8_length(path), 0), False), path, fallback)
    return fallback
