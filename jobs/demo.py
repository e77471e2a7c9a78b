"""The offline demo: the main job end to end on embedded defaults (local Ray, local storage, the shipped scorer).

    make demo        # = python jobs/demo.py --out demo_out

1. Builds a small real corpus: scikit-image photographs at graded distortion levels (a synthetic MOS known from the
   level) and short H.264 videos written with PyAV; writes it as a sharded Parquet manifest.
2. Scores everything with the distributed scoring job and the scorer that ships with qcurate (tiny-iqa, a tiny
   Qwen3.5 trained by jobs/train_shipped_scorer.py on other pictures), exactly as
   `ray job submit -- python jobs/score_dataset.py ...` would, and prints the scores.
3. Filters the corpus by score and writes an HTML report.
4. Scores the same photographs as full-reference pairs (every distortion against its lossless original) with PSNR,
   SSIM and MS-SSIM, and the distorted pictures alone with the shipped scorer, and prints each one's SRCC against the
   synthetic MOS per distortion kind, side by side.
5. Folds the corpus's labels into the shipped scorer with the retraining job (Ray Train, 2 CPU workers), which writes
   a new version and promotes it only if its held-out SRCC beats its parent's.
No GPU, no network. The shipped scorer knows four synthetic distortions of a few dozen photographs, not the quality
of real photographs: real work needs a real checkpoint (docs/checkpoints.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipeline import registry
from pipeline.corpora.shards import write_manifest
from pipeline.curation.report import demo_tail
from pipeline.infra.console import console, session
from pipeline.samples.corpus import DISTORTIONS, build_pair_corpus, build_sample_corpus
from pipeline.samples.shipped import SHIPPED_SCORER, recorded_metrics
from pipeline.samples.synthetic import label_row, write_label_shard
from pipeline.scoring.job import JobConfig, run
from pipeline.training.evaluation import correlations
from pipeline.training.lmm import Recipe, Scaling
from pipeline.training.retrain import RetrainConfig, retrain

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

    say(f"{BANNER}\n2. score the corpus on local Ray with the shipped scorer ({SHIPPED_SCORER.name})\n{BANNER}")
    scores = str(out / "scores" / "sample")
    run(JobConfig(manifest=manifest, output=scores, model=str(SHIPPED_SCORER), batch_size=8, max_error_rate=0.2))
    print_scores(scores)
    n, srcc = (recorded_metrics()["held_out"]["after"][key] for key in ("n", "srcc"))
    say("Read each photograph from pristine to level 4. The scorer never saw these photographs; it knows four")
    say(f"synthetic distortions only. On the {n} pairs of step 4 its SRCC is {srcc:.3f} (the goal was 0.8).")
    say("Real work needs a real checkpoint (docs/checkpoints.md).")

    say(f"{BANNER}\n3. filter the corpus by score and write the report\n{BANNER}")
    report = demo_tail(manifest, scores, str(out / "curated"))
    say(f"filtered manifest: {out / 'curated' / 'filtered'}")
    say(f"report: open file://{report}")

    say(f"{BANNER}\n4. the same photographs as pairs: PSNR, SSIM and MS-SSIM beside the shipped scorer\n{BANNER}")
    pairs = build_pair_corpus(str(out / "pairs"))
    pair_manifest = str(out / "manifests" / "pairs")
    write_manifest(pairs, pair_manifest, num_shards=2)
    say(f"{len(pairs)} pairs (4 distortion kinds x 4 levels + a pixel copy, of each of 6 photographs)")
    columns = {}
    for scorer in ("psnr", "ssim", "ms-ssim"):
        output = str(out / "scores" / f"pairs-{scorer}")
        run(JobConfig(manifest=pair_manifest, output=output, scorer=scorer, batch_size=8))
        columns[scorer] = pq.read_table(output).to_pandas().set_index("id")["fr_score"]
    output = str(out / "scores" / f"pairs-{SHIPPED_SCORER.name}")
    run(JobConfig(manifest=pair_manifest, output=output, model=str(SHIPPED_SCORER), batch_size=8))
    columns[SHIPPED_SCORER.name] = pq.read_table(output).to_pandas().set_index("id")["score"]
    print_kind_table(pairs, columns)

    say(f"{BANNER}\n5. retrain: fold the corpus's labels into the shipped scorer, promote only if better\n{BANNER}")
    trained = fold_in([r for r in rows if r["id"] != "missing-file"], str(out / "retrain"), str(SHIPPED_SCORER))
    outcome = trained["outcome"]
    say("SRCC against the synthetic MOS before and after, on the training items and on the held-out items")
    say(f"(photographs not trained on in this run: {', '.join(trained['held_out'])}). Promotion looks at")
    say(f"held-out SRCC alone: {outcome.status} ({outcome.message}).")
    if outcome.status == "promoted":
        say(f"The new version is the entry's CURRENT: `--model {trained['entry']}` scores with it.")
    else:
        say(f"The entry {trained['entry']} has no CURRENT: the shipped scorer stays the one to score with.")


def print_kind_table(pairs: list[dict], columns: dict) -> None:
    """SRCC of each scorer against the MOS, per distortion kind (its four levels and the pixel copy of each
    photograph) and over all pairs."""
    table = pd.DataFrame(pairs).set_index("id")
    for name, values in columns.items():
        table[name] = values
    copies = table["level"] == 0
    say(f"SRCC against the synthetic MOS ({len(table.source.unique())} photographs; each kind with the pixel copies)")
    say(f"{'kind':10s} {'n':>4s} " + " ".join(f"{name:>9s}" for name in columns))
    groups = {kind: table[(table["distortion"] == kind) | copies] for kind in DISTORTIONS}
    for kind, rows in {**groups, "all": table}.items():
        srcc = (correlations(rows[name].to_numpy(), rows["mos"].to_numpy())["srcc"] for name in columns)
        say(f"{kind:10s} {len(rows):4d} " + " ".join(f"{value:9.3f}" for value in srcc))
    say("PSNR, SSIM and MS-SSIM compare each picture with its original; the scorer sees the distorted picture alone.")
    say("Across kinds the classical metrics disagree with the MOS, which rates every kind alike at a level.")


def fold_in(corpus_rows: list[dict], workdir: str, base_model: str) -> dict:
    """Fold the sample corpus's synthetic MOS into `base_model` (the shipped scorer) in a short run on local Ray, as
    a new registry entry; promote the new version only if it beats its parent on the held-out photographs.

    The corpus's photographs (not its videos) are the labels; the last third of them is held out whole. Returns
    the registry entry, the outcome and the held-out photographs (retrain() prints SRCC before and after).
    """
    photos = [r for r in corpus_rows if r["media_type"] == "image"]
    # Corpus order: photographs get the distortion kinds in turn, so the held-out ones carry kinds that training also
    # shows (on other content).
    sources = list(dict.fromkeys(r["source"] for r in photos))
    held_out = sources[-max(1, len(sources) // 3) :]
    split = {source: "eval" if source in held_out else "train" for source in sources}
    rows = [label_row(r["id"], r["uri"], r["level"], split[r["source"]], r["source"], r["distortion"]) for r in photos]
    labels = str(Path(workdir) / "labels")
    write_label_shard(rows, str(Path(labels) / "batch-0001" / "part-00000.parquet"))
    # A short fine-tuning of a trained scorer: a few passes at a low rate.
    recipe = Recipe(method="full", epochs=2, lr=2e-4, batch_size=8, hflip=True)
    scaling = Scaling(num_workers=2, cpus_per_worker=0.5, data_cpus=0.5, data_actors=1)
    config = RetrainConfig(labels, base_model, str(Path(workdir) / "registry"), "demo", recipe, scaling)
    outcome = retrain(config)
    return {"entry": registry.entry_url(config.registry, config.name), "outcome": outcome, "held_out": held_out}


if __name__ == "__main__":
    main()
