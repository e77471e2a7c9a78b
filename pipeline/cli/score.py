"""Score a corpus on Ray, one output shard per manifest shard, resumable: with a Q-Align-style LMM (the default), or
with a full-reference scorer against each row's ref_uri (psnr, psnr-y, ssim, ms-ssim, or a vtamiq model folder).

examples:
  qcurate score --manifest manifests/sample --output scores/run1 --model models/onealign
  qcurate score --manifest s3://bucket/laion-shards/ --output scores/tars --model models/onealign  # NNNNN.tar+.parquet
  qcurate score --manifest s3://bucket/hf/koniq/data/ --output scores/hf --model models/onealign   # bytes in Parquet
  qcurate score --manifest manifests/pairs --output scores/ssim --scorer ms-ssim
  qcurate score --manifest manifests/pairs --output scores/vtamiq --scorer vtamiq --model models/vtamiq
  ray job submit --working-dir . -- python jobs/score_dataset.py \\
      --manifest s3://bucket/manifests/ds --output s3://bucket/scores/run1 --model s3://bucket/models/qalign
  qcurate score ... --restart          # delete an existing output and score everything again

With RAY_ADDRESS set (as `ray job submit` does) it joins that cluster; without, it starts a local Ray.
It prints what it will score, one progress line (redrawn on a terminal, every 10 s elsewhere) and a summary; Ray's
and transformers' output goes to a log file (copied to <output>/_logs/) unless --verbose.
Exit status: 0 done, 1 failed (bad manifest, error rate over the limit, refused to mix models), 2 bad arguments.
"""

import argparse
import sys

from pipeline.cli import Command
from pipeline.infra.watchdog import DEFAULT_STALL_S, StallError
from pipeline.qalign.recipes import RECIPES
from pipeline.samples.shipped import NOTICE, SHIPPED_SCORER
from pipeline.scorers import KINDS
from pipeline.scoring.job import JobConfig, JobError, run
from schemas import SchemaError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--manifest",
        required=True,
        help="any fsspec URL: a folder (any depth, hive key=value folders) or glob of Parquet shards whose rows name "
        "objects, tar://<member>::<archive> members or hold the bytes (a binary or Hugging Face Image column); or a "
        "WebDataset folder of NNNNN.tar (+ NNNNN.parquet)",
    )
    p.add_argument("--output", required=True, help="output folder for score shards, any fsspec URL")
    p.add_argument(
        "--scorer",
        choices=KINDS,
        default="lmm",
        help="kind of scorer: an LMM reading level words (default), or full-reference against ref_uri",
    )
    p.add_argument(
        "--model",
        help="model folder, hub id, or registry entry (folder with CURRENT); not for psnr/psnr-y/ssim/ms-ssim "
        "(default for the LMM scorer: qcurate's shipped tiny-iqa, which knows four synthetic distortions only)",
    )
    p.add_argument(
        "--model-revision",
        help="hub id: branch, tag, commit or refs/pr/N (default main); registry entry: version (default CURRENT)",
    )
    p.add_argument("--task", choices=["quality", "aesthetics"], default="quality")
    p.add_argument(
        "--prompt-recipe",
        choices=sorted(RECIPES),
        help="how to prompt the model (default: the checkpoint's own, from its qcurate.json or model_type)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-scorers", type=int, help="scorer actors (default: one per GPU, 1 without GPUs)")
    p.add_argument("--gpus-per-scorer", type=float, default=1.0)
    p.add_argument(
        "--fps", type=float, default=1.0, help="video frames sampled per second (Q-Align's rule: whole seconds only)"
    )
    p.add_argument(
        "--max-frames",
        type=int,
        default=16,
        help="frame cap per video: more sampled frames are thinned uniformly (Q-Align has no cap; a video within "
        "the cap gets exactly its frames)",
    )
    p.add_argument(
        "--no-draft",
        dest="draft",
        action="store_false",
        help="decode JPEGs at full size (default: at a reduced DCT scale, >= twice the model's input side)",
    )
    p.add_argument("--fetch-concurrency", type=int, default=8, help="objects each decode worker reads at once")
    p.add_argument("--max-error-rate", type=float, default=0.05, help="fail the job above this fraction of errors")
    p.add_argument("--restart", action="store_true", help="delete an existing output and start over")
    p.add_argument(
        "--stall-timeout", type=float, default=DEFAULT_STALL_S, help="fail when no stage progresses this long (s)"
    )
    p.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines off a terminal")


def configure(a: argparse.Namespace, p: argparse.ArgumentParser) -> JobConfig:
    if a.batch_size < 1 or a.max_frames < 1 or a.fetch_concurrency < 1 or a.fps <= 0 or not 0 <= a.max_error_rate <= 1:
        p.error(
            "--batch-size, --max-frames and --fetch-concurrency must be >= 1, --fps > 0, --max-error-rate in [0, 1]"
        )
    model = a.model
    if a.scorer == "lmm" and not model:
        model = str(SHIPPED_SCORER)
        print(f"{p.prog}: {NOTICE}", file=sys.stderr)
    if a.scorer == "vtamiq" and not model:
        p.error("--scorer vtamiq needs --model")
    return JobConfig(
        scorer=a.scorer,
        manifest=a.manifest,
        output=a.output,
        model=model,
        task=a.task,
        batch_size=a.batch_size,
        num_scorers=a.num_scorers,
        gpus_per_scorer=a.gpus_per_scorer,
        fps=a.fps,
        max_frames=a.max_frames,
        max_error_rate=a.max_error_rate,
        restart=a.restart,
        model_revision=a.model_revision,
        stall_timeout_s=a.stall_timeout,
        prompt_recipe=a.prompt_recipe,
        progress_every_s=a.progress_every,
        draft=a.draft,
        fetch_concurrency=a.fetch_concurrency,
    )


COMMAND = Command(
    doc=__doc__,
    add_arguments=add_arguments,
    configure=configure,
    execute=run,
    errors=(JobError, SchemaError, FileNotFoundError, StallError),
    output=lambda a: a.output,
)
