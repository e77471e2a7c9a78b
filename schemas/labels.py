"""MOS label shards, version 2: one row per rated item, the input of the retraining job.

A shard is a batch of new human ratings: `labels/<batch>/part-*.parquet`. Each row names the item (id, uri,
media_type), what was rated (task), the mean opinion score with the scale it was given on (scale_min..scale_max),
optionally the spread of the individual ratings (mos_std), and which split it belongs to: "train" rows may be trained
on, "eval" rows are held out and only ever measured. Extra columns are allowed and ignored, except those named like
the score output's columns (`score`, `p_good`, `error`, ...): a label shard is a manifest too (it can be scored), where
they would be lost, and beside `mos` they would be taken for ratings they are not.

Version 2 (labels/v2) is version 1 plus one optional column, `ref_uri`: the reference (pristine original) the item
was rated against, for full-reference scorers (VTAMIQ) to train on. Same URI rules as `uri`; a row that has one is
a full-reference label and must be an image with a non-empty ref_uri; null means the row has no reference. Every v1
shard is a valid v2 shard.

Direction: `mos` is always higher = better, as every qcurate score is. Ratings given as DMOS (differential MOS,
lower = better: 0 = indistinguishable from the reference) are written flipped on their own scale,
mos = scale_min + scale_max - dmos (`mos_from_dmos`); the scale stays the one they were given on.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas.core import SchemaError, check_columns, check_ids, check_reserved
from schemas.manifest import MEDIA_TYPES
from schemas.scores import output_columns

LABEL_TASKS = ("quality", "aesthetics")  # the tasks the scorer has prompts for (pipeline.qalign.recipes.TASKS)
LABEL_SPLITS = ("train", "eval")

LABELS_V1 = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique across all label shards
        pa.field("uri", pa.string(), nullable=False),
        pa.field("media_type", pa.string(), nullable=False),  # "image" | "video"
        pa.field("task", pa.string(), nullable=False),  # "quality" | "aesthetics" (images only)
        pa.field("mos", pa.float64(), nullable=False),
        pa.field("scale_min", pa.float64(), nullable=False),  # the rating scale the MOS is on, e.g. 1..5 or 0..100
        pa.field("scale_max", pa.float64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # "train" | "eval"
    ],
    metadata={"qcurate.schema": "labels/v1"},
)
# v2: the same required columns; ref_uri joins the optional ones. What write_label_shard stamps on new shards.
LABELS_V2 = pa.schema(LABELS_V1, metadata={"qcurate.schema": "labels/v2"})
OPTIONAL = {
    "mos_std": pa.float64(),  # standard deviation of the individual ratings, on the same scale
    "ref_uri": pa.string(),  # v2: the item's reference, for full-reference scorers
}


def mos_from_dmos(dmos: float, scale_min: float, scale_max: float) -> float:
    """A DMOS (lower = better) as the `mos` a label row holds (higher = better), on the same scale."""
    return scale_min + scale_max - dmos


def _fail_where(table: pa.Table, bad: pa.ChunkedArray | pa.Array, source: str, column: str, problem: str) -> None:
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        ids = table.column("id").filter(bad).to_pylist()[:3]
        raise SchemaError(source, column, f"{pc.sum(bad).as_py()} row(s) {problem}, e.g. ids {ids}")


def validate_labels(table: pa.Table, source: str, splits: tuple[str, ...] = LABEL_SPLITS) -> None:
    """Raise SchemaError naming `source` and the column when the shard is not a valid v2 (or v1) label shard.

    `splits` are the allowed split names (the retraining job passes ("train", its --eval-split)).
    """
    check_columns(table, LABELS_V1, source)
    reserved = output_columns() - set(LABELS_V1.names)  # `task` means the same in both
    check_reserved(table.schema, reserved, source, "have the names of score output columns, not of label columns")
    for name, kind in OPTIONAL.items():
        if name in table.column_names:
            check_columns(table.select([name]), pa.schema([pa.field(name, kind)]), source)

    def values_in(column: str, allowed: tuple[str, ...]) -> None:
        bad = pc.invert(pc.is_in(table.column(column), value_set=pa.array(allowed)))
        if pc.any(bad).as_py():
            values = sorted(set(table.column(column).filter(bad).to_pylist()))
            raise SchemaError(source, column, f"values {values} are not one of {list(allowed)}")

    values_in("media_type", MEDIA_TYPES)
    values_in("task", LABEL_TASKS)
    values_in("split", splits)
    _fail_where(table, pc.equal(pc.utf8_length(table.column("uri")), 0), source, "uri", "have an empty URI")
    video_not_quality = pc.and_(
        pc.equal(table.column("media_type"), "video"), pc.not_equal(table.column("task"), "quality")
    )
    _fail_where(table, video_not_quality, source, "task", "rate a video for a task other than quality")

    mos, lo, hi = (table.column(c).cast(pa.float64()) for c in ("mos", "scale_min", "scale_max"))
    _fail_where(table, pc.invert(pc.greater(hi, lo)), source, "scale_max", "have scale_max <= scale_min")
    finite = pc.is_finite(mos)
    _fail_where(table, pc.invert(finite), source, "mos", "have a non-finite MOS")
    outside = pc.or_(pc.less(mos, lo), pc.greater(mos, hi))
    _fail_where(table, outside, source, "mos", "have a MOS outside [scale_min, scale_max]")
    if "mos_std" in table.column_names:
        std = table.column("mos_std").cast(pa.float64())
        negative = pc.and_kleene(std.is_valid(), pc.invert(pc.greater_equal(std, 0.0)))
        _fail_where(table, negative, source, "mos_std", "have a negative or non-finite mos_std")
    if "ref_uri" in table.column_names:
        ref = table.column("ref_uri")
        has_ref = ref.is_valid()  # null: no reference (a row only for scorers without one)
        empty = pc.and_kleene(has_ref, pc.equal(pc.utf8_length(ref), 0))
        _fail_where(table, empty, source, "ref_uri", "have an empty ref_uri")
        video = pc.and_kleene(has_ref, pc.not_equal(table.column("media_type"), "image"))
        _fail_where(table, video, source, "ref_uri", "have a ref_uri but are not images (full-reference labels are)")
    check_ids(table, source)
