"""The HTML report of a real scoring run: its contents, its thumbnails, the CLI, the demo's last step, and how it
looks in a real browser (headless Chromium: skipped where it is not installed; CI installs it)."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_curation import read_dir, scored_sample  # the same scored sample, built once per session

from pipeline.curation.report import DROPPED_COLOUR, KEPT_COLOUR, THUMB_MEDIA, THUMB_PX, demo_tail, write_report
from pipeline.infra.media import load_media

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample(ray_cluster, tiny_models, tmp_path_factory) -> tuple[str, str]:
    return scored_sample(tmp_path_factory.getbasetemp() / "scored-sample", tiny_models["llava"])


@pytest.fixture(scope="module")
def report(sample, tmp_path_factory) -> tuple[Path, float]:
    """The report of the sample with a threshold at the median score: (index.html, threshold)."""
    manifest, scores = sample
    df = read_dir(scores)
    threshold = float(np.median(df[df.error.isna()].score))
    path = write_report(scores, str(tmp_path_factory.mktemp("report")), manifest=manifest, min_score=threshold)
    return Path(path), threshold


def data_uris(page: str, kind: str) -> list[Image.Image]:
    found = re.findall(rf'src="data:image/{kind};base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


@pytest.mark.slow
def test_report_shows_plots_counts_and_thumbnails(sample, report):
    path, threshold = report
    page = path.read_text()
    df = read_dir(sample[1])
    scored = df[df.error.isna()]

    plots = data_uris(page, "png")
    assert len(plots) == 3 and all(p.size[0] >= 500 and p.size[1] >= 300 for p in plots)
    thumbs = data_uris(page, "jpeg")
    assert len(thumbs) == 2 * min(8, len(scored))
    assert all(max(t.size) <= THUMB_PX for t in thumbs) and any(max(t.size) == THUMB_PX for t in thumbs)
    # Self-contained: nothing to fetch, nothing to run.
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "<script" not in page and "<link" not in page

    kept = int((scored.score >= threshold).sum())
    assert f"kept {kept}</span> of {len(df)} rows" in page
    assert f"{len(scored) - kept} scored below {threshold:g}, 1 with errors" in page
    assert "<td>not_found</td><td>1</td>" in page
    assert f"<td>mean score</td><td>{scored.score.mean():.3f}</td>" in page
    lowest = scored.sort_values(["score", "id"]).id.iloc[0]
    assert page.index(f"<div>{lowest}") < page.index("Highest scored")
    # Each thumbnail says whether the threshold keeps it.
    shown = [
        scored.sort_values(["score", "id"]).head(8),
        scored.assign(neg=-scored.score).sort_values(["neg", "id"]).head(8),
    ]
    assert page.count('class="score kept"') == sum(int((s.score >= threshold).sum()) for s in shown)
    assert "source astronaut" in page and "mos 5.00" in page  # caption columns carried by the score rows


def test_video_thumbnail_is_its_middle_frame(sample, report):
    page = report[0].read_text()
    df = read_dir(sample[1])
    video = df[df.media_type == "video"].iloc[0]
    frames = load_media(video.uri, "video", THUMB_MEDIA).frames
    assert len(frames) == 3

    # The thumbnail right before the video's caption, compared with every sampled frame at its size.
    at = page.index(f"<div>{video.id} (video, middle frame)")
    uri = page.rindex('src="data:image/jpeg;base64,', 0, at)
    thumb = data_uris(page[uri : at + 1], "jpeg")[0]
    shown = np.asarray(thumb.convert("RGB"), np.float64)
    errors = [np.abs(np.asarray(Image.fromarray(f).resize(thumb.size), np.float64) - shown).mean() for f in frames]
    assert int(np.argmin(errors)) == 1, errors


def test_report_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None and os.environ.get("CI") == "true":
        pytest.fail("chromium is missing on CI: .ci/run installs it so that this test always runs there")
    if chromium is None:
        pytest.skip("chromium not installed (CI installs Debian's chromium package; apt-get install chromium)")
    shot = tmp_path / "shot.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
        report[0].as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    assert pixels.shape == (2000, 1280, 3)

    def near(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=2) <= 12).sum())

    # The plots' bars (kept colour), the bars under the threshold, and photos (many colours) were all drawn.
    assert near(KEPT_COLOUR) > 20_000, near(KEPT_COLOUR)
    assert near(DROPPED_COLOUR) > 1_000, near(DROPPED_COLOUR)
    assert (pixels.min(axis=2) < 235).mean() > 0.10  # a blank page is ~0
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5_000  # text and flat plots alone give far fewer


def test_cli_and_demo_tail(sample, tmp_path, capsys):
    manifest, scores = sample
    spec = importlib.util.spec_from_file_location("report_cli", REPO / "jobs" / "report.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--scores", scores, "--out", str(tmp_path / "cli"), "--thumbnails", "2"]) == 0
    assert f"open file://{tmp_path / 'cli' / 'index.html'}" in capsys.readouterr().out
    assert len(data_uris((tmp_path / "cli" / "index.html").read_text(), "jpeg")) == 4
    assert cli.main(["--scores", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    assert "no committed score shards" in capsys.readouterr().err

    path = demo_tail(manifest, scores, str(tmp_path / "demo"))
    summary = json.loads((tmp_path / "demo" / "filtered" / "_filter.json").read_text())
    df = read_dir(scores)
    scored = df[df.error.isna()]
    assert abs(summary["thresholds"]["min_score"] - np.median(scored.score)) < 2e-3
    assert 0 < summary["rows_kept"] < len(scored)
    assert f"kept {summary['rows_kept']}</span>" in Path(path).read_text()  # the report agrees with the filter
