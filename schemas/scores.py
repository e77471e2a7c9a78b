"""Score rows, version 1: one output row per manifest row, scored or carrying an error.

Every score shard has the same frame, id, uri and media_type first and model, model_revision, error and scored_at
last; between them, the columns of the kind of scorer that wrote it (`ScoreColumns`, from pipeline.scorers):

    level scorer (an LMM):  task, p_<level> ..., score (1..5 by default), frames
    full-reference scorers: fr_score, psnr, ssim

A shard's schema metadata says which kind wrote it, its headline column and the ranges of its columns, so the filter
and the report read any score shard without knowing the scorers. Shards written before the metadata existed are
level scorers' (their `qcurate.levels` names the levels).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from schemas.core import SchemaError, check_columns, check_unique_ids

SCORES_VERSION = "scores/v1"
HEAD = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("uri", pa.string(), nullable=False),
    pa.field("media_type", pa.string(), nullable=False),
]
TAIL = [
    pa.field("model", pa.string(), nullable=False),  # --model, or the metric's name
    pa.field("model_revision", pa.string()),
    # null when the item was scored, else "<kind>: <message>" (kind e.g. not_found, decode_error); then the
    # scorer's columns are null
    pa.field("error", pa.string()),
    pa.field("scored_at", pa.timestamp("us", tz="UTC"), nullable=False),
]


@dataclass(frozen=True)
class ScoreColumns:
    """The columns one kind of scorer writes between media_type and model, and what they mean."""

    scorer: str  # the kind's --scorer name
    fields: tuple[pa.Field, ...]
    score_column: str  # the headline column: what --min-score and the report's histogram use
    # scored rows' values must lie in these closed ranges
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    levels: tuple[str, ...] = ()  # level scorers: the level words, best first

    def schema(self) -> pa.Schema:
        metadata = {
            "qcurate.schema": SCORES_VERSION,
            "qcurate.scorer": self.scorer,
            "qcurate.score_column": self.score_column,
            "qcurate.columns": ",".join(self.names),  # the scorer's own; extra manifest columns follow the frame
            "qcurate.ranges": json.dumps(self.ranges),
        }
        if self.levels:
            metadata["qcurate.levels"] = ",".join(self.levels)
        return pa.schema([*HEAD, *self.fields, *TAIL], metadata=metadata)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def score_range(self) -> tuple[float, float]:
        return self.ranges[self.score_column]

    @classmethod
    def of(cls, schema: pa.Schema) -> ScoreColumns:
        """What a score shard's schema says about its columns."""
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        if "qcurate.scorer" not in meta:  # written before kinds of scorers existed: a level scorer's
            words = meta["qcurate.levels"].split(",") if "qcurate.levels" in meta else []
            words = words or [name[2:] for name in schema.names if name.startswith("p_")]
            if len(words) < 2:
                raise SchemaError("score shard", None, f"names no scorer and no levels: {schema.names}")
            return level_columns(Levels(tuple(words), tuple(float(len(words) - i) for i in range(len(words)))))
        names = meta["qcurate.columns"].split(",")
        ranges = {k: tuple(v) for k, v in json.loads(meta["qcurate.ranges"]).items()}
        levels = tuple(meta["qcurate.levels"].split(",")) if "qcurate.levels" in meta else ()
        fields = tuple(schema.field(n) for n in names)
        return cls(meta["qcurate.scorer"], fields, meta["qcurate.score_column"], ranges, levels)


def level_columns(levels: Levels = DEFAULT_LEVELS) -> ScoreColumns:
    """The level scorer's columns: one probability column per level word, the score on the levels' scale."""
    lo, hi = min(levels.weights), max(levels.weights)
    fields = (
        pa.field("task", pa.string(), nullable=False),
        *(pa.field(col, pa.float64()) for col in levels.columns),
        pa.field("score", pa.float64()),  # on the levels' scale: 1..5 by default
        pa.field("frames", pa.int32()),  # frames the model saw (1 for an image)
    )
    ranges = {**{col: (0.0, 1.0) for col in levels.columns}, "score": (lo, hi)}
    return ScoreColumns("lmm", fields, "score", ranges, tuple(levels.words))


# Every full-reference scorer computes PSNR and SSIM beside its own score (cheap, and what a curator compares to).
MAX_PSNR = 100.0  # dB, for identical images (instead of infinity), so the column stays finite and filterable
FR_RANGES = {"psnr": (0.0, MAX_PSNR), "ssim": (-1.0, 1.0)}


def fr_columns(scorer: str, score_range: tuple[float, float]) -> ScoreColumns:
    """A full-reference scorer's columns: its own score (`fr_score`, higher is better) and PSNR and SSIM."""
    fields = tuple(pa.field(name, pa.float64()) for name in ("fr_score", "psnr", "ssim"))
    return ScoreColumns(scorer, fields, "fr_score", {"fr_score": tuple(score_range), **FR_RANGES})


def scores_schema(columns: ScoreColumns | None = None) -> pa.Schema:
    """The fixed score columns (the level scorer's by default); extra manifest columns follow them in the files."""
    return (columns or level_columns()).schema()


# Why a manifest may not have a column named like one the score shards add (see output_columns).
LOST_IN_OUTPUT = "have the names of score output columns: their values would be lost in the output"


def output_columns(columns: ScoreColumns | None = None) -> frozenset[str]:
    """The columns a score shard adds to its manifest's id, uri and media_type. A manifest column with one of these
    names would be replaced by the job's value in the output, so such a manifest is refused before scoring."""
    return frozenset(scores_schema(columns).names) - {"id", "uri", "media_type"}


def validate_scores(table: pa.Table, source: str, columns: ScoreColumns | None = None) -> None:
    columns = columns or level_columns()
    check_columns(table, columns.schema(), source)
    check_unique_ids(table, source)
    scored = table.filter(table.column("error").is_null())
    if scored.column(columns.score_column).null_count:
        raise SchemaError(source, columns.score_column, f"null {columns.score_column} on a row without an error")
    for name, (lo, hi) in columns.ranges.items():
        values = scored.column(name).drop_null()
        if len(values) and not pc.all(pc.is_finite(values)).as_py():
            raise SchemaError(source, name, "non-finite values")
        if len(values) and (pc.min(values).as_py() < lo - 1e-9 or pc.max(values).as_py() > hi + 1e-9):
            raise SchemaError(source, name, f"values outside [{lo}, {hi}]")
