"""Make the scorer that ships with qcurate (pipeline/samples/registry/tiny-iqa) with the project's own retraining job.

    python jobs/train_shipped_scorer.py      # seed 0 remakes the shipped entry; about 46 minutes on 2 CPU cores

1. Builds its labelled set from what installs with qcurate's dependencies (pipeline.samples.shipped.build_scorer_set):
   procedural dead-leaves pictures and windows of 13 bundled photographs (three colour, ten grey, none of them in
   the demo) at the demo's image sizes, each pristine and blurred, noised, JPEG-compressed and pixelated at four
   levels. The MOS comes from the level (5 pristine .. 1 worst).
   It is measured on the demo's own full-reference pairs: six colour photographs it never saw, every kind and level,
   whole images as the demo scores them.
2. Builds a tiny random Qwen3.5 (the Q-ReAlign architecture: it sees each image at its own resolution, so the
   distortions are not resized away), seeded.
3. Trains it with the retraining job (Ray Train, full fine-tuning on random 64 px crops, a fixed recipe) into a
   temporary registry.
4. Copies the entry (CURRENT and its version: weights, version.json, metrics.json) to --out.

What such a scorer knows: these four synthetic distortions of a few dozen photographs. What it does not know:
the quality of real photographs, their aesthetics, or video. Real work needs a real checkpoint (docs/checkpoints.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pipeline import registry
from pipeline.samples.shipped import SCORER_PHOTOS, SHIPPED_SCORER, build_scorer_set
from pipeline.samples.synthetic import write_label_shard
from pipeline.samples.tiny_models import make_tiny_model
from pipeline.training.lmm import Recipe, Scaling
from pipeline.training.retrain import RetrainConfig, retrain

# Training sees random 64 px crops at the pictures' own resolution (cheap: 16 visual tokens); scoring sees the whole
# picture, also at its own resolution.
RECIPE = dict(method="full", lr=1e-3, batch_size=64, warmup_ratio=0.03, crop=64, hflip=True, shuffle_buffer=2048)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(SHIPPED_SCORER), help="the entry's folder (replaced)")
    p.add_argument("--seed", type=int, default=0, help="the set's windows, the model's initialisation, the draws")
    p.add_argument("--epochs", type=int, default=60, help="passes over the training set")
    p.add_argument("--workdir", help="where the set, the base model and the run go (default: a temporary folder)")
    args = p.parse_args(argv)
    command = f"python jobs/train_shipped_scorer.py --seed {args.seed} --epochs {args.epochs}"
    work = args.workdir or tempfile.mkdtemp(prefix="qcurate-scorer-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2)
    rows = build_scorer_set(os.path.join(work, "set"), seed=args.seed)
    labels = os.path.join(work, "labels")
    write_label_shard(rows, os.path.join(labels, "batch-0001", "part-00000.parquet"))
    base = str(make_tiny_model("qwen3_5", os.path.join(work, "base"), seed=args.seed))
    about = {
        "what": "a tiny Qwen3.5 (Q-ReAlign architecture) that rates four synthetic distortions, made by qcurate",
        "trained_on": (
            f"{sum(r['split'] == 'train' for r in rows)} images: procedural dead-leaves pictures and random windows "
            f"of {len(SCORER_PHOTOS)} bundled photographs ({', '.join(SCORER_PHOTOS)}), pristine and blurred, noised, "
            "JPEG-compressed and pixelated at four levels; MOS = 5 - level"
        ),
        "held_out": (
            f"{sum(r['split'] == 'eval' for r in rows)} images: the demo's full-reference pairs (six colour "
            "photographs never trained on, every kind and level), whole"
        ),
        "does_not_know": "real photographs' quality, aesthetics, video",
        "command": command,
    }
    recipe = Recipe(**RECIPE, epochs=args.epochs, seed=args.seed)
    scaling = Scaling(num_workers=2, cpus_per_worker=0.5, data_cpus=0.5, data_actors=1)
    config = RetrainConfig(labels, base, os.path.join(work, "registry"), "tiny-iqa", recipe, scaling, about=about)
    outcome = retrain(config)
    if outcome.status != "promoted":
        print(f"the trained version was not promoted ({outcome.message}); nothing copied", file=sys.stderr)
        return 1
    target = Path(args.out)
    shutil.rmtree(target, ignore_errors=True)
    entry = Path(registry.entry_url(config.registry, config.name))
    shutil.copytree(entry, target, ignore=shutil.ignore_patterns("_runs"))
    held = outcome.metrics["held_out"]
    print(
        f"{target}: {outcome.version}, held-out SRCC {held['before']['srcc']:.3f} -> {held['after']['srcc']:.3f} "
        f"(PLCC {held['after']['plcc']:.3f}, n={held['after']['n']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
