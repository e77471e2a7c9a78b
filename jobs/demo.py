"""The offline demo: the main job end to end on embedded defaults (local Ray, local storage, tiny models).

    make demo        # = python jobs/demo.py --out demo_out

1. Builds a small real corpus: scikit-image photographs at graded distortion levels (a synthetic MOS known from the
   level) and short H.264 videos written with PyAV; writes it as a sharded Parquet manifest.
2. Builds a tiny random mPLUG-Owl2 (the Q-Align architecture) and scores everything with the distributed scoring job,
   exactly as `ray job submit -- python jobs/score_dataset.py ...` would, and prints the scores.
3. Filters the corpus by score and writes an HTML report.
No GPU, no network. A tiny RANDOM model gives MEANINGLESS scores: the demo shows the machinery, not a scorer.
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

    print(f"{BANNER}\n2. score with a tiny RANDOM mPLUG-Owl2 (Q-Align architecture) on local Ray\n{BANNER}")
    model = str(make_tiny_model("owl2", out / "models" / "tiny-owl2"))
    scores = str(out / "scores" / "sample-owl2")
    run(JobConfig(manifest=manifest, output=scores, model=model, batch_size=8, max_error_rate=0.2))
    print_scores(scores)
    print("NOTE: these scores come from a tiny model with RANDOM weights: they are meaningless. They show that every")
    print("item went through the real pipeline (decode, preprocess, one forward pass, level probabilities, commit).")

    print(f"{BANNER}\n3. filter the corpus by score and write the report\n{BANNER}")
    report = demo_tail(manifest, scores, str(out / "curated"))
    print(f"filtered manifest: {out / 'curated' / 'filtered'}")
    print(f"report: open file://{report}")


if __name__ == "__main__":
    main()
