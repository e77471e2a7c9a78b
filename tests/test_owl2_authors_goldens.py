"""qcurate's scoring job against goldens made by the authors' own scoring code, unmodified (README in each folder):

- tests/goldens/qalign_video_tiny: Q-Future/Q-Align's `load_video` + `QAlignVideoScorer` on three real mp4s (10 fps,
  29.97 fps, a 1.2 s portrait clip), on the tiny mPLUG-Owl2 of ../shared/golden/owl2_tiny (or $OWL2_GOLDEN) with
  the golden's tokenizer: the frames (1 fps, whole seconds, rounded down) and the five level probabilities.
- tests/goldens/deqa_tiny: zhiyuanyou/DeQA-Score's `Scorer` (the `q-align` recipe) and its evaluation script
  `iqa_eval.py` (the `q-align-eval` recipe) on a tiny checkpoint in DeQA-Score-Mix3's published layout (pickled bf16
  shards, SentencePiece tokenizer, its CLIP-448 preprocessor) and six images of different sizes and aspect ratios,
  greyscale included.

Probabilities within 2e-4 and scores within 1e-3 (float32, CPU). The score is compared on the scale the output
shard declares, the reference's mapped onto it (Q-Align's scorer.py weights 1..0, DeQA-Score's 5..1).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.corpora.shards import write_manifest
from pipeline.infra.media import MediaOptions, load_media
from pipeline.models import owl2_family
from pipeline.models.owl2 import tokenize_prompt
from pipeline.qalign import recipes
from pipeline.qalign.levels import DEFAULT_LEVELS
from pipeline.scoring.job import JobConfig, run
from schemas.scores import ScoreColumns

REPO = Path(__file__).resolve().parents[1]
GOLDENS = REPO / "tests" / "goldens"
VIDEO, DEQA = GOLDENS / "qalign_video_tiny", GOLDENS / "deqa_tiny"
OWL2 = Path(os.environ.get("OWL2_GOLDEN") or REPO.parent / "shared" / "golden" / "owl2_tiny")
PROB_ATOL, SCORE_ATOL = 2e-4, 1e-3


def expected(folder: Path) -> dict:
    """A golden's expected.json: a missing golden is a failure, never a skip."""
    path = folder / "expected.json"
    assert path.is_file(), f"golden missing: {path} (see its README to remake it)"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def video_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint Q-Align's scorer ran: owl2_tiny's config, weights and processor with the golden's tokenizer."""
    files = [OWL2 / n for n in ("config.json", "model.safetensors", "preprocessor_config.json")]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"the owl2_tiny golden is missing (set OWL2_GOLDEN): {missing}"
    folder = tmp_path_factory.mktemp("qalign_video") / "checkpoint"
    folder.mkdir()
    for f in [*files, *(VIDEO / "tokenizer").iterdir()]:
        shutil.copyfile(f, folder / f.name)
    return folder


def score_with_job(
    rows: list[dict], model: Path, tmp_path: Path, recipe: str | None = None
) -> tuple[dict[str, dict], tuple[float, float]]:
    """Run the scoring job; its rows by id and the score range its shard declares."""
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(rows, manifest, num_shards=1)
    config = JobConfig(manifest, output, str(model), batch_size=4, max_error_rate=0.0, prompt_recipe=recipe)
    run(config)
    table = pq.read_table(Path(output) / "part-00000.parquet")
    return {r["id"]: r for r in table.to_pylist()}, ScoreColumns.of(table.schema).score_range


def check_row(row: dict, probs: list[float], unit_score: float, score_range: tuple[float, float], what: str) -> float:
    """Probabilities and score against the reference's; returns the largest probability difference."""
    assert row["error"] is None, f"{what}: {row['error']}"
    levels = ["excellent", "good", "fair", "poor", "bad"]
    diffs = [abs(row[f"p_{w}"] - p) for w, p in zip(levels, probs, strict=True)]
    assert max(diffs) <= PROB_ATOL, f"{what}: level probabilities differ by {max(diffs):.3g} > {PROB_ATOL}"
    lo, hi = score_range
    want = lo + (hi - lo) * unit_score
    assert abs(row["score"] - want) <= SCORE_ATOL, f"{what}: score {row['score']} vs the reference's {want}"
    return max(diffs)


def test_prompts_and_level_ids_are_the_references():
    """Each recipe's prompt, tokenized by qcurate (transformers 5) from the golden's tokenizer files, gives the ids
    the reference's slow SentencePiece tokenizer gave (transformers 4.36.1), and the same level ids."""
    video, deqa = expected(VIDEO), expected(DEQA)
    processor = owl2_family.load_processor(str(DEQA / deqa["checkpoint"]))  # the same tokenizer files as VIDEO's
    cases = [
        (recipes.Q_ALIGN, "video", video["prompt"], video["input_ids"], video["level_ids"]),
        (recipes.Q_ALIGN, "image", deqa["scorer_prompt"], deqa["scorer_input_ids"], deqa["level_ids"]),
        (recipes.Q_ALIGN_EVAL, "image", deqa["iqa_eval_prompt"], deqa["iqa_eval_input_ids"], deqa["level_ids"]),
    ]
    for recipe, media_type, text, ids, level_ids in cases:
        prompt = recipe.prompt("quality", media_type)
        assert owl2_family.render_prompt(processor, prompt.question, prompt.answer_prefix, 1, recipe) == text
        assert tokenize_prompt(text, processor.tokenizer) == ids, (recipe.name, media_type, text)
        assert recipe.level_ids(processor.tokenizer, prompt.answer_prefix, DEFAULT_LEVELS) == level_ids


# ------------------------------------------------------------------------------------------------------------
# Q-Align / OneAlign video


def test_video_frames_are_q_aligns():
    """qcurate's decoder takes exactly the frames Q-Align's load_video asks decord for (1 fps, whole seconds)."""
    golden = expected(VIDEO)
    assert golden["videos"], "no videos in the golden"
    for name, ref in golden["videos"].items():
        item = load_media(str(VIDEO / "videos" / name), "video", MediaOptions(sample_fps=1.0))
        assert item.frame_indices == ref["frame_indices"], name
        assert (item.num_source_frames, item.fps) == (ref["decord_num_frames"], pytest.approx(ref["decord_avg_fps"]))
        assert list(item.frames[0].shape[1::-1]) == ref["frame_size_WH"], name


@pytest.mark.slow
def test_video_scores_match_q_aligns_video_scorer(ray_cluster, video_checkpoint, tmp_path):
    golden = expected(VIDEO)
    rows = [{"id": n, "uri": str(VIDEO / "videos" / n), "media_type": "video"} for n in golden["videos"]]
    scored, score_range = score_with_job(rows, video_checkpoint, tmp_path)
    for name, ref in golden["videos"].items():
        assert scored[name]["frames"] == len(ref["frame_indices"]), name
        assert scored[name]["task"] == "quality"
        # QAlignVideoScorer's weights are 1, .75, .5, .25, 0: its score is already on 0..1.
        check_row(scored[name], ref["probs"], ref["score_scorer"], score_range, name)


# ------------------------------------------------------------------------------------------------------------
# DeQA-Score


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, path",
    [(None, "scorer"), ("q-align-eval", "iqa_eval")],  # None: the checkpoint's own (model_type mplug_owl2: q-align)
)
def test_deqa_scores_match_its_code(ray_cluster, tmp_path, recipe, path):
    golden = expected(DEQA)
    checkpoint = DEQA / golden["checkpoint"]
    assert (checkpoint / "pytorch_model.bin.index.json").is_file(), f"golden checkpoint missing: {checkpoint}"
    lo, hi = min(golden["weights"]), max(golden["weights"])
    rows = [{"id": n, "uri": str(DEQA / "images" / n), "media_type": "image"} for n in golden["images"]]
    scored, score_range = score_with_job(rows, checkpoint, tmp_path, recipe)
    assert {ref["mode"] for ref in golden["images"].values()} >= {"L", "RGB"}  # greyscale is among them
    for name, ref in golden["images"].items():
        assert scored[name]["frames"] == 1
        unit = (ref[path]["score"] - lo) / (hi - lo)  # DeQA-Score's weights are 5..1: a 1..5 score
        check_row(scored[name], ref[path]["probs"], unit, score_range, f"{name} ({path})")
