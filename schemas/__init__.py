"""Versioned Arrow schemas for what qcurate reads and writes, with validation naming the file, column and problem."""

from schemas.core import SchemaError, check_columns, check_unique_ids
from schemas.labels import LABEL_SPLITS, LABEL_TASKS, LABELS_V1, validate_labels
from schemas.manifest import MANIFEST_V1, validate_manifest
from schemas.scores import SCORES_VERSION, scores_schema, validate_scores

__all__ = [
    "LABELS_V1",
    "LABEL_SPLITS",
    "LABEL_TASKS",
    "MANIFEST_V1",
    "SCORES_VERSION",
    "SchemaError",
    "check_columns",
    "check_unique_ids",
    "scores_schema",
    "validate_labels",
    "validate_manifest",
    "validate_scores",
]
