"""Import a published checkpoint into a model registry once, as an immutable safetensors version.

examples:
  qcurate import-model --source q-future/one-align --registry s3://bucket/models --name onealign
  qcurate import-model --source /data/DeQA-Score-Mix3 --registry s3://bucket/models --name deqa --promote
  python jobs/import_model.py --source q-future/one-align --revision refs/pr/1 --registry models --name onealign
  python jobs/import_model.py --source VTAMIQ-KADIS700k.pth --registry models --name vtamiq

The VTAMIQ authors' `.pth` (their published KADIS-700k weights: {epoch, test_accuracy, model_state_dict}) is read
the same safe way and becomes a VTAMIQ folder (pipeline.models.vtamiq_original documents the name mapping), run as
published: 5 scales of patches, 1024 per image, their patch positions; its output, a distortion, is recorded as lower
is better, so the scorer's fr_score stays higher = better. --original-config gives another run configuration.

The Q-Align-family checkpoints ship pickled `.bin` weights: they are read with `torch.load(weights_only=True)`
(a pickle that holds anything but tensors is refused, and nothing in it runs) and written as safetensors; remote
code files are left behind. The entry's first version becomes its CURRENT; then every node scores from object
storage with `--model s3://bucket/models/onealign`, without converting anything.
Exit status: 0 imported, 1 failed (with a message), 2 bad arguments.
"""

import argparse
import json
from pathlib import Path

from pipeline import registry
from pipeline.cli import Command
from pipeline.infra.console import console
from pipeline.registry.checkpoint import CheckpointError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="hub id (org/name) or model folder (local or any fsspec URL)")
    p.add_argument("--revision", help="hub branch, tag, commit or refs/pr/N (default: main)")
    p.add_argument("--registry", required=True, help="registry root, any fsspec URL (e.g. s3://bucket/models)")
    p.add_argument("--name", required=True, help="registry entry to add the version to")
    p.add_argument("--promote", action="store_true", help="make this version CURRENT even if the entry has one")
    p.add_argument(
        "--original-config",
        help="with a VTAMIQ .pth: JSON file of its run configuration in the original's names "
        "(default: the published one, pipeline.models.vtamiq_original.ORIGINAL_PUBLISHED)",
    )


def execute(a: argparse.Namespace) -> None:
    entry = f"{a.registry.rstrip('/')}/{a.name}"
    console.say(f"import: {a.source} -> a new version of {entry}")
    original = json.loads(Path(a.original_config).read_text()) if a.original_config else None
    version, record = registry.import_checkpoint(a.source, a.registry, a.name, a.revision, a.promote, original=original)
    state = "CURRENT" if record["promotion"]["promoted"] else record["promotion"]["reason"]
    console.say(
        f"import: {a.source} @ {record['source_revision']} -> {entry}/{version} ({record['digest']}; {state}). "
        f"Score with --model {entry}"
    )


COMMAND = Command(
    doc=__doc__,
    add_arguments=add_arguments,
    configure=lambda a, p: a,
    execute=execute,
    errors=(CheckpointError, registry.VersionExistsError, FileNotFoundError, OSError, ValueError),
    output=lambda a: f"{a.registry.rstrip('/')}/{a.name}",
)
