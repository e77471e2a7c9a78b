"""Import a published checkpoint into a model registry once, as an immutable safetensors version.

    python jobs/import_model.py --source q-future/one-align --registry s3://bucket/models --name onealign

`qcurate import-model` as a script (for `ray job submit`): pipeline/cli/, whose -h lists the options.
"""

import sys
from functools import partial

from pipeline import cli

main = partial(cli.main, "import-model", prog="import_model")

if __name__ == "__main__":
    sys.exit(main())
