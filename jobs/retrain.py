"""Retrain a scorer on new MOS label shards (Ray Train) and promote it only if it is better.

    ray job submit --working-dir . -- python jobs/retrain.py \\
        --labels s3://bucket/labels --base-model s3://bucket/models/base-owl2 \\
        --registry s3://bucket/models --name qalign --method lora --use-gpu --num-workers 8

`qcurate retrain` as a script (for `ray job submit`): pipeline/cli/, whose -h lists the options.
"""

import sys
from functools import partial

from pipeline import cli
from pipeline.infra.watchdog import end_process

main = partial(cli.main, "retrain", prog="retrain")

if __name__ == "__main__":
    sys.exit(end_process(main()))
