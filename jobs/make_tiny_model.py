"""Write a tiny random model of a supported family, loadable by path like a real checkpoint.

    python jobs/make_tiny_model.py --family llava --out /tmp/tiny-llava

`qcurate make-tiny-model` as a script (for `ray job submit`): pipeline/cli/, whose -h lists the options.
"""

import sys
from functools import partial

from pipeline import cli

main = partial(cli.main, "make-tiny-model", prog="make_tiny_model")

if __name__ == "__main__":
    sys.exit(main())
