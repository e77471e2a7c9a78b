"""Score a corpus on Ray, one output shard per manifest shard, resumable.

    ray job submit --working-dir . -- python jobs/score_dataset.py \\
        --manifest s3://bucket/manifests/ds --output s3://bucket/scores/run1 --model s3://bucket/models/qalign

`qcurate score` as a script (for `ray job submit`): pipeline/cli/, whose -h lists the options.
"""

import sys
from functools import partial

from pipeline import cli

main = partial(cli.main, "score", prog="score_dataset")

if __name__ == "__main__":
    sys.exit(main())
