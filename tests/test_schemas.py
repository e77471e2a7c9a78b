from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpora.shards import read_valid_shard
from pipeline.infra import store
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from schemas import (
    MANIFEST_V1,
    MAX_ID_BYTES,
    SchemaError,
    check_columns,
    is_string_like,
    level_columns,
    output_columns,
    scores_schema,
    validate_manifest,
    validate_scores,
)


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


# Every string-like type the writers of manifests use (Arrow-native writers: string_view; pandas categoricals:
# dictionary<string>), checked by the schemas alone: the shard reader casts them to string before the check, so
# only this test sees the check itself.
STRING_LIKE = [
    pa.string(),
    pa.large_string(),
    pa.string_view(),
    pa.dictionary(pa.int32(), pa.string()),
    pa.dictionary(pa.int8(), pa.large_string()),
    pa.dictionary(pa.int32(), pa.string_view()),
]


@pytest.mark.parametrize("kind", STRING_LIKE, ids=str)
def test_string_like_types_pass_the_schema_check_where_a_string_is_expected(kind):
    assert is_string_like(kind)
    schema = pa.schema([(name, kind) for name in MANIFEST_V1.names])
    check_columns(schema, MANIFEST_V1, "s.parquet")  # from a footer's schema
    column = pa.array(["a", "b"]).cast(kind)
    check_columns(pa.table({name: column for name in MANIFEST_V1.names}), MANIFEST_V1, "s.parquet")  # from rows


@pytest.mark.parametrize(
    "kind", [pa.int64(), pa.binary(), pa.binary_view(), pa.dictionary(pa.int32(), pa.int64())], ids=str
)
def test_types_that_are_not_string_like_fail_the_schema_check_naming_them(kind):
    assert not is_string_like(kind)
    schema = pa.schema([("id", kind), ("uri", pa.string()), ("media_type", pa.string())])
    with pytest.raises(SchemaError, match=f"s.parquet: column 'id': has type {kind}"):
        check_columns(schema, MANIFEST_V1, "s.parquet")


@pytest.mark.parametrize(
    ("table", "column", "problem"),
    [
        (manifest().drop_columns(["uri"]), "uri", "missing"),
        (manifest(id=[1, 2]), "id", "type int64"),
        (manifest(id=["a", "a"]), "id", "duplicate"),
        (manifest(id=["a", None]), "id", "null"),
        (manifest(media_type=["image", "audio"]), "media_type", "audio"),
        (manifest(uri=["", "/b"]), "uri", "empty"),
        (manifest(id=["a", ""]), "id", "1 empty or blank id(s), e.g. at rows [1]"),
        (manifest(id=[" \t", "b"]), "id", "1 empty or blank id(s), e.g. at rows [0]"),
        (manifest(id=["a", "é" * 513]), "id", "longer than 1024 bytes"),  # 513 characters, 1026 bytes of UTF-8
    ],
)
def test_bad_manifest_names_file_column_and_problem(table, column, problem):
    with pytest.raises(SchemaError) as err:
        validate_manifest(table, "s3://bucket/manifests/ds/part-00003.parquet")
    msg = str(err.value)
    assert "part-00003.parquet" in msg and f"'{column}'" in msg and problem in msg
    assert err.value.column == column


def test_ids_up_to_the_maximum_length_pass():
    assert MAX_ID_BYTES == 1024
    validate_manifest(manifest(id=["a" * 1024, "é" * 512]), "p")


# ------------------------------------------------------------------------------------------------------------
# Shard files: unreadable files and reserved column names fail validation, naming the file (and the columns)


def write_shard(path, table: pa.Table) -> str:
    pq.write_table(table, path)
    return str(path)


def test_unreadable_shard_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "BASE_DELAY_S", 0.0)  # corrupt pages read as an OSError, which is retried first
    good = write_shard(tmp_path / "part-00000.parquet", manifest(id=[f"id-{i}" for i in range(2)]))
    data = open(good, "rb").read()
    corrupt = bytearray(data)
    corrupt[4 : len(data) // 2] = b"\xff" * (len(data) // 2 - 4)  # pages overwritten, footer intact
    contents = {
        "not Parquet": b"id,uri,media_type\na,/a.jpg,image\n",
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "corrupt pages": bytes(corrupt),
    }
    for what, content in contents.items():
        bad = tmp_path / "part-00001.parquet"
        bad.write_bytes(content)
        with pytest.raises(SchemaError, match="not a readable Parquet file") as err:
            read_valid_shard(str(bad))
        assert err.value.source == str(bad), what


def test_columns_named_like_output_columns_are_refused_naming_shard_and_columns(tmp_path):
    reserved = output_columns(level_columns(DEFAULT_LEVELS))
    assert reserved == {
        "task",
        *DEFAULT_LEVELS.columns,
        "score",
        "frames",
        "model",
        "model_revision",
        "error",
        "scored_at",
    }
    good = write_shard(tmp_path / "part-00000.parquet", manifest())
    clash = write_shard(tmp_path / "part-00001.parquet", manifest(id=["c", "d"], score=[1.0, 2.0], error=["x", "y"]))
    with pytest.raises(SchemaError) as err:
        read_valid_shard(clash, reserved)
    assert err.value.source == clash and "['score', 'error']" in str(err.value)
    assert [read_valid_shard(u)[0].num_rows for u in (good, clash)] == [2, 2]  # only the job's names are reserved
    custom = Levels(("high", "low"), (2.0, 1.0))
    with pytest.raises(SchemaError, match="p_high"):
        read_valid_shard(
            write_shard(tmp_path / "part-00002.parquet", manifest(p_high=[0.5, 0.5])),
            output_columns(level_columns(custom)),
        )


def test_scores_schema_has_one_float_column_per_level_and_checks_scores():
    schema = scores_schema(level_columns(DEFAULT_LEVELS))
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
