"""Full-reference scoring end to end: PSNR, PSNR-Y, SSIM, MS-SSIM and a tiny VTAMIQ through the real scoring job on Ray,
on real photographs and their lossless references; the error kinds of pairs that cannot be compared; filtering and
the report on full-reference outputs; and the seam itself (the callers name no kind of scorer)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline import scorers
from pipeline.corpora.shards import write_manifest
from pipeline.curation.filter import FilterConfig, FilterError, run_filter
from pipeline.curation.report import write_report
from pipeline.infra.media import MediaError, MediaOptions
from pipeline.models.vtamiq import VTAMIQ, build_tiny, collate, prepare_pair
from pipeline.samples.corpus import build_pair_corpus, build_sample_corpus
from pipeline.scorers import ScorerArgs
from pipeline.scorers.classical import METRICS
from pipeline.scoring.job import JobConfig, JobError, run
from schemas import SchemaError, ScoreColumns, validate_scores


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict:
    """Pairs of two photographs (every kind at levels 2 and 4, plus a pixel copy) and one row of each error kind."""
    root = tmp_path_factory.mktemp("pairs")
    rows = build_pair_corpus(str(root), photos=("astronaut", "chelsea"), levels=(0, 2, 4))
    good = rows[1]
    (root / "text.png").write_text("not an image")
    half = np.asarray(Image.open(good["uri"]))[::2, ::2]
    Image.fromarray(half).save(root / "half.png")
    Image.fromarray(half[:100, :100]).save(root / "small.png")
    video = build_sample_corpus(str(root / "sample"), photos=("astronaut",), levels=(0,), n_videos=1)[-1]
    bad = {
        "no-ref": {"ref_uri": None},
        "empty-ref": {"ref_uri": ""},
        "ref-missing": {"ref_uri": str(root / "nope.png")},
        "ref-not-an-image": {"ref_uri": str(root / "text.png")},
        "ref-other-size": {"ref_uri": str(root / "half.png")},
        "video": {"uri": video["uri"], "media_type": "video"},
        "small": {"uri": str(root / "small.png"), "ref_uri": str(root / "small.png")},
    }
    rows += [{**good, "id": name, **change} for name, change in bad.items()]
    manifest = str(root / "manifest")
    write_manifest(rows, manifest, num_shards=2)
    return {"root": root, "rows": rows, "manifest": manifest, "vtamiq": build_tiny(str(root / "vtamiq"))}


def scored(output: str) -> dict[str, dict]:
    tables = [pq.read_table(p) for p in sorted(Path(output).glob("part-*.parquet"))]
    for table in tables:
        validate_scores(table, "shard", ScoreColumns.of(table.schema))
    return {row["id"]: row for table in tables for row in table.to_pylist()}


def fr_config(pairs: dict, output: str, scorer: str, **kw) -> JobConfig:
    return JobConfig(pairs["manifest"], output, scorer=scorer, batch_size=4, max_error_rate=0.5, **kw)


@pytest.mark.slow
def test_classical_metrics_score_pairs_and_name_what_cannot_be_compared(ray_cluster, pairs, tmp_path):
    outputs = {s: str(tmp_path / s) for s in ("psnr", "psnr-y", "ssim", "ms-ssim")}
    for scorer, output in outputs.items():
        summary = run(fr_config(pairs, output, scorer))
        assert summary["scorer"] == scorer and summary["rows"] == len(pairs["rows"])
    psnr, psnr_y, ssim, ms = (scored(outputs[s]) for s in ("psnr", "psnr-y", "ssim", "ms-ssim"))

    errors = {i: (r["error"] or "").split(":")[0] for i, r in psnr.items() if r["error"]}
    assert errors == {
        "no-ref": "no_reference",
        "empty-ref": "no_reference",
        "ref-missing": "reference_not_found",
        "ref-not-an-image": "reference_decode_error",
        "ref-other-size": "reference_size_mismatch",
        "video": "video_not_supported",
    }
    assert "small" not in errors and ms["small"]["error"].startswith("too_small: ")  # MS-SSIM needs 176 px a side
    assert "reference_size_mismatch" in psnr["ref-other-size"]["error"] and "160x" in psnr["ref-other-size"]["error"]

    for row in [r for r in pairs["rows"] if r["id"] in psnr and not psnr[r["id"]]["error"] and r["id"] != "small"]:
        ref, item = (np.asarray(Image.open(row[k]).convert("RGB")) for k in ("ref_uri", "uri"))
        out = psnr[row["id"]]
        # the psnr column (the report's score-against-PSNR axis) is over RGB, the ssim column on MATLAB rgb2gray
        assert out["fr_score"] == out["psnr"] == pytest.approx(METRICS["psnr"](ref, item), abs=1e-9)
        assert psnr_y[row["id"]]["fr_score"] == pytest.approx(METRICS["psnr-y"](ref, item), abs=1e-9)
        assert ssim[row["id"]]["fr_score"] == pytest.approx(METRICS["ssim"](ref, item), abs=1e-9)
        assert ms[row["id"]]["fr_score"] == pytest.approx(METRICS["ms-ssim"](ref, item), abs=1e-9)
        assert out["ssim"] == pytest.approx(ssim[row["id"]]["fr_score"], abs=1e-12)
        assert psnr_y[row["id"]]["psnr"] == out["psnr"]
        assert out["model"] == "psnr" and out["model_revision"].startswith("fidelity/v2: PSNR over RGB")
    copy = psnr["astronaut-copy"]
    assert (copy["fr_score"], copy["ssim"], ms["astronaut-copy"]["fr_score"]) == (100.0, 1.0, pytest.approx(1.0))
    # every kind degrades monotonically with its level, on every metric
    for kind in ("blur", "noise", "jpeg", "pixelate"):
        for metric in (psnr, psnr_y, ssim, ms):
            levels = [metric[f"astronaut-{kind}-{lv}"]["fr_score"] for lv in (2, 4)]
            assert levels[0] > levels[1], (kind, levels)

    # one output holds one scorer's scores
    with pytest.raises(JobError, match="scorer='psnr', this run has 'ssim'"):
        run(fr_config(pairs, outputs["psnr"], "ssim"))


def test_a_manifest_without_ref_uri_fails_before_scoring_naming_shard_and_column(ray_cluster, pairs, tmp_path):
    rows = [{k: v for k, v in r.items() if k != "ref_uri"} for r in pairs["rows"][:4]]
    write_manifest(rows, str(tmp_path / "manifest"), num_shards=1)
    with pytest.raises(SchemaError, match=r"part-00000\.parquet: column 'ref_uri': missing"):
        run(JobConfig(str(tmp_path / "manifest"), str(tmp_path / "out"), scorer="psnr"))
    assert not list((tmp_path / "out").glob("part-*.parquet"))
    with pytest.raises(JobError, match="takes no --model"):
        run(JobConfig(str(tmp_path / "manifest"), str(tmp_path / "out"), pairs["vtamiq"], scorer="psnr"))


def test_scores_of_the_luma_definitions_do_not_mix_with_the_new_ones(tmp_path):
    """An output written before PSNR went to RGB (its _run.json from then) refuses a rerun, naming both definitions;
    the check runs before Ray starts."""
    output = tmp_path / "psnr"
    output.mkdir()
    old = "fidelity/v1: BT.601 luma; SSIM Gaussian 11x11 sigma 1.5, K 0.01/0.03; MS-SSIM 5 scales"
    (output / "_run.json").write_text(json.dumps({"scorer": "psnr", "model": "psnr", "model_revision": old}))
    with pytest.raises(JobError) as refused:
        run(JobConfig(str(tmp_path / "manifest"), str(output), scorer="psnr"))
    message = str(refused.value)
    assert "model_revision='fidelity/v1: BT.601 luma" in message
    assert "'fidelity/v2: PSNR over RGB, peak 255 (MATLAB psnr, scikit-image); beside it" in message
    # each kind names its own definition
    revisions = {name: scorers.create(name, ScorerArgs()).revision for name in METRICS}
    assert len(set(revisions.values())) == len(METRICS)
    assert "BT.601 studio-range Y" in revisions["psnr-y"] and "ssim_index.m" in revisions["ssim"]


def test_a_pair_smaller_than_the_ssim_window_is_too_small_for_every_classical_kind(tmp_path):
    """Every classical kind writes an ssim column, whose 11-px window does not fit an 8x8 pair: a row error kind."""
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "tiny.png")
    tiny = str(tmp_path / "tiny.png")
    row = {"id": "tiny", "uri": tiny, "ref_uri": tiny, "media_type": "image"}
    for name in METRICS:
        with pytest.raises(MediaError) as error:
            scorers.create(name, ScorerArgs()).preparer(MediaOptions())(row)
        assert error.value.kind == "too_small" and "8x8" in error.value.message, name


@pytest.mark.slow
def test_vtamiq_scores_equal_the_model_on_its_deterministic_patch_grid(ray_cluster, pairs, tmp_path):
    output = str(tmp_path / "vtamiq")
    run(fr_config(pairs, output, "vtamiq", model=pairs["vtamiq"]))
    out = scored(output)
    model = VTAMIQ.load(pairs["vtamiq"])
    rows = [r for r in pairs["rows"] if not out[r["id"]]["error"]]
    assert len(rows) == len(pairs["rows"]) - 6  # the six pairs that cannot be compared
    prepared = [
        prepare_pair(*(np.asarray(Image.open(r[k]).convert("RGB")) for k in ("ref_uri", "uri")), model.config, seed=0)
        for r in rows
    ]
    batch = collate(prepared)
    with torch.no_grad():
        expected = model(batch["ref"], batch["dist"], batch["positions"]).clamp(0, 1).numpy()
    got = np.array([out[r["id"]]["fr_score"] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)  # batches of 4 in the job, one batch here
    assert len(set(np.round(got, 6))) > 1  # not a constant
    assert {out[r["id"]]["model_revision"] for r in rows} == {out[rows[0]["id"]]["model_revision"]}

    again = str(tmp_path / "again")
    run(fr_config(pairs, again, "vtamiq", model=pairs["vtamiq"]))
    assert {i: r["fr_score"] for i, r in scored(again).items()} == {i: r["fr_score"] for i, r in out.items()}


@pytest.mark.slow
def test_filter_and_report_on_full_reference_scores(ray_cluster, pairs, tmp_path):
    scores = str(tmp_path / "ms-ssim")
    run(fr_config(pairs, scores, "ms-ssim"))
    out = scored(scores)

    kept = run_filter(FilterConfig(pairs["manifest"], scores, str(tmp_path / "good"), min_score=0.9))
    expected = {i for i, r in out.items() if r["error"] is None and r["fr_score"] >= 0.9}
    got = {r["id"] for p in (tmp_path / "good").glob("part-*.parquet") for r in pq.read_table(p).to_pylist()}
    assert got == expected and 0 < len(got) < len(out)
    assert kept["thresholds"]["column"] == "fr_score" and kept["kept_per_level"] == {}

    by_psnr = run_filter(FilterConfig(pairs["manifest"], scores, str(tmp_path / "sharp"), min_score=30, column="psnr"))
    got = {r["id"] for p in (tmp_path / "sharp").glob("part-*.parquet") for r in pq.read_table(p).to_pylist()}
    assert got == {i for i, r in out.items() if r["error"] is None and r["psnr"] >= 30}
    assert by_psnr["score_quantiles"]["input"]["q100"] == 100.0  # the pixel copies, at PSNR's cap
    with pytest.raises(FilterError, match="--column 'p_good'.*\\['fr_score', 'psnr', 'ssim'\\]"):
        run_filter(FilterConfig(pairs["manifest"], scores, str(tmp_path / "x"), min_score=1, column="p_good"))

    page = Path(write_report(scores, str(tmp_path / "report"), min_score=0.9)).read_text()
    assert 'id="psnr"' in page and 'id="levels"' not in page  # score against PSNR; no level panels
    assert "ms-ssim: ms-ssim @ fidelity/v2: MS-SSIM as msssim.m (Wang 2003) on MATLAB rgb2gray" in page
    assert 'alt="score against PSNR over RGB"' in page
    # the worst pairs side by side: the reference's thumbnail, then the distorted one
    worst = min((r for r in out.values() if r["error"] is None), key=lambda r: r["fr_score"])
    pair = re.search(rf'<div class="pair"><img src="data:image/jpeg[^"]+" alt="reference of {worst["id"]}">', page)
    assert pair, "the worst pair is not shown as reference | distorted"


def test_the_callers_of_the_seam_name_no_kind_of_scorer():
    """The job, the filter, the report and the evaluation use only the protocol: adding a third kind of scorer is
    one new file in pipeline/scorers (and its name in KINDS)."""
    root = Path(__file__).parent.parent / "pipeline"
    callers = ["scoring/" + f.name for f in (root / "scoring").glob("*.py")]
    for name in [*callers, "curation/filter.py", "curation/report.py", "training/evaluation.py"]:
        code = (root / name).read_text()
        for kind in ("ms-ssim", "ms_ssim", "vtamiq", "VTAMIQ", "LevelScorer", "ClassicalMetric", "Preprocessor"):
            assert not re.search(rf'["\']{kind}["\']|\b{kind}\b\(|import {kind}', code), (name, kind)


def test_the_score_command_takes_a_scorer_and_needs_a_model_only_for_vtamiq(capsys):
    from pipeline import cli

    parser = cli.parser_for("score")
    base = ["--manifest", "m", "--output", "o"]
    config = cli.command("score").configure(parser.parse_args([*base, "--scorer", "ms-ssim"]), parser)
    assert (config.scorer, config.model) == ("ms-ssim", None)
    with pytest.raises(SystemExit) as exit_:
        cli.command("score").configure(parser.parse_args([*base, "--scorer", "vtamiq"]), parser)
    assert exit_.value.code == 2 and "--scorer vtamiq needs --model" in capsys.readouterr().err
    # the LMM kind falls back to the shipped scorer (tests/test_shipped_scorer.py)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--scorer", "lpips"])
    assert "invalid choice: 'lpips'" in capsys.readouterr().err
