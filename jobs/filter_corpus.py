"""Filter a manifest by its scores: the rows that pass, sharded like the input, plus _filter.json.

    python jobs/filter_corpus.py --manifest s3://bucket/manifests/ds --scores s3://bucket/scores/run1 \\
        --output s3://bucket/manifests/ds-good --min-score 3.5

`qcurate filter` as a script (for `ray job submit`): pipeline/cli/, whose -h lists the options.
"""

import sys
from functools import partial

from pipeline import cli

main = partial(cli.main, "filter", prog="filter_corpus")

if __name__ == "__main__":
    sys.exit(main())
