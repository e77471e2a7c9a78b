"""Corpora as other tools store them: nested and hive-partitioned manifests, string-like column types, HEIC photos,
image bytes inside Parquet (Hugging Face's Image struct, a binary column). Every file is written by the test, the way
pandas, Arrow-native writers, DuckDB (small row groups) and Hugging Face datasets write them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.corpora.shards import BYTES, list_manifest, read_shard, read_valid_shard
from pipeline.curation.filter import FilterConfig, run_filter
from pipeline.curation.report import collect, write_report
from pipeline.infra.media import MediaError, MediaOptions, decode_image, load_media, read_bytes
from pipeline.scoring.job import JobConfig, run
from schemas import SchemaError, ScoreColumns, validate_scores


def picture(seed: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))


def encoded(image: np.ndarray, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **kw)
    return buffer.getvalue()


def write(path: Path, table: pa.Table, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)


# ------------------------------------------------------------------------------------------------------------
# Nested and hive-partitioned manifests


def test_shards_in_sub_folders_are_listed_and_hidden_ones_skipped(tmp_path):
    rows = lambda ids: pa.table({"id": ids, "uri": [f"{i}.jpg" for i in ids], "media_type": ["image"] * len(ids)})  # noqa: E731
    write(tmp_path / "part-00000.parquet", rows(["a", "b", "c"]))
    write(tmp_path / "batch2" / "part-00001.parquet", rows(["d", "e", "f"]))
    write(tmp_path / "batch2" / "deeper" / "part-00000.parquet", rows(["g"]))  # the same file name, another folder
    write(tmp_path / "_temporary" / "part-9.parquet", rows(["x"]))  # Spark's scratch: not a shard
    write(tmp_path / ".hidden.parquet", rows(["y"]))
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "README.txt").write_text("not a shard")
    files = list_manifest(str(tmp_path))
    assert [f.name for f in files] == [
        "batch2/deeper/part-00000.parquet",
        "batch2/part-00001.parquet",
        "part-00000.parquet",
    ]
    assert all(f.partitions == () and f.size and f.version for f in files)
    assert sum(read_valid_shard(f)[0].num_rows for f in files) == 7
    # A glob over folders names its matches by their path under the glob's fixed part, as a folder does: two
    # files of one name in two folders are two shards (the retraining's label batches are given this way).
    write(tmp_path / "batch3" / "part-00001.parquet", rows(["h"]))
    files = list_manifest(str(tmp_path / "batch[23]" / "part-*.parquet"))
    assert [f.name for f in files] == ["batch2/part-00001.parquet", "batch3/part-00001.parquet"]
    assert [f.name for f in list_manifest(str(tmp_path / "part-00000.parquet"))] == ["part-00000.parquet"]


def test_hive_partitions_become_typed_columns_as_pyarrow_reads_them(tmp_path):
    table = pa.table({"id": ["a", "b"], "uri": ["a.jpg", "b.jpg"], "media_type": ["image", "image"]})
    for folder in ("source=laion/year=2023", "source=coyo%2Fv2/year=2024", "source=__HIVE_DEFAULT_PARTITION__/year=7"):
        write(tmp_path / folder / "part-0.parquet", table.set_column(0, "id", pa.array([f"{folder}/a", f"{folder}/b"])))
    files = list_manifest(str(tmp_path))
    assert [f.partitions for f in files] == [
        (("source", None, "string"), ("year", 7, "int64")),
        (("source", "coyo/v2", "string"), ("year", 2024, "int64")),
        (("source", "laion", "string"), ("year", 2023, "int64")),
    ]
    ours = pa.concat_tables(read_shard(f.url, partitions=f.partitions) for f in files)
    import pyarrow.dataset as ds

    theirs = ds.dataset(str(tmp_path), partitioning="hive").to_table()
    for key in ("source", "year"):
        assert sorted(map(str, ours.column(key).to_pylist())) == sorted(map(str, theirs.column(key).to_pylist()))
    assert ours.schema.field("year").type == pa.int64() and ours.schema.field("source").type == pa.string()
    # a partition key that the file also holds as a column: refused, naming both
    write(tmp_path / "id=1" / "part-1.parquet", table)
    clash = next(f for f in list_manifest(str(tmp_path)) if f.name.startswith("id="))
    with pytest.raises(SchemaError, match="'id'.*partition folder"):
        read_valid_shard(clash)


# ------------------------------------------------------------------------------------------------------------
# String-like column types


def test_string_like_manifest_columns_are_accepted_and_read_as_strings(tmp_path):
    ids, uris = ["a", "b", "c"], ["x/a.jpg", "x/b.jpg", "x/c.jpg"]
    frame = pd.DataFrame({"id": ids, "uri": uris, "media_type": pd.Categorical(["image"] * 3), "tag": ["t"] * 3})
    frame["tag"] = frame["tag"].astype("category")
    frame.to_parquet(tmp_path / "pandas.parquet")  # pandas: large_string? no: string + dictionary (categoricals)
    views = pa.table(
        {
            "id": pa.array(ids, pa.string_view()),  # Polars and other Arrow-native writers
            "uri": pa.array(uris, pa.large_string()),
            "media_type": pa.array(["image"] * 3).dictionary_encode(),
            "caption": pa.array(["one", "two", "three"], pa.string_view()),
        }
    )
    write(tmp_path / "views.parquet", views, row_group_size=1)  # DuckDB-style: many small row groups
    for name in ("pandas.parquet", "views.parquet"):
        shard, table = read_valid_shard(str(tmp_path / name))
        assert shard.num_rows == 3 and table.column("id").to_pylist() == ids and table.column("uri").to_pylist() == uris
        assert all(table.schema.field(c).type == pa.string() for c in ("id", "uri", "media_type"))
    extras = read_shard(str(tmp_path / "views.parquet"))  # string_view: read as string; dictionaries stay
    assert extras.schema.field("caption").type == pa.string() and extras.column("caption").to_pylist()[0] == "one"
    tags = read_shard(str(tmp_path / "pandas.parquet")).schema.field("tag").type
    assert pa.types.is_dictionary(tags) and tags.value_type == pa.string()
    write(tmp_path / "ints.parquet", views.set_column(0, "id", pa.array([1, 2, 3])))
    with pytest.raises(SchemaError, match="column 'id': has type int64"):
        read_valid_shard(str(tmp_path / "ints.parquet"))


# ------------------------------------------------------------------------------------------------------------
# HEIF / HEIC


def test_heic_is_an_image_by_its_brand_and_decodes(tmp_path):
    image = picture(1, (64, 48))
    heic = encoded(image, "HEIF", quality=95)  # pillow-heif's encoder: an ftyp box with major brand heic
    assert heic[4:12] == b"ftypheic"
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic)
    media = load_media(str(path), "image")
    assert media.frames[0].shape == (48, 64, 3)
    assert np.abs(media.frames[0].astype(int) - image).mean() < 6  # the picture, not garbage
    with pytest.raises(MediaError, match=r"not a video: the first bytes show an image \(HEIF\)"):
        read_bytes(str(path), MediaOptions(), "video")
    avif = encoded(image, "AVIF", quality=95)
    assert avif[4:12] == b"ftypavif" and decode_image(avif).shape == (48, 64, 3)


# ------------------------------------------------------------------------------------------------------------
# Scoring jobs over these layouts (the session's Ray cluster)


def pair_files(root: Path, n: int) -> list[tuple[str, str]]:
    """n (item, reference) PNG pairs on disk: the item is its reference with a little noise."""
    root.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        ref = picture(i)
        noisy = np.clip(ref.astype(int) + np.random.default_rng(100 + i).integers(-8, 9, ref.shape), 0, 255)
        for name, image in (("item", noisy.astype(np.uint8)), ("ref", ref)):
            Image.fromarray(image).save(root / f"{name}-{i}.png")
        pairs.append((str(root / f"item-{i}.png"), str(root / f"ref-{i}.png")))
    return pairs


def scores_of(output: Path) -> dict[str, pa.Table]:
    return {
        str(p.relative_to(output)): pq.read_table(p)
        for p in sorted(output.rglob("*.parquet"))
        if not str(p.relative_to(output)).startswith("_")
    }


@pytest.mark.slow
def test_a_hive_and_nested_manifest_scores_into_the_same_layout(ray_cluster, tmp_path):
    pairs = pair_files(tmp_path / "media", 6)
    manifest, output = tmp_path / "manifest", tmp_path / "scores"

    def shard(ids: list[int], **types) -> pa.Table:
        columns = {
            "id": [f"item-{i}" for i in ids],
            "uri": [pairs[i][0] for i in ids],
            "media_type": ["image"] * len(ids),
            "ref_uri": [pairs[i][1] for i in ids],
            "caption": [f"picture {i}" for i in ids],
        }
        return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in columns.items()})

    write(manifest / "source=laion" / "part-0.parquet", shard([0, 1], id=pa.string_view(), caption=pa.string_view()))
    write(manifest / "source=coyo" / "part-0.parquet", shard([2, 3], uri=pa.large_string()))
    dictionary = shard([4, 5])
    dictionary = dictionary.set_column(2, "media_type", dictionary.column("media_type").dictionary_encode())
    write(manifest / "source=coyo" / "batch2" / "part-1.parquet", dictionary)
    (manifest / "_SUCCESS").write_text("")

    summary = run(JobConfig(str(manifest), str(output), scorer="psnr", batch_size=2, max_error_rate=0.0))
    names = ["source=coyo/batch2/part-1.parquet", "source=coyo/part-0.parquet", "source=laion/part-0.parquet"]
    assert summary["rows"] == 6 and summary["errors"] == 0
    tables = scores_of(output)
    assert sorted(tables) == names  # the output mirrors the manifest's relative paths
    for name, table in tables.items():
        validate_scores(table, name, ScoreColumns.of(table.schema))
        assert table.column("source").to_pylist() == [name.split("/")[0].split("=")[1]] * 2  # the partition key
        assert table.schema.field("id").type == pa.string()  # the manifest's columns: plain strings
        assert all(0 < v < 100 for v in table.column("psnr").to_pylist())
    laion = tables["source=laion/part-0.parquet"]
    assert laion.column("id").to_pylist() == ["item-0", "item-1"]
    assert laion.schema.field("caption").type == pa.string()  # string_view extras: as string, the same values
    assert laion.column("caption").to_pylist() == ["picture 0", "picture 1"]
    assert sorted(str(p.relative_to(output / "_committed")) for p in (output / "_committed").rglob("*.json")) == [
        f"{n}.json" for n in names
    ]
    recorded = json.loads((output / "_manifest.json").read_text())
    assert sorted(recorded["rows"]) == names and sum(recorded["rows"].values()) == 6

    again = run(JobConfig(str(manifest), str(output), scorer="psnr", batch_size=2))
    assert again["this_run"]["shards"] == 0 and again["rows"] == 6
    (output / "_committed" / "source=coyo" / "part-0.parquet.json").unlink()  # died before this marker
    third = run(JobConfig(str(manifest), str(output), scorer="psnr", batch_size=2))
    assert third["this_run"]["shards"] == 1 and third["rows"] == 6

    kept = tmp_path / "kept"
    result = run_filter(FilterConfig(str(manifest), str(output), str(kept), min_score=0.0))
    assert result["rows_kept"] == 6, result
    assert sorted(scores_of(kept)) == names  # the filtered manifest is partitioned the same way
    assert collect(str(output), str(manifest)).rows == 6


def hf_image_shard(pairs: list[tuple[str, str]], ids: list[int], with_path: bool) -> pa.Table:
    """A Hugging Face datasets shard: an `image` column of struct<bytes, path>, no uri, no media_type."""
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": Path(pairs[i][0]).read_bytes(), "path": f"img-{i}.png" if with_path else None} for i in ids]
    return pa.table(
        {
            "id": [f"hf-{i}" for i in ids],
            "image": pa.array(images, image_type),
            "ref_uri": [pairs[i][1] for i in ids],
            "label": ids,
        }
    )


@pytest.mark.slow
def test_image_bytes_inside_parquet_score_with_no_fetch_and_stay_out_of_the_output(ray_cluster, tmp_path):
    pairs = pair_files(tmp_path / "media", 5)
    manifest, output = tmp_path / "manifest", tmp_path / "scores"
    write(manifest / "hf" / "part-0.parquet", hf_image_shard(pairs, [0, 1], with_path=True))
    write(manifest / "hf" / "part-1.parquet", hf_image_shard(pairs, [2], with_path=False))
    # A binary column beside a uri that does not exist: the bytes are scored, the uri is never read. A row whose bytes
    # are null is fetched by its uri, as datasets reads an Image without bytes from its path.
    raw = pa.table(
        {
            "id": ["raw-3", "raw-4"],
            "uri": [str(tmp_path / "gone-3.png"), str(tmp_path / "gone-4.png")],
            "media_type": ["image", "image"],
            "ref_uri": [pairs[3][1], pairs[4][1]],
            "jpg": pa.array([Path(pairs[3][0]).read_bytes(), None], pa.large_binary()),
        }
    )
    write(manifest / "raw.parquet", raw)

    summary = run(JobConfig(str(manifest), str(output), scorer="psnr", batch_size=2, max_error_rate=0.5))
    tables = scores_of(output)
    assert sorted(tables) == ["hf/part-0.parquet", "hf/part-1.parquet", "raw.parquet"]
    rows = {r["id"]: r for t in tables.values() for r in t.to_pylist()}
    assert summary["errors_by_kind"] == {"not_found": 1} and rows["raw-4"]["error"].startswith("not_found")
    for i in ("hf-0", "hf-1", "hf-2", "raw-3"):
        assert rows[i]["error"] is None and 0 < rows[i]["psnr"] < 100
    assert [rows[i]["uri"] for i in ("hf-0", "hf-1", "hf-2")] == ["img-0.png", "img-1.png", "hf/part-1.parquet#0"]
    assert rows["hf-0"]["media_type"] == "image" and rows["hf-1"]["label"] == 1  # every other column is carried
    for table in tables.values():
        assert not {"image", "jpg", BYTES} & set(table.column_names)  # the bytes never reach the score rows

    # Filtered, such a shard keeps its bytes column as stored (its items: a manifest again), and nothing is implied.
    scored = {i: r["fr_score"] for i, r in rows.items() if r["error"] is None}
    threshold = sorted(scored.values())[1]
    keep = sorted(i for i, s in scored.items() if s >= threshold)
    kept = tmp_path / "kept"
    assert run_filter(FilterConfig(str(manifest), str(output), str(kept), min_score=threshold))["rows_kept"] == 3
    filtered = scores_of(kept)
    assert sorted(r["id"] for t in filtered.values() for r in t.to_pylist()) == keep
    for name, table in filtered.items():
        source = pq.read_table(manifest / name)
        assert table.schema == source.schema  # the same columns and types: no _bytes, no uri or media_type added
        by_id = {r["id"]: r for r in source.to_pylist()}
        assert all(r == by_id[r["id"]] for r in table.to_pylist())  # the rows as they are, bytes and all
    again = run(JobConfig(str(kept), str(tmp_path / "rescored"), scorer="psnr", batch_size=2))
    assert again["rows"] == 3 and again["errors"] == 0  # scored from the kept bytes, no fetch
    page = Path(write_report(str(output), str(tmp_path / "report"), str(manifest), threshold)).read_text()
    assert "<td>manifest rows</td><td>5</td>" in page and "unavailable" not in page  # thumbnails from the bytes
    for i in keep:
        assert f'<div class="score kept">{scored[i]:.3f}</div><div>{i}</div>' in page

    two = hf_image_shard(pairs, [0], with_path=True).append_column("thumb", pa.array([b"x"], pa.binary()))
    write(tmp_path / "two" / "part-0.parquet", two)
    with pytest.raises(SchemaError, match=r"more than one column of image bytes \['image', 'thumb'\]"):
        run(JobConfig(str(tmp_path / "two"), str(tmp_path / "out2"), scorer="psnr"))


def test_the_decode_stage_takes_given_bytes_and_errors_without_fetching(tmp_path):
    from pipeline.corpora.shards import READ_ERROR
    from pipeline.scoring.stages import PrepareStage
    from tests.test_fetch import ShapeKind

    image = encoded(picture(3, (40, 30)), "PNG")
    gone = str(tmp_path / "never-written.png")  # read, it would be not_found
    batch = {
        "id": np.array(["given", "failed", "fetched", "not-an-image"], object),
        "uri": np.array([gone, "tar://x.png::/a.tar", gone, gone], object),
        "media_type": np.array(["image"] * 4, object),
        "path": np.array(["shard"] * 4, object),
        BYTES: np.array([image, None, None, b"hello"], object),
        READ_ERROR: np.array([None, "archive_truncated: /a.tar: cut", None, None], object),
    }
    out = PrepareStage(ShapeKind(), MediaOptions())(batch)
    assert out["height"][0] == 30 and out["error"][0] == ""
    assert out["error"][1] == "archive_truncated: /a.tar: cut"
    assert out["error"][2].startswith("not_found: ")
    assert out["error"][3].startswith("decode_error: ") and "not an image" in out["error"][3]


def test_a_hugging_face_image_shard_reads_as_a_manifest_without_its_bytes(tmp_path):
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": b"one", "path": "a.png"}, {"bytes": b"two", "path": ""}, {"bytes": None, "path": None}]
    write(tmp_path / "train-00000.parquet", pa.table({"id": ["a", "b", "c"], "image": pa.array(images, image_type)}))
    shard, table = read_valid_shard(str(tmp_path / "train-00000.parquet"))
    assert table.column("uri").to_pylist() == ["a.png", "train-00000.parquet#1", "train-00000.parquet#2"]
    assert table.column("media_type").to_pylist() == ["image"] * 3
    whole = read_shard(shard.url)
    assert "image" not in whole.column_names and BYTES not in whole.column_names  # what the output is made from
    assert read_shard(shard.url, ["id", BYTES]).column(BYTES).to_pylist() == [b"one", b"two", None]
