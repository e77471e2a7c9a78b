"""Versioned Arrow schemas for what qcurate reads and writes, with validation naming the file, column and problem."""

from schemas.core import (
    MAX_ID_BYTES,
    SchemaError,
    check_columns,
    check_ids,
    check_reserved,
    check_unique_ids,
    is_string_like,
)
from schemas.labels import LABEL_SPLITS, LABEL_TASKS, LABELS_V1, LABELS_V2, mos_from_dmos, validate_labels
from schemas.manifest import MANIFEST_V1, OPTIONAL, validate_manifest
from schemas.scores import (
    LOST_IN_OUTPUT,
    SCORES_VERSION,
    ScoreColumns,
    fr_columns,
    level_columns,
    output_columns,
    scores_schema,
    validate_scores,
)

__all__ = [
    "LABELS_V1",
    "LABELS_V2",
    "LOST_IN_OUTPUT",
    "LABEL_SPLITS",
    "LABEL_TASKS",
    "MANIFEST_V1",
    "MAX_ID_BYTES",
    "OPTIONAL",
    "SCORES_VERSION",
    "SchemaError",
    "ScoreColumns",
    "check_columns",
    "check_ids",
    "check_reserved",
    "check_unique_ids",
    "fr_columns",
    "is_string_like",
    "level_columns",
    "mos_from_dmos",
    "output_columns",
    "scores_schema",
    "validate_labels",
    "validate_manifest",
    "validate_scores",
]
