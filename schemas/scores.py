"""Score rows, version 1: one output row per manifest row, scored or carrying an error."""

from __future__ import annotations

import pyarrow as pa

from pipeline.levels import DEFAULT_LEVELS, Levels
from schemas.core import SchemaError, check_columns, check_unique_ids

SCORES_VERSION = "scores/v1"


def scores_schema(levels: Levels = DEFAULT_LEVELS) -> pa.Schema:
    """The fixed score columns; extra manifest columns follow them in the written files.

    `error` is null when the item was scored, else "<kind>: <message>" (kind e.g. not_found, decode_error), and then
    the probabilities and score are null.
    """
    probs = [pa.field(col, pa.float64()) for col in levels.columns]
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("media_type", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            *probs,
            pa.field("score", pa.float64()),  # on the levels' scale: 1..5 by default
            pa.field("frames", pa.int32()),  # frames the model saw (1 for an image)
            pa.field("model", pa.string(), nullable=False),
            pa.field("model_revision", pa.string()),
            pa.field("error", pa.string()),
            pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ],
        metadata={"qcurate.schema": SCORES_VERSION, "qcurate.levels": ",".join(levels.words)},
    )


# Why a manifest may not have a column named like one the score shards add (see output_columns).
LOST_IN_OUTPUT = "have the names of score output columns: their values would be lost in the output"


def output_columns(levels: Levels = DEFAULT_LEVELS) -> frozenset[str]:
    """The columns a score shard adds to its manifest's id, uri and media_type. A manifest column with one of these
    names would be replaced by the job's value in the output, so such a manifest is refused before scoring."""
    return frozenset(scores_schema(levels).names) - {"id", "uri", "media_type"}


def validate_scores(table: pa.Table, source: str, levels: Levels = DEFAULT_LEVELS) -> None:
    check_columns(table, scores_schema(levels), source)
    check_unique_ids(table, source)
    scored = table.filter(table.column("error").is_null())
    if scored.column("score").null_count:
        raise SchemaError(source, "score", "null score on a row without an error")
    lo, hi = min(levels.weights), max(levels.weights)
    scores = scored.column("score").to_numpy()
    if len(scores) and (scores.min() < lo - 1e-9 or scores.max() > hi + 1e-9):
        raise SchemaError(source, "score", f"values outside [{lo}, {hi}]")
