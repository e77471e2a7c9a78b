"""Input manifest, version 1: one row per item to score. Extra columns are allowed and carried through."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas.core import SchemaError, check_columns, check_ids

MEDIA_TYPES = ("image", "video")

MANIFEST_V1 = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique across the whole manifest, non-empty, <= 1024 bytes
        pa.field("uri", pa.string(), nullable=False),  # any fsspec URL or path
        pa.field("media_type", pa.string(), nullable=False),  # "image" | "video"
    ],
    metadata={"qcurate.schema": "manifest/v1"},
)
# Optional columns, checked for their type when present. `ref_uri`: the reference (pristine original) of the item,
# which full-reference scorers compare it with; same URI rules as `uri`. A null or empty one is a row's error there.
OPTIONAL = {"ref_uri": pa.string()}


def validate_manifest(table: pa.Table, source: str) -> None:
    """Raise SchemaError naming `source` and the column when the shard is not a valid v1 manifest."""
    check_columns(table, MANIFEST_V1, source)
    bad = pc.invert(pc.is_in(table.column("media_type"), value_set=pa.array(MEDIA_TYPES)))
    if pc.any(bad).as_py():
        values = sorted(set(table.column("media_type").filter(bad).to_pylist()))
        raise SchemaError(source, "media_type", f"values {values} are not one of {list(MEDIA_TYPES)}")
    empty = pc.equal(pc.utf8_length(table.column("uri")), 0)
    if pc.any(empty).as_py():
        raise SchemaError(source, "uri", f"{pc.sum(empty).as_py()} empty URI(s)")
    check_ids(table, source)
