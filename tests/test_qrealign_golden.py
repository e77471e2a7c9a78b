"""qcurate's scoring job against the Q-ReAlign toolkit's own scorer, run unmodified on a tiny Qwen3.5 checkpoint in
the published layout (tests/goldens/qrealign_tiny: how it was made is in its README).

Every case of the golden's expected.json is scored by the scoring job (manifest -> Ray -> score shards), float32 on
CPU, with the recipe the checkpoint picks by itself (q-realign, from model_type qwen3_5), and held to the toolkit's
five level probabilities (2e-4) and score (1e-3, on the toolkit's 0..1 scale).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.corpora.shards import write_manifest
from pipeline.scoring.job import JobConfig, run
from schemas import ScoreColumns
from tests.test_job import read_output

GOLDEN = Path(__file__).parent / "goldens" / "qrealign_tiny"
PROBS_ATOL, SCORE_ATOL = 2e-4, 1e-3
# the toolkit's task names -> qcurate's task and media type
TASKS = {"iqa": ("quality", "image"), "iaa": ("aesthetics", "image"), "vqa": ("quality", "video")}


def expected() -> dict:
    """The golden's numbers; a missing golden folder fails the test (never a skip)."""
    path = GOLDEN / "expected.json"
    assert path.is_file(), f"the Q-ReAlign golden is missing: {path} (see tests/goldens/qrealign_tiny/README.md)"
    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task", ["quality", "aesthetics"])
def test_scoring_job_gives_the_toolkits_numbers(ray_cluster, task, tmp_path):
    gold = expected()
    cases = {c["media"]: c for c in gold["cases"].values() if TASKS[c["task"]][0] == task}
    rows = [
        {"id": media, "uri": str(GOLDEN / "inputs" / media), "media_type": TASKS[c["task"]][1]}
        for media, c in cases.items()
    ]
    assert {r["media_type"] for r in rows} == ({"image", "video"} if task == "quality" else {"image"})
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(rows, manifest, num_shards=1)
    summary = run(JobConfig(manifest, output, str(GOLDEN / "model"), task, batch_size=4, max_error_rate=0.0))
    assert summary["prompt_recipe"] == "q-realign" and summary["errors"] == 0

    # the score's range is the recipe's (the toolkit's 0..1), in the shard's metadata for the filter and the report
    columns = ScoreColumns.of(pq.read_schema(Path(output) / "part-00000.parquet"))
    assert columns.score_range == (0.0, 1.0)
    worst_probs, worst_score = 0.0, 0.0
    for row in read_output(output)["part-00000.parquet"]:
        case = cases[row["id"]]
        got = np.array([row[f"p_{w}"] for w in gold["levels"]])
        want = np.array([case["probs"][w] for w in gold["levels"]])
        assert np.abs(got - want).max() <= PROBS_ATOL, (row["id"], got, want)
        assert abs(row["score"] - case["score"]) <= SCORE_ATOL, (row["id"], row["score"], case["score"])
        assert row["frames"] == len(case["image_grid_thw"])  # 1 for an image, 8 for every video (repeats included)
        worst_probs = max(worst_probs, float(np.abs(got - want).max()))
        worst_score = max(worst_score, abs(row["score"] - case["score"]))
    print(f"q-realign {task}: max |dp| {worst_probs:.2e}, max |dscore| {worst_score:.2e} over {len(cases)} cases")


def test_the_golden_is_the_one_its_readme_describes():
    """The files the toolkit was run on are the files committed (expected.json records their sha256)."""
    import hashlib

    gold = expected()
    for name, digest in gold["files"].items():
        assert hashlib.sha256((GOLDEN / name).read_bytes()).hexdigest() == digest, name
    assert len(gold["cases"]) == 14 and gold["weights"] == [1.0, 0.75, 0.5, 0.25, 0.0]
