"""Filter a manifest by its scores: write the manifest rows that pass, sharded like the input, plus _filter.json.

examples:
  qcurate filter --manifest manifests/ds --scores scores/run1 --output manifests/ds-good --min-score 3.5
  qcurate filter --manifest s3://bucket/manifests/ds --scores s3://bucket/scores/run1 \\
      --output s3://bucket/manifests/ds-good --where "p_bad + p_poor < 0.2 and score >= 3.5"
  qcurate filter --manifest manifests/pairs --scores scores/ms-ssim --output manifests/pairs-ok --min-score 0.9
  qcurate filter ... --scores scores/vtamiq --column psnr --min-score 30     # full-reference: any metric column

The output is a manifest again (the input's rows and columns, no score columns), for training or another scoring run.
--manifest takes every layout the scorer takes; a WebDataset folder's kept rows are written as Parquet shards of
tar://<member>::<tar> rows (plus its Parquet's columns), no tar copied; inline image bytes stay in the kept rows.
--min-score/--max-score apply to the scorer's headline column (an LMM's score, a full-reference fr_score) or to
--column. --where is a pandas expression over the score columns (p_<level>, score, frames, fr_score, psnr, ssim,
media_type, extra manifest columns, ...): comparisons, arithmetic, and/or/not, `in [...]`; no function calls.
Thresholds are inclusive. Rows with an error are dropped unless --keep-errors.
Runs on Ray (joins RAY_ADDRESS, else starts a local Ray).
Exit status: 0 done, 1 failed (bad expression, missing scores, bad input), 2 bad arguments.
"""

import argparse

from pipeline.cli import Command
from pipeline.curation.filter import FilterConfig, FilterError, run_filter
from schemas import SchemaError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="the manifest that was scored, as given to `qcurate score`")
    p.add_argument("--scores", required=True, help="output folder of the scoring run (committed shards are read)")
    p.add_argument("--output", required=True, help="folder for the filtered manifest, any fsspec URL")
    p.add_argument("--min-score", type=float, help="keep rows with score (or --column) >= this")
    p.add_argument("--max-score", type=float, help="keep rows with score (or --column) <= this")
    p.add_argument("--column", help="the column the thresholds apply to (default: score, or fr_score), e.g. psnr")
    p.add_argument("--where", help='expression over score columns, e.g. "p_bad + p_poor < 0.2 and score >= 3.5"')
    p.add_argument("--keep-errors", action="store_true", help="keep rows that could not be scored")
    p.add_argument("--drop-missing", action="store_true", help="drop manifest rows without scores instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")


def configure(a: argparse.Namespace, p: argparse.ArgumentParser) -> FilterConfig:
    if a.min_score is not None and a.max_score is not None and a.min_score > a.max_score:
        p.error("--min-score must not exceed --max-score")
    return FilterConfig(
        manifest=a.manifest,
        scores=a.scores,
        output=a.output,
        min_score=a.min_score,
        max_score=a.max_score,
        column=a.column,
        where=a.where,
        keep_errors=a.keep_errors,
        drop_missing=a.drop_missing,
        overwrite=a.overwrite,
    )


COMMAND = Command(
    doc=__doc__,
    add_arguments=add_arguments,
    configure=configure,
    execute=run_filter,
    errors=(FilterError, SchemaError, FileNotFoundError),
    output=lambda a: a.output,
)
