"""Filtering a corpus by score: real score shards from the real scoring job, local files and S3, bad expressions."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.curation.filter import FilterConfig, FilterError, run_filter
from pipeline.infra import store
from pipeline.samples.corpus import build_sample_corpus
from pipeline.scoring.job import JobConfig, run
from schemas import SchemaError

REPO = Path(__file__).resolve().parents[1]
LEVELS = ["excellent", "good", "fair", "poor", "bad"]


def scored_sample(root: Path, model: str) -> tuple[str, str]:
    """A small real corpus in 3 manifest shards, scored by the real job: (manifest, scores) folders.

    Built once per session under `root` (test_report.py shares it): a second call finds the manifest there, and the
    job resumes a finished run without scoring anything.
    """
    manifest, scores = root / "manifest", root / "scores"
    if not manifest.exists():
        photos = ("astronaut", "coffee", "chelsea")
        rows = build_sample_corpus(str(root / "corpus"), photos=photos, levels=(0, 2, 4), n_videos=1)  # 9 + 1 video
        extra = {"source": "bad", "distortion": "none", "level": 0, "mos": 1.0}
        rows.insert(1, {"id": "missing-file", "uri": str(root / "nope.jpg"), "media_type": "image", **extra})
        table = pa.Table.from_pylist(rows)
        for i, start in enumerate((0, 4, 8)):
            store.write_parquet(table.slice(start, 4), str(manifest / f"part-{i:05d}.parquet"))
    run(JobConfig(str(manifest), str(scores), model, batch_size=8, max_error_rate=0.5), log=lambda *_: None)
    return str(manifest), str(scores)


def read_dir(url: str) -> pd.DataFrame:
    """Every Parquet shard of a folder (any fsspec URL), concatenated."""
    fs, path = store.filesystem(url)
    shards = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    return pd.concat([pq.read_table(p, filesystem=fs).to_pandas() for p in shards], ignore_index=True)


@pytest.fixture(scope="module")
def sample(ray_cluster, tiny_models, tmp_path_factory) -> tuple[str, str]:
    return scored_sample(tmp_path_factory.getbasetemp() / "scored-sample", tiny_models["llava"])


@pytest.fixture(scope="module")
def scores_df(sample) -> pd.DataFrame:
    return read_dir(sample[1])


@pytest.mark.slow
def test_threshold_keeps_manifest_rows_with_their_schema(sample, scores_df, tmp_path):
    manifest, scores = sample
    scored = scores_df[scores_df.error.isna()]
    threshold = float(np.median(scored.score))
    out = str(tmp_path / "out")
    run_filter(FilterConfig(manifest, scores, out, min_score=threshold), log=lambda *_: None)

    expected = scored[scored.score >= threshold]
    kept = read_dir(out)
    assert sorted(kept.id) == sorted(expected.id) and 0 < len(kept) < len(scored)
    # The manifest's rows and columns, exactly: no score column leaks in, the schema is the input shard's own.
    manifest_df = read_dir(manifest).set_index("id")
    pd.testing.assert_frame_equal(kept.set_index("id"), manifest_df.loc[kept.id])
    for name in os.listdir(out):
        if name.endswith(".parquet"):
            assert pq.read_schema(f"{out}/{name}").equals(pq.read_schema(f"{manifest}/{name}"), check_metadata=True)

    report = json.loads(Path(out, "_filter.json").read_text())
    assert report["rows_in"] == 11 and report["rows_kept"] == len(expected)
    assert report["rows_dropped"] == {"by_thresholds": len(scored) - len(expected), "errors": 1, "missing_scores": 0}
    assert report["thresholds"]["min_score"] == threshold
    argmax = expected[[f"p_{w}" for w in LEVELS]].to_numpy().argmax(axis=1)
    assert report["kept_per_level"] == {w: int((argmax == i).sum()) for i, w in enumerate(LEVELS)}
    quantiles = report["score_quantiles"]
    assert quantiles["input"]["q00"] == round(scored.score.min(), 4)
    assert quantiles["kept"]["q100"] == round(scored.score.max(), 4)
    assert abs(quantiles["input"]["q50"] - np.quantile(scored.score, 0.5, method="lower")) <= 1.01e-3
    assert {n: s["rows_kept"] for n, s in report["shards"].items()} == {
        n: int(expected.id.isin(read_dir(f"{manifest}/{n}").id).sum()) for n in sorted(os.listdir(manifest))
    }


def test_where_expression_and_keep_errors(sample, scores_df, tmp_path):
    manifest, scores = sample
    scored = scores_df[scores_df.error.isna()]
    cut = float(np.median(scored.p_bad + scored.p_poor))
    where = f"p_bad + p_poor < {cut!r} and media_type == 'image'"
    summary = run_filter(FilterConfig(manifest, scores, str(tmp_path / "a"), where=where), log=lambda *_: None)
    expected = scored[(scored.p_bad + scored.p_poor < cut) & (scored.media_type == "image")]
    assert 0 < len(expected) < len(scored)
    assert sorted(read_dir(str(tmp_path / "a")).id) == sorted(expected.id)
    assert summary["rows_kept"] == len(expected) and summary["thresholds"]["where"] == where

    # Above every score nothing scored passes; --keep-errors keeps the error row anyway.
    above = float(scored.score.max()) + 0.01
    cfg = FilterConfig(manifest, scores, str(tmp_path / "b"), min_score=above, keep_errors=True)
    summary = run_filter(cfg, log=lambda *_: None)
    assert list(read_dir(str(tmp_path / "b")).id) == ["missing-file"]
    assert summary["kept_errors"] == 1 and sum(summary["kept_per_level"].values()) == 0
    assert sorted(os.listdir(tmp_path / "b")) == ["_filter.json", "part-00000.parquet"]  # empty shards: no file


@pytest.mark.parametrize(
    "where, message",
    [
        ("p_bda < 0.2", "unknown column 'p_bda'"),
        ("score >= ", "invalid syntax"),
        ("p_bad + p_poor", "not true/false per row"),
        ("score > 'high'", "TypeError"),
        ("abs(score) > 3", "function calls not allowed"),
        ("error.str.startswith('x')", "not allowed"),
        ("score > @threshold", "'@' (local variables) is not allowed"),
    ],
)
def test_bad_expressions_fail_before_any_output(sample, tmp_path, where, message):
    manifest, scores = sample
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_filter(FilterConfig(manifest, scores, str(tmp_path / "out"), where=where), log=lambda *_: None)
    assert not (tmp_path / "out").exists()


def test_missing_scores_fail_unless_dropped(sample, tmp_path):
    manifest, scores = sample
    # A manifest with one shard the scoring run never saw, and one shard with a row added after scoring.
    grown = tmp_path / "manifest"
    shutil.copytree(manifest, grown)
    shutil.copy(grown / "part-00002.parquet", grown / "part-00009.parquet")
    table = pq.read_table(grown / "part-00001.parquet")
    extra = table.slice(0, 1).set_column(0, "id", pa.array(["new-row"]))
    pq.write_table(pa.concat_tables([table, extra]), grown / "part-00001.parquet")

    out = tmp_path / "out"
    with pytest.raises(FilterError, match=r"no committed score shard .* \['part-00009.parquet'\]"):
        run_filter(FilterConfig(str(grown), scores, str(out)), log=lambda *_: None)
    assert not out.exists()
    (grown / "part-00009.parquet").unlink()
    with pytest.raises(FilterError, match=r"1 manifest row\(s\) .* have no score, e.g. \['new-row'\]"):
        run_filter(FilterConfig(str(grown), scores, str(out)), log=lambda *_: None)
    assert not out.exists()  # other shards were written meanwhile, and removed again

    summary = run_filter(FilterConfig(str(grown), scores, str(out), drop_missing=True), log=lambda *_: None)
    assert summary["rows_in"] == 12 and summary["rows_dropped"]["missing_scores"] == 1
    assert summary["rows_kept"] == 10 and "new-row" not in set(read_dir(str(out)).id)


def test_manifest_rules_hold_for_the_filter_before_any_output(sample, tmp_path):
    manifest, scores = sample
    odd = tmp_path / "manifest"
    shutil.copytree(manifest, odd)
    table = pq.read_table(odd / "part-00001.parquet")
    # The user's own `score` column: `--min-score` and `--where score ...` mean the model's, so it is refused.
    pq.write_table(table.append_column("score", pa.array([5.0] * table.num_rows)), odd / "part-00001.parquet")
    out = tmp_path / "out"
    with pytest.raises(SchemaError) as err:
        run_filter(FilterConfig(str(odd), scores, str(out), min_score=3.0), log=lambda *_: None)
    assert err.value.source.endswith("part-00001.parquet") and "['score']" in str(err.value)
    assert not out.exists()

    pq.write_table(table.drop_columns(["media_type"]), odd / "part-00001.parquet")  # a manifest column missing
    with pytest.raises(SchemaError, match="part-00001.parquet: column 'media_type': missing"):
        run_filter(FilterConfig(str(odd), scores, str(out), min_score=3.0), log=lambda *_: None)
    assert not out.exists()

    pq.write_table(table, odd / "part-00001.parquet")
    (odd / "part-00002.parquet").write_bytes(b"PAR1 but no more")  # not a Parquet file
    with pytest.raises(SchemaError, match="part-00002.parquet: table: not a readable Parquet file"):
        run_filter(FilterConfig(str(odd), scores, str(out), min_score=3.0), log=lambda *_: None)
    assert not out.exists()


def test_output_is_not_overwritten_unless_asked(sample, tmp_path):
    manifest, scores = sample
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.parquet").write_bytes(b"old")
    with pytest.raises(FilterError, match="not empty; pass --overwrite"):
        run_filter(FilterConfig(manifest, scores, str(out)), log=lambda *_: None)
    run_filter(FilterConfig(manifest, scores, str(out), overwrite=True), log=lambda *_: None)
    assert not (out / "stale.parquet").exists() and (out / "_filter.json").exists()
    with pytest.raises(FilterError, match="overlaps --scores"):
        run_filter(FilterConfig(manifest, scores, scores + "/filtered"), log=lambda *_: None)


def test_filter_from_s3_to_s3(sample, scores_df, s3_bucket):
    fs, bucket = s3_bucket
    manifest, scores = sample
    fs.put(manifest, f"{bucket}/manifests/sample", recursive=True)
    fs.put(scores, f"{bucket}/scores/run1", recursive=True)  # shards, _committed/ markers and _run.json
    assert fs.exists(f"{bucket}/scores/run1/_committed/part-00001.parquet.json")

    out = f"s3://{bucket}/manifests/sample-good"
    where = "score >= 3 and p_bad < 0.5"
    summary = run_filter(
        FilterConfig(f"s3://{bucket}/manifests/sample", f"s3://{bucket}/scores/run1", out, where=where),
        log=lambda *_: None,
    )
    scored = scores_df[scores_df.error.isna()]
    expected = scored[(scored.score >= 3) & (scored.p_bad < 0.5)]
    assert sorted(read_dir(out).id) == sorted(expected.id) and summary["rows_kept"] == len(expected)
    assert json.loads(fs.cat_file(f"{bucket}/manifests/sample-good/_filter.json"))["rows_in"] == 11


def test_cli(sample, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("filter_corpus", REPO / "jobs" / "filter_corpus.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    manifest, scores = sample
    args = ["--manifest", manifest, "--scores", scores, "--output", str(tmp_path / "out")]
    assert cli.main([*args, "--where", "scroe > 3"]) == 1
    assert "unknown column 'scroe'" in capsys.readouterr().err
    assert cli.main([*args, "--min-score", "1", "--keep-errors"]) == 0
    assert json.loads((tmp_path / "out" / "_filter.json").read_text())["rows_kept"] == 11
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--min-score", "4", "--max-score", "3"])
    assert exit_.value.code == 2
