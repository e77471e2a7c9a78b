"""Write a self-contained HTML report of a scoring run (open it from disk: no server, no network).

    python jobs/report.py --scores s3://bucket/scores/run1 --out report/ [--manifest s3://bucket/manifests/ds] \\
        [--min-score 3.5] [--thumbnails 8]

Shows the score histogram, mean level probabilities, items per level (argmax), errors by kind, and the lowest and
highest scored items as thumbnails. --manifest adds caption columns (source, mos) the scores lack and the count of
manifest rows without scores; --min-score shows what that threshold would keep and drop.
Exit status: 0 done, 1 failed (no committed scores, unreadable input), 2 bad arguments.
"""

import argparse
import sys

from pipeline.curation import FilterError
from pipeline.report import write_report
from schemas import SchemaError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="output folder of the scoring run, any fsspec URL")
    p.add_argument("--manifest", help="the manifest that was scored (optional)")
    p.add_argument("--out", required=True, help="folder to write index.html into")
    p.add_argument("--min-score", type=float, help="show what this threshold keeps and drops")
    p.add_argument("--thumbnails", type=int, default=8, help="lowest and highest scored items shown (default 8)")
    a = p.parse_args(argv)
    if a.thumbnails < 0:
        p.error("--thumbnails must be >= 0")
    try:
        path = write_report(a.scores, a.out, manifest=a.manifest, min_score=a.min_score, n_thumbs=a.thumbnails)
    except (FilterError, SchemaError, FileNotFoundError) as e:
        print(f"report: FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"report: {path}\nopen file://{path}" if "://" not in path else f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
