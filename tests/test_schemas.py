from datetime import datetime, timezone

import pyarrow as pa
import pytest

from pipeline.levels import DEFAULT_LEVELS
from schemas import SchemaError, scores_schema, validate_manifest, validate_scores


def manifest(**overrides):
    cols = {
        "id": ["a", "b"],
        "uri": ["/x/a.jpg", "/x/b.mp4"],
        "media_type": ["image", "video"],
        "source": [1, 2],
    }
    cols.update(overrides)
    return pa.table(cols)


def test_valid_manifest_with_extra_columns_passes():
    validate_manifest(manifest(), "part-00000.parquet")
    validate_manifest(
        manifest().cast(
            pa.schema(
                [
                    ("id", pa.large_string()),
                    ("uri", pa.string()),
                    ("media_type", pa.string()),
                    ("source", pa.int64()),
                ]
            )
        ),
        "p",
    )


@pytest.mark.parametrize(
    ("table", "column", "problem"),
    [
        (manifest().drop_columns(["uri"]), "uri", "missing"),
        (manifest(id=[1, 2]), "id", "type int64"),
        (manifest(id=["a", "a"]), "id", "duplicate"),
        (manifest(id=["a", None]), "id", "null"),
        (manifest(media_type=["image", "audio"]), "media_type", "audio"),
        (manifest(uri=["", "/b"]), "uri", "empty"),
    ],
)
def test_bad_manifest_names_file_column_and_problem(table, column, problem):
    with pytest.raises(SchemaError) as err:
        validate_manifest(table, "s3://bucket/manifests/ds/part-00003.parquet")
    msg = str(err.value)
    assert "part-00003.parquet" in msg and f"'{column}'" in msg and problem in msg
    assert err.value.column == column


def test_scores_schema_has_one_float_column_per_level_and_checks_scores():
    schema = scores_schema(DEFAULT_LEVELS)
    assert [f for f in schema.names if f.startswith("p_")] == [
        "p_excellent",
        "p_good",
        "p_fair",
        "p_poor",
        "p_bad",
    ]
    now = datetime.now(timezone.utc)
    row = {
        "id": "a",
        "uri": "/a",
        "media_type": "image",
        "task": "quality",
        "p_excellent": 0.2,
        "p_good": 0.2,
        "p_fair": 0.2,
        "p_poor": 0.2,
        "p_bad": 0.2,
        "score": 3.0,
        "frames": 1,
        "model": "m",
        "model_revision": None,
        "error": None,
        "scored_at": now,
    }
    good = pa.Table.from_pylist([row], schema=schema)
    validate_scores(good, "out.parquet")
    with pytest.raises(SchemaError, match="'score'.*outside"):
        validate_scores(pa.Table.from_pylist([{**row, "score": 5.5}], schema=schema), "out.parquet")
    with pytest.raises(SchemaError, match="null score"):
        validate_scores(pa.Table.from_pylist([{**row, "score": None}], schema=schema), "out.parquet")
    failed = {**row, "score": None, "error": "not_found: /a"}
    validate_scores(pa.Table.from_pylist([failed], schema=schema), "out.parquet")
