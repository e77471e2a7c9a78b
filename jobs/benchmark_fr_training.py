"""The full-reference learning check: does the retraining job teach a tiny VTAMIQ to rate quality against a reference?

    python jobs/benchmark_fr_training.py   # about 9 minutes on 2 busy CPU cores, 7 of them the retraining run

Builds the synthetic MOS set of pipeline.samples.synthetic as full-reference pairs (each item beside its pristine
photograph at the same size and crop; whole photographs held out for the eval split), writes it as a labels/v2 shard,
and runs the real retraining job (Ray Train, 2 CPU workers, DDP over gloo) on a from-scratch tiny VTAMIQ (no pretrained
weights exist here). It prints the trained version's held-out SRCC and PLCC beside PSNR's and SSIM's on the same
held-out pairs, and checks:
  (a) held-out SRCC >= 0.85;  (b) held-out PLCC >= 0.85;
  (c) the whole retraining run (evaluation before and after included) within --budget-s seconds.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import ViTConfig

from pipeline.models.vtamiq import VTAMIQ, VTAMIQConfig
from pipeline.samples.synthetic import TRAIN_PHOTOS, build_learning_set, write_label_shard
from pipeline.training.evaluation import correlations, predict
from pipeline.training.lmm import Recipe, Scaling
from pipeline.training.retrain import RetrainConfig, retrain

CROP = 64  # held-out pairs are 64 px crops; training draws random 64 px crops of larger pairs
# Bigger than build_tiny's (hidden 32, 32 patches) to learn from: small enough for CPU, 64 patches of a 64 px crop.
VIT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
MODEL = {"num_patches": 64, "num_groups": 2, "blocks_per_group": 2, "reduction": 4, "dropout": 0.1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", help="where the set, the model and the registry go (default: a temporary folder)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--views", type=int, default=3, help="random crops and patch draws of each pair per epoch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=600.0)
    return p.parse_args(argv)


def build_model(folder: str, seed: int = 0) -> str:
    vit = ViTConfig(image_size=224, patch_size=16, **VIT)
    torch.manual_seed(seed)
    VTAMIQ(VTAMIQConfig(vit=vit.to_dict(), **MODEL)).save(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="qcurate-fr-bench-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray

    if not ray.is_initialized():
        # this machine's 2 cores, unless a cluster is named
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, num_cpus=None if "RAY_ADDRESS" in os.environ else 2)

    rows = build_learning_set(os.path.join(workdir, "media"), crop=CROP, eval_side=128, full_reference=True)
    labels = os.path.join(workdir, "labels")
    write_label_shard(rows, os.path.join(labels, "batch-0001", "part-00000.parquet"))
    base = build_model(os.path.join(workdir, "base"))
    held_out = [r for r in rows if r["split"] == "eval"]
    n_train = len(rows) - len(held_out)
    print(
        f"set: {n_train} training pairs ({len(TRAIN_PHOTOS)} photographs), {len(held_out)} held-out {CROP} px pairs "
        f"of photographs never trained on; model {VIT} {MODEL}",
        flush=True,
    )

    recipe = Recipe(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        warmup_ratio=0.05,
        weight_decay=0.01,
        crop=CROP,
        hflip=True,
        views=args.views,
    )
    scaling = Scaling(num_workers=args.num_workers, cpus_per_worker=0.5, data_cpus=0.5, data_actors=1)
    config = RetrainConfig(labels, base, os.path.join(workdir, "registry"), "fr-bench", recipe, scaling)
    began = time.time()
    outcome = retrain(config)
    seconds = time.time() - began
    metrics = outcome.metrics
    for epoch in metrics["training"]:
        print(f"  epoch {epoch['epoch']}: loss {epoch['loss']:.4f} ({epoch['seconds']:.1f} s)")
    trained = sum(e["seconds"] for e in metrics["training"])

    mos = np.array([r["mos"] for r in held_out])
    table = {f"VTAMIQ {outcome.version}": metrics["held_out"]["after"]}
    for metric in ("psnr", "ssim"):
        table[metric.upper()] = correlations(predict(None, held_out, scorer=metric), mos)
    print(f"held-out pairs ({len(held_out)}):      SRCC    PLCC")
    for name, m in table.items():
        print(f"  {name:22s} {m['srcc']:+.4f} {m['plcc']:+.4f}  (n={m['n']})")
    print(f"time: retraining run {seconds:.0f} s (training epochs {trained:.0f} s)", flush=True)

    after = metrics["held_out"]["after"]
    checks = {
        f"(a) held-out SRCC {after['srcc']:.3f} >= 0.85": after["srcc"] >= 0.85,
        f"(b) held-out PLCC {after['plcc']:.3f} >= 0.85": after["plcc"] >= 0.85,
        f"(c) {seconds:.0f} s <= {args.budget_s:.0f} s": seconds <= args.budget_s,
    }
    for text, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'} {text}", flush=True)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
