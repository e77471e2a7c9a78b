"""The offline demo: the main job end to end on embedded defaults (local Ray, local storage, tiny models).

    make demo        # = python jobs/demo.py --out demo_out

1. Builds a small real corpus: scikit-image photographs at graded distortion levels (a synthetic MOS known from the
   level) and short H.264 videos written with PyAV; writes it as a sharded Parquet manifest.
2. Builds a tiny random mPLUG-Owl2 (the Q-Align architecture) and retrains it on the corpus's synthetic MOS with the
   retraining job (Ray Train, 2 CPU workers), which writes a version to a local registry and promotes it only if its
   held-out SRCC beats the untrained model's; prints SRCC before and after.
3. Scores everything with the distributed scoring job and the registry entry (`--model <registry>/<name>`: its CURRENT),
   exactly as `ray job submit -- python jobs/score_dataset.py ...` would, and prints the scores.
4. Filters the corpus by score and writes an HTML report.
No GPU, no network. A tiny model trained for a minute on two dozen images gives scores that mean little: the demo shows
the machinery, not a scorer.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from transformers.utils import logging as hf_logging

from pipeline.corpus import build_sample_corpus
from pipeline.job import JobConfig, run
from pipeline.models.tiny import make_tiny_model
from pipeline.report import demo_tail
from pipeline.retrain import demo_retrain
from pipeline.shards import write_manifest

BANNER = "=" * 100


def print_scores(scores: str) -> None:
    table = pq.read_table(scores).to_pandas().sort_values("id")
    levels = [c for c in table.columns if c.startswith("p_")]
    table["argmax"] = table[levels].fillna(-1.0).idxmax(axis=1).str.removeprefix("p_")  # error rows: no level
    print(f"{'id':34s} {'type':5s} {'mos':>4s} {'score':>6s} {'argmax':>9s} {'frames':>6s}  error")
    for row in table.itertuples():
        failed = isinstance(row.error, str)  # pandas shows a null error as NaN
        score, level, frames = ("", "", "") if failed else (f"{row.score:6.4f}", row.argmax, f"{int(row.frames)}")
        error = row.error[:60] if failed else ""
        print(f"{row.id:34s} {row.media_type:5s} {row.mos:4.1f} {score:>6s} {level:>9s} {frames:>6s}  {error}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes (replaced)")
    args = p.parse_args()
    hf_logging.disable_progress_bar()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)

    print(f"{BANNER}\n1. sample corpus: real photographs at 5 distortion levels + real mp4 videos\n{BANNER}")
    rows = build_sample_corpus(str(out / "corpus"))
    rows.append({**rows[0], "id": "missing-file", "uri": str(out / "corpus" / "no-such-file.jpg")})  # a bad item
    manifest = str(out / "manifests" / "sample")
    write_manifest(rows, manifest, num_shards=3)
    print(f"{len(rows)} items ({sum(r['media_type'] == 'video' for r in rows)} videos) -> {manifest}/part-*.parquet")

    print(f"{BANNER}\n2. retrain a tiny random mPLUG-Owl2 (Q-Align architecture) on the synthetic MOS\n{BANNER}")
    base = str(make_tiny_model("owl2", out / "models" / "tiny-owl2"))
    trained = demo_retrain([r for r in rows if r["id"] != "missing-file"], str(out / "retrain"), base)
    outcome, srcc = trained["outcome"], trained["srcc"]
    print(f"{trained['entry']}: wrote {outcome.version}; {outcome.status.replace('_', ' ')}: {outcome.message}")
    print("SRCC: rank correlation of the model's scores with the synthetic MOS (1 same order, 0 unrelated).")
    print(f"  training items ({trained['n_train']}): {srcc['train'][0]:+.3f} -> {srcc['train'][1]:+.3f}")
    print("      how well the short run fit what it saw")
    print(f"  held-out items ({trained['n_held_out']}, photographs never trained on: {trained['held_out_photos']}):")
    print(f"      {srcc['held_out'][0]:+.3f} -> {srcc['held_out'][1]:+.3f}  whether it learned quality rather than")
    print("      the pictures; promotion looks at this figure alone")
    print("A from-scratch tiny model trained for a minute on two dozen images learns little, so promotion is usually")
    print("refused here. jobs/benchmark_training.py measures real learning on a larger synthetic set (README).")

    how = "the registry entry (its CURRENT)" if outcome.status == "promoted" else "the new version, by its path"
    print(f"{BANNER}\n3. score the corpus on local Ray with {how}\n{BANNER}")
    scores = str(out / "scores" / "sample-owl2")
    run(JobConfig(manifest=manifest, output=scores, model=trained["model"], batch_size=8, max_error_rate=0.2))
    print_scores(scores)
    print("NOTE: a tiny model trained for a minute on two dozen images: its scores mean nothing. They show that every")
    print("item went through the real pipeline (decode, preprocess, one forward pass, level probabilities, commit).")

    print(f"{BANNER}\n4. filter the corpus by score and write the report\n{BANNER}")
    report = demo_tail(manifest, scores, str(out / "curated"))
    print(f"filtered manifest: {out / 'curated' / 'filtered'}")
    print(f"report: open file://{report}")


if __name__ == "__main__":
    main()
