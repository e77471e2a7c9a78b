"""The offline demo: the main job end to end on embedded defaults (local Ray, local storage, tiny models).

    make demo        # = python jobs/demo.py --out demo_out

1. Builds a small real corpus: scikit-image photographs at graded distortion levels (a synthetic MOS known from the
   level) and short H.264 videos written with PyAV; writes it as a sharded Parquet manifest.
2. Retrains a tiny random LLaVA on a labelled batch with the retraining job (Ray Train, 2 CPU workers): two
   photographs at its 32 px input size, pristine and at every distortion kind and level (pipeline.training.learning,
   also CI's learning guard). It prints SRCC and level loss before and after, on the training items (it learns to
   rank them) and on a photograph held out whole; the new version is promoted only if its held-out SRCC beats the
   untrained model's.
3. Scores everything with the distributed scoring job and the registry entry (`--model <registry>/<name>`: its CURRENT),
   exactly as `ray job submit -- python jobs/score_dataset.py ...` would, and prints the scores.
4. Filters the corpus by score and writes an HTML report.
5. Scores the sample's photographs as full-reference pairs (every distortion against its lossless original) with
   PSNR, SSIM and MS-SSIM, and prints each one's SRCC and PLCC against the synthetic MOS: numbers that mean
   something without any downloaded weights.
No GPU, no network. A tiny model trained for a minute on 32 px pictures of two photographs gives the corpus's larger
pictures scores that mean little: the LMM steps show the machinery and that training learns, not a scorer.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.corpora.shards import write_manifest
from pipeline.curation.report import demo_tail
from pipeline.infra.console import console, session
from pipeline.samples.corpus import build_pair_corpus, build_sample_corpus
from pipeline.scoring.job import JobConfig, run
from pipeline.training.evaluation import correlations
from pipeline.training.learning import HELD_OUT_PHOTOS, RECIPE, TRAIN_PHOTOS, learn

BANNER = "=" * 100
say = console.say  # print() would go to the log file: the demo runs quiet, like the jobs


def print_scores(scores: str) -> None:
    table = pq.read_table(scores).to_pandas().sort_values("id")
    levels = [c for c in table.columns if c.startswith("p_")]
    table["argmax"] = table[levels].fillna(-1.0).idxmax(axis=1).str.removeprefix("p_")  # error rows: no level
    say(f"{'id':34s} {'type':5s} {'mos':>4s} {'score':>6s} {'argmax':>9s} {'frames':>6s}  error")
    for row in table.itertuples():
        failed = isinstance(row.error, str)  # pandas shows a null error as NaN
        score, level, frames = ("", "", "") if failed else (f"{row.score:6.4f}", row.argmax, f"{int(row.frames)}")
        error = row.error[:60] if failed else ""
        say(f"{row.id:34s} {row.media_type:5s} {row.mos:4.1f} {score:>6s} {level:>9s} {frames:>6s}  {error}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes (replaced)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and transformers' output too")
    args = p.parse_args()
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with session("demo", str(out), args.verbose):
        story(out)


def story(out: Path) -> None:

    say(f"{BANNER}\n1. sample corpus: real photographs at 5 distortion levels + real mp4 videos\n{BANNER}")
    rows = build_sample_corpus(str(out / "corpus"))
    rows.append({**rows[0], "id": "missing-file", "uri": str(out / "corpus" / "no-such-file.jpg")})  # a bad item
    manifest = str(out / "manifests" / "sample")
    write_manifest(rows, manifest, num_shards=3)
    say(f"{len(rows)} items ({sum(r['media_type'] == 'video' for r in rows)} videos) -> {manifest}/part-*.parquet")

    say(f"{BANNER}\n2. retrain a tiny random LLaVA on a labelled batch (synthetic MOS) and watch it learn\n{BANNER}")
    trained = learn(str(out / "retrain"))
    outcome = trained["outcome"]
    held_out, n_held_out = ", ".join(HELD_OUT_PHOTOS), outcome.metrics["held_out"]["after"]["n"]
    say("SRCC: rank correlation of the model's scores with the synthetic MOS (1 same order, 0 unrelated). The batch is")
    say(f"{' and '.join(TRAIN_PHOTOS)} at the model's {RECIPE.crop} px, pristine and every distortion at every level;")
    say(f"the training SRCC says how well the run learned to rank what it saw, the held-out one ({held_out}, never")
    say("trained on) whether that carries over to other content. Promotion looks at held-out SRCC alone; on")
    say(f"{n_held_out} held-out items, a difference of a few hundredths either way is luck.")

    how = "the registry entry (its CURRENT)" if outcome.status == "promoted" else "the new version, by its path"
    say(f"{BANNER}\n3. score the corpus on local Ray with {how}\n{BANNER}")
    scores = str(out / "scores" / "sample-llava")
    run(JobConfig(manifest=manifest, output=scores, model=trained["model"], batch_size=8, max_error_rate=0.2))
    print_scores(scores)
    say("NOTE: a tiny model trained for a minute on 32 px pictures of two photographs: on these larger pictures its")
    say("scores mean little. They show that every item went through the real pipeline (decode, preprocess, one")
    say("forward pass, level probabilities, commit).")

    say(f"{BANNER}\n4. filter the corpus by score and write the report\n{BANNER}")
    report = demo_tail(manifest, scores, str(out / "curated"))
    say(f"filtered manifest: {out / 'curated' / 'filtered'}")
    say(f"report: open file://{report}")

    say(f"{BANNER}\n5. full-reference: the photographs against their originals, with PSNR, SSIM and MS-SSIM\n{BANNER}")
    pairs = build_pair_corpus(str(out / "pairs"))
    pair_manifest = str(out / "manifests" / "pairs")
    write_manifest(pairs, pair_manifest, num_shards=2)
    say(f"{len(pairs)} pairs (4 distortion kinds x 4 levels + a pixel copy, of each of 6 photographs)")
    results = {}
    for scorer in ("psnr", "ssim", "ms-ssim"):
        output = str(out / "scores" / f"pairs-{scorer}")
        run(JobConfig(manifest=pair_manifest, output=output, scorer=scorer, batch_size=8))
        table = pq.read_table(output).to_pandas()
        results[scorer] = correlations(table["fr_score"].to_numpy(), table["mos"].to_numpy())
    say(f"{'scorer':8s} {'SRCC':>6s} {'PLCC':>6s}  (against the synthetic MOS, over {len(pairs)} pairs)")
    for scorer, r in results.items():
        say(f"{scorer:8s} {r['srcc']:6.3f} {r['plcc']:6.3f}")
    say("Each metric ranks the levels of one distortion in order; across kinds they disagree with the MOS, which")
    say("rates every kind alike at a level. PSNR's PLCC is lowest: the pixel copies sit at its 100 dB cap.")


if __name__ == "__main__":
    main()
