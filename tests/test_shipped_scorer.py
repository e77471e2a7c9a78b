"""The scorer that ships in the repository (pipeline/samples/registry/tiny-iqa): what it says it is, that `qcurate
score` falls back to it, and that the scoring job gets from it the held-out figures it records, on pictures it never
saw, ranking the heavy levels below the pristine picture as its docs say (docs/models.md)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from pipeline import registry
from pipeline.cli import parser_for
from pipeline.cli.score import configure
from pipeline.corpora.shards import write_manifest
from pipeline.samples.corpus import DEFAULT_PHOTOS, build_pair_corpus
from pipeline.samples.shipped import NOTICE, SCORER_PHOTOS, SHIPPED_SCORER, recorded_metrics
from pipeline.scoring.job import JobConfig, run

ENTRY = str(SHIPPED_SCORER)


def test_the_entry_is_a_finished_registry_version_small_enough_to_ship():
    version = registry.current_version(ENTRY)
    assert version is not None and version in registry.list_versions(ENTRY)
    assert list((SHIPPED_SCORER / version).glob("*.safetensors")), "no safetensors in the shipped version"
    assert sum(f.stat().st_size for f in SHIPPED_SCORER.rglob("*")) <= 30 * 2**20
    assert not (SHIPPED_SCORER / "_runs").exists()  # no training checkpoints in the repository


def test_it_says_what_it_was_trained_on_with_what_command_and_its_held_out_figures():
    about = registry.read_version(ENTRY, registry.current_version(ENTRY))["about"]
    assert about["command"].startswith("python jobs/train_shipped_scorer.py --seed 0")
    assert all(photo in about["trained_on"] for photo in SCORER_PHOTOS)
    assert "real photographs" in about["does_not_know"]
    held = recorded_metrics()["held_out"]
    assert held["after"]["n"] == 6 * 17 and held["after"]["srcc"] > held["before"]["srcc"]
    assert not set(SCORER_PHOTOS) & set(DEFAULT_PHOTOS)  # the held-out photographs are the demo's


def test_score_without_model_uses_the_shipped_scorer_and_says_so(capsys):
    parser = parser_for("score")
    config = configure(parser.parse_args(["--manifest", "m", "--output", "o"]), parser)
    assert config.model == ENTRY
    assert NOTICE in capsys.readouterr().err
    config = configure(parser.parse_args(["--manifest", "m", "--output", "o", "--model", "x"]), parser)
    assert config.model == "x" and NOTICE not in capsys.readouterr().err


@pytest.mark.slow
def test_the_scoring_job_reproduces_its_recorded_held_out_srcc_on_the_demo_pairs(ray_cluster, tmp_path):
    """Scored as the demo scores them (the job, whole images), the six unseen photographs' pictures rank as the
    entry's metrics.json says; and on each photograph the pristine picture outscores the worst level of blur, noise
    and pixelation."""
    pairs = build_pair_corpus(str(tmp_path / "pairs"))
    manifest = str(tmp_path / "manifest")
    write_manifest(pairs, manifest, num_shards=2)
    run(JobConfig(manifest=manifest, output=str(tmp_path / "scores"), model=ENTRY, batch_size=8))
    scores = pq.read_table(str(tmp_path / "scores")).to_pandas().set_index("id")
    assert scores["error"].isna().all()
    mos = np.array([p["mos"] for p in pairs])
    predicted = scores.loc[[p["id"] for p in pairs], "score"].to_numpy()
    srcc = stats.spearmanr(predicted, mos).statistic
    assert srcc == pytest.approx(recorded_metrics()["held_out"]["after"]["srcc"], abs=0.01)
    for photo in DEFAULT_PHOTOS:
        for kind in ("blur", "noise", "pixelate"):
            assert scores.loc[f"{photo}-copy", "score"] > scores.loc[f"{photo}-{kind}-4", "score"], (photo, kind)
