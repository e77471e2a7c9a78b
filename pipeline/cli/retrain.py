"""Retrain a scorer on new MOS label shards (Q-Align syllabus, Ray Train DDP) and promote it only if it is better.

examples:
  qcurate retrain --labels labels/ --base-model models/base-owl2 --registry models --name qalign --epochs 3
  ray job submit --working-dir . -- python jobs/retrain.py \\
      --labels s3://bucket/labels --base-model s3://bucket/models/base-owl2 \\
      --registry s3://bucket/models --name qalign --method lora --use-gpu --num-workers 8

Each run trains on the label shards that the entry's CURRENT version has not seen (all of them with --all-labels),
starting from CURRENT (or from --base-model when the entry has no version yet), writes a new immutable version
`<registry>/<name>/vNNNN/` with SRCC/PLCC on the held-out split before and after training, and moves CURRENT to it
only if its held-out SRCC beats CURRENT's (or the base model's). With nothing new it exits 0 and says so, so it can
run on a schedule (cron, or a KubeRay RayJob started by a CronJob). A killed run, rerun with the same arguments,
resumes from its last checkpoint (kept under `<registry>/<name>/_runs/`).
It prints one line per epoch, then the SRCC/PLCC table and the promotion decision; Ray's and transformers' output
goes to a log file (copied to <registry>/<name>/_logs/) unless --verbose.

With RAY_ADDRESS set (as `ray job submit` does) it joins that cluster; without, it starts a local Ray.
A VTAMIQ model folder (pipeline.models.vtamiq) as --base-model is trained as a full-reference scorer on labels with
ref_uri (labels/v2): the whole model, with VTAMIQ's loss and AdamW (pipeline.training.vtamiq); --crop, --hflip and
--views augment the pairs, and the LMM-only options (--method other than full, --soft-labels) are refused.

Exit status: 0 done (promoted, not promoted, or nothing new), 1 failed, 2 bad arguments.
"""

import argparse
import os
from dataclasses import fields

from pipeline import methods
from pipeline.cli import Command
from pipeline.infra import store
from pipeline.infra.watchdog import DEFAULT_STALL_S, StallError
from pipeline.training.lmm import Recipe, Scaling
from pipeline.training.retrain import RetrainConfig, retrain, trainer_for
from schemas import SchemaError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", required=True, help="folder (or glob) of label shards (schemas.labels), any fsspec URL")
    p.add_argument("--base-model", required=True, help="model folder or hub id the entry's lineage starts from")
    p.add_argument("--registry", required=True, help="registry root, any fsspec URL; versions go to <registry>/<name>/")
    p.add_argument("--name", required=True, help="the registry entry; score with --model <registry>/<name>")
    p.add_argument("--method", choices=methods.names(), default="full", help="training method (pipeline/methods/)")
    p.add_argument("--epochs", type=int, default=2)
    lrs = ", ".join(f"{m.default_lr:g} {m.name}" for m in methods.all_methods())
    p.add_argument("--lr", type=float, help=f"learning rate (default: {lrs}; 1e-4 for a VTAMIQ)")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size, split over the workers")
    p.add_argument("--num-workers", type=int, default=2, help="DDP training workers")
    p.add_argument("--use-gpu", action="store_true", help="one GPU per worker (and per evaluation task)")
    p.add_argument("--eval-split", default="eval", help="the split value held out for evaluation (default: eval)")
    p.add_argument("--all-labels", action="store_true", help="train on every shard's training rows, not only new ones")
    p.add_argument("--soft-labels", action="store_true", help="target the level distribution implied by mos_std")
    p.add_argument("--crop", type=int, help="train on random crops of this many pixels (augmentation)")
    p.add_argument("--hflip", action="store_true", help="mirror training images at random (augmentation)")
    p.add_argument("--views", type=int, default=1, help="augmented views of each training item per epoch")
    p.add_argument("--shuffle-buffer", type=int, default=512, help="examples each worker shuffles before batching")
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=0.0)
    for method in methods.all_methods():  # each method's own options (its flags are only for it)
        for option in method.options:
            default = "" if option.default is None else f" (default {option.default})"
            p.add_argument(option.flag, type=option.type, help=f"[{method.name}] {option.help}{default}")
    p.add_argument("--seed", type=int, default=0, help="initialisation and augmentation/question draws")
    p.add_argument("--cpus-per-worker", type=float, help="default: the CPUs the example actors leave, split evenly")
    p.add_argument("--data-cpus", type=float, help="CPUs per example-preparing actor (default 1; 0.5 below 8 CPUs)")
    p.add_argument("--data-actors", type=int, default=2, help="at most this many example-preparing actors")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts from the last checkpoint")
    p.add_argument("--fit-items", type=int, default=1000, help="training items scored to measure the fit")
    p.add_argument(
        "--stall-timeout", type=float, default=DEFAULT_STALL_S, help="fail when work cannot be placed this long (s)"
    )


def configure(a: argparse.Namespace, p: argparse.ArgumentParser) -> RetrainConfig:
    own = {o.name for o in methods.get(a.method).options}
    for method in methods.all_methods():
        for option in method.options:
            if option.name not in own and getattr(a, option.name) is not None:
                p.error(f"{option.flag} is an option of --method {method.name}, not of {a.method}")

    # Ray Train runs its workers in a folder of their own, where a relative `models/base` names nothing (and is then
    # taken for a hub id). A hub id is no local path, so it stays as given.
    base_model = store.absolute(a.base_model) if os.path.exists(a.base_model) else a.base_model
    try:  # the configs check their values; a bad one is a usage error
        config = RetrainConfig(
            labels=store.absolute(a.labels),
            base_model=base_model,
            registry=store.absolute(a.registry),
            name=a.name,
            # The options are named like the fields of Recipe and Scaling.
            recipe=Recipe(
                **{f.name: getattr(a, f.name) for f in fields(Recipe) if f.name != "options"},
                options={name: getattr(a, name) for name in own if getattr(a, name) is not None},
            ),
            scaling=Scaling(**{f.name: getattr(a, f.name) for f in fields(Scaling)}),
            eval_split=a.eval_split,
            all_labels=a.all_labels,
            fit_items=a.fit_items,
            stall_timeout_s=a.stall_timeout,
        )
        if os.path.isdir(base_model):  # a local base: its kind's refusals are usage errors (else the job's, later)
            trainer_for(base_model).check_recipe(config.recipe)
    except ValueError as e:
        p.error(str(e))
    return config


COMMAND = Command(
    doc=__doc__,
    add_arguments=add_arguments,
    configure=configure,
    execute=retrain,
    errors=(SchemaError, FileNotFoundError, ValueError, StallError),
    output=lambda a: f"{a.registry.rstrip('/')}/{a.name}",
)
