"""The commands' one shared front: arguments, the console (quiet unless --verbose), failures and the exit status.

    qcurate score|filter|report|retrain|import-model|make-tiny-model ...   the console script (pyproject)
    python jobs/score_dataset.py ...                                        the same command, for `ray job submit`

Each command is a module of this package that defines its arguments and what it runs (a `Command`); both the
`qcurate` script and the thin `jobs/*.py` entry points go through `main`.
Exit status: 0 done, 1 failed (one line saying why; an unexpected error with its traceback), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.infra.console import session
from pipeline.infra.watchdog import end_process

# name -> (module, one line for `qcurate -h`). Modules are imported only when their command runs: some import
# torch and transformers, which `qcurate -h` has no need to wait for.
COMMANDS = {
    "score": ("score", "score a corpus on Ray, one output shard per manifest shard, resumable"),
    "filter": ("filter", "write the manifest rows whose scores pass thresholds or an expression"),
    "report": ("report", "write a self-contained HTML report of a scoring run"),
    "retrain": ("retrain", "retrain a scorer on new MOS labels (Ray Train), promote it only if better"),
    "import-model": ("import_model", "import a published checkpoint into a registry as safetensors"),
    "make-tiny-model": ("make_tiny_model", "write a tiny random model of a family (tests, demos)"),
}


@dataclass(frozen=True)
class Command:
    """One command: its -h text (with examples), its arguments, and what it runs."""

    doc: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    # The parsed arguments -> what `execute` takes; a bad value is a usage error (parser.error: exit 2), found
    # before anything starts.
    configure: Callable[[argparse.Namespace, argparse.ArgumentParser], Any]
    execute: Callable[[Any], None]
    errors: tuple[type[BaseException], ...]  # the failures the user can act on: reported in one line
    output: Callable[[argparse.Namespace], str | None] = lambda args: None  # the log goes to <output>/_logs/


def command(name: str) -> Command:
    return importlib.import_module(f"pipeline.cli.{COMMANDS[name][0]}").COMMAND


def parser_for(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    cmd = command(name)
    parser = argparse.ArgumentParser(
        prog=prog or f"qcurate {name}", description=cmd.doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cmd.add_arguments(parser)
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's and transformers' output here instead of in the log file"
    )
    return parser


def main(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse, run and report one command. Returns the exit status (argparse exits 2 on bad arguments itself)."""
    cmd = command(name)
    parser = parser_for(name, prog)
    args = parser.parse_args(argv)
    config = cmd.configure(args, parser)
    with session(name, cmd.output(args), args.verbose) as console:
        try:
            cmd.execute(config)
        except cmd.errors as e:
            console.warn(f"{parser.prog}: FAILED: {e}")
            return 1
        except Exception:  # a bug, or a Ray worker's error that failed the job: the whole traceback, not the log's
            console.warn(f"{parser.prog}: FAILED with an unexpected error:\n{traceback.format_exc().rstrip()}")
            return 1
    return 0


def qcurate(argv: list[str] | None = None) -> int:
    """The `qcurate` console script: `qcurate <command> [options]`."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:{width}s}  {summary}" for name, (_, summary) in COMMANDS.items()]
        print("usage: qcurate <command> [options]   (qcurate <command> -h: its options and examples)\n")
        print("commands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nqcurate: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    return end_process(main(argv[0], argv[1:]))
