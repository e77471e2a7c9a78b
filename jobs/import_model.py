"""Import a published checkpoint into a model registry once, as an immutable safetensors version.

    python jobs/import_model.py --source q-future/one-align --registry s3://bucket/models --name onealign
    python jobs/import_model.py --source /data/DeQA-Score-Mix3 --registry s3://bucket/models --name deqa

The Q-Align-family checkpoints ship pickled `.bin` weights: they are read with `torch.load(weights_only=True)`
(a pickle that holds anything but tensors is refused, and nothing in it runs) and written as safetensors; remote
code files are left behind. The entry's first version becomes its CURRENT; then every node scores from object
storage with `--model s3://bucket/models/onealign`, without converting anything.
Exit status: 0 imported, 1 failed (with a message), 2 bad arguments.
"""

import argparse
import sys

from pipeline.checkpoint import CheckpointError
from pipeline.registry import VersionExistsError, import_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="hub id (org/name) or model folder (local or any fsspec URL)")
    p.add_argument("--revision", help="hub branch, tag, commit or refs/pr/N (default: main)")
    p.add_argument("--registry", required=True, help="registry root, any fsspec URL (e.g. s3://bucket/models)")
    p.add_argument("--name", required=True, help="registry entry to add the version to")
    p.add_argument("--promote", action="store_true", help="make this version CURRENT even if the entry has one")
    a = p.parse_args(argv)
    try:
        version, record = import_checkpoint(a.source, a.registry, a.name, a.revision, a.promote)
    except (CheckpointError, VersionExistsError, FileNotFoundError, OSError, ValueError) as e:
        print(f"import_model: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    state = "CURRENT" if record["promotion"]["promoted"] else record["promotion"]["reason"]
    print(
        f"import_model: {a.source} @ {record['source_revision']} -> {a.registry.rstrip('/')}/{a.name}/{version} "
        f"({record['digest']}; {state}). Score with --model {a.registry.rstrip('/')}/{a.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
