"""Write a self-contained HTML report of a scoring run (open it from disk: no server, no network).

examples:
  qcurate report --scores scores/run1 --out report/
  qcurate report --scores s3://bucket/scores/run1 --manifest s3://bucket/manifests/ds --out report/ \\
      --min-score 3.5 --thumbnails 8

Shows the score histogram, mean level probabilities, items per level (argmax), errors by kind, and the lowest and
highest scored items as thumbnails. --manifest adds caption columns (source, mos) the scores lack and the count of
manifest rows without scores; --min-score shows what that threshold would keep and drop.
Exit status: 0 done, 1 failed (no committed scores, unreadable input), 2 bad arguments.
"""

import argparse

from pipeline.cli import Command
from pipeline.curation.filter import FilterError
from pipeline.curation.report import write_report
from pipeline.infra.console import console
from schemas import SchemaError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scores", required=True, help="output folder of the scoring run, any fsspec URL")
    p.add_argument("--manifest", help="the manifest that was scored, as given to `qcurate score` (optional)")
    p.add_argument("--out", required=True, help="folder to write index.html into")
    p.add_argument("--min-score", type=float, help="show what this threshold keeps and drops")
    p.add_argument("--thumbnails", type=int, default=8, help="lowest and highest scored items shown (default 8)")


def configure(a: argparse.Namespace, p: argparse.ArgumentParser) -> argparse.Namespace:
    if a.thumbnails < 0:
        p.error("--thumbnails must be >= 0")
    return a


def execute(a: argparse.Namespace) -> None:
    path = write_report(a.scores, a.out, manifest=a.manifest, min_score=a.min_score, n_thumbs=a.thumbnails)
    console.say(f"report: {path}\nopen file://{path}" if "://" not in path else f"report: {path}")


COMMAND = Command(
    doc=__doc__,
    add_arguments=add_arguments,
    configure=configure,
    execute=execute,
    errors=(FilterError, SchemaError, FileNotFoundError),
)
