"""Write a tiny random model of a supported family, loadable by path exactly like a real checkpoint.

examples:
  qcurate make-tiny-model --family llava --out /tmp/tiny-llava
  qcurate make-tiny-model --family owl2 --hub-layout --out /tmp/tiny-one-align   # as q-future/one-align ships

Random weights: its scores mean nothing. Tests and the demo use these.
"""

import argparse

from pipeline.cli import Command
from pipeline.infra.console import console
from pipeline.samples.tiny_hub import make_owl2_hub_checkpoint
from pipeline.samples.tiny_models import FAMILIES, make_tiny_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=FAMILIES, required=True)
    p.add_argument("--out", required=True, help="folder to write (created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--hub-layout",
        action="store_true",
        help="owl2 only: the published Q-Align layout (pickled .bin shards, remote code, SentencePiece tokenizer)",
    )


def configure(a: argparse.Namespace, p: argparse.ArgumentParser) -> argparse.Namespace:
    if a.hub_layout and a.family != "owl2":
        p.error("--hub-layout is for --family owl2")
    return a


def execute(a: argparse.Namespace) -> None:
    if a.hub_layout:
        make_owl2_hub_checkpoint(a.out, a.seed)
        path = a.out
    else:
        path = make_tiny_model(a.family, a.out, a.seed)
    console.say(f"wrote a tiny random {a.family} model to {path} (random weights: its scores mean nothing)")


COMMAND = Command(
    doc=__doc__,
    add_arguments=add_arguments,
    configure=configure,
    execute=execute,
    errors=(OSError, ValueError),  # no log copied into the model folder: its files are its identity
)
