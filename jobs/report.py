"""Write a self-contained HTML report of a scoring run.

    python jobs/report.py --scores s3://bucket/scores/run1 --out report/

`qcurate report` as a script (for `ray job submit`): pipeline/cli/, whose -h lists the options.
"""

import sys
from functools import partial

from pipeline import cli

main = partial(cli.main, "report", prog="report")

if __name__ == "__main__":
    sys.exit(main())
