"""What a job shows its user: qcurate's own lines on the terminal; Ray's and transformers' output in a log file.

A quiet run (the default of every command) points file descriptors 1 and 2 at a log file, so that everything the
process and the libraries in it print (Ray Data's execution plans, Ray's worker-log stream, C++ core_worker warnings,
transformers' progress bars) lands there, while qcurate's own lines go to the terminal the process started with.
The log is written locally while the job runs (`$TMPDIR/qcurate-logs/`; an output may be s3://) and copied to
`<output>/_logs/` when the job ends, if the output folder exists by then.

Ray workers print into their own processes; their lines that the user should see come to the driver through a
`Relay` actor (see `relayed`), since Ray's own stream of worker output is what the log file keeps.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from pipeline.infra import store


class Console:
    """Where qcurate's own lines go: the process's stdout/stderr, or during a quiet run the terminal (or pipe) that
    they were before the redirection, with a copy of each line in the log."""

    def __init__(self) -> None:
        self.out: IO[str] | None = None  # None: sys.stdout / sys.stderr as they are at the time of writing
        self.err: IO[str] | None = None
        self.log: IO[str] | None = None
        self.log_path: str | None = None

    @property
    def stdout(self) -> IO[str]:
        return self.out or sys.stdout

    @property
    def stderr(self) -> IO[str]:
        return self.err or sys.stderr

    def say(self, message: str) -> None:
        """One of our own lines: what the job does, its progress, its summary."""
        print(message, file=self.stdout, flush=True)
        self.to_log(message)

    def warn(self, message: str) -> None:
        """A line the user must act on, or a failure."""
        print(message, file=self.stderr, flush=True)
        self.to_log(message)

    def to_log(self, message: str) -> None:
        if self.log is not None:
            print(message, file=self.log, flush=True)

    def is_terminal(self) -> bool:
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty())


console = Console()


def _kept(stream: IO[str]) -> IO[str]:
    """A stream that still reaches where `stream` goes once fds 1 and 2 point at the log file."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not backed by a file descriptor (pytest's capsys): unaffected
        return stream
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8")


def _log_path(job: str) -> str:
    folder = os.path.join(tempfile.gettempdir(), "qcurate-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{job}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.log")


def _ray_is_up() -> bool:
    ray = sys.modules.get("ray")  # not imported: certainly not initialised (and importing it costs seconds)
    return bool(ray is not None and ray.is_initialized())


@contextmanager
def session(job: str, output: str | None, verbose: bool = False) -> Iterator[Console]:
    """Run a job with the console set up: quiet (others' output to the log file) unless `verbose`.

    `output` is the folder the log is copied into (`<output>/_logs/`) at the end; a Ray started inside is shut down
    before the redirection ends, so that its teardown messages land in the log too.
    """
    if verbose:
        yield console
        return
    path = _log_path(job)
    log = open(path, "a", buffering=1, encoding="utf-8")  # fds 1 and 2: append, so no writer overwrites another
    mine = open(path, "a", buffering=1, encoding="utf-8")  # the console's own copy of its lines
    sys.stdout.flush()
    sys.stderr.flush()
    console.out, console.err = _kept(sys.stdout), _kept(sys.stderr)
    console.log, console.log_path = mine, path
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    # qcurate's own warnings (logging "qcurate.*") are for the user; the libraries' logging stays in the log file.
    warnings = logging.StreamHandler(console.stderr)
    warnings.setLevel(logging.WARNING)
    warnings.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("qcurate").addHandler(warnings)
    ray_was_up = _ray_is_up()
    console.say(f"{job}: Ray's and transformers' output goes to {path} (--verbose: here)")
    try:
        yield console
    finally:
        if _ray_is_up() and not ray_was_up:
            sys.modules["ray"].shutdown()
        logging.getLogger("qcurate").removeHandler(warnings)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        kept = _keep_log(path, output)
        if kept:
            print(f"{job}: log: {kept}", file=console.stdout, flush=True)
        for stream in (console.out, console.err):
            if stream not in (sys.stdout, sys.stderr):  # our duplicates of fds 1 and 2
                stream.close()
        console.out = console.err = console.log = console.log_path = None
        mine.close()
        log.close()


def _keep_log(path: str, output: str | None) -> str | None:
    """Copy the log to `<output>/_logs/` when that folder exists (a job that failed early may have none, and a
    folder made for its log alone would count as a non-empty output next time). Returns where it went."""
    if not output or not store.exists(output):
        return None
    target = store.join(output.rstrip("/"), "_logs", os.path.basename(path))
    try:
        with open(path, "rb") as f:
            store.put(target, f.read())
    except OSError as e:
        console.warn(f"could not copy the log to {target} ({e}); it stays at {path}")
        return None
    return target


# ------------------------------------------------------------------------------------------------------------
# Lines from Ray workers to the driver


class Relay:
    """A Ray actor that carries lines and skipped items from training workers and data tasks to the driver."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.skipped: dict[str, str] = {}  # item id -> its first error: every epoch meets the same bad items

    def say(self, line: str) -> None:
        self.lines.append(line)

    def skip(self, items: list[tuple[str, str]]) -> None:
        for item_id, error in items:
            self.skipped.setdefault(item_id, error)

    def drain(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def skipped_items(self) -> dict[str, str]:
        return dict(self.skipped)


@contextmanager
def relayed(say: Callable[[str], None] | None = None, poll_s: float = 0.5) -> Iterator[Any]:
    """A Relay actor whose lines the driver prints as they come (from a thread: the driver's main thread waits on
    the work). Yields the actor handle, to pass to the workers."""
    import ray

    say = say or console.say
    relay = ray.remote(num_cpus=0)(Relay).remote()
    stop = threading.Event()

    def pump() -> None:
        while not stop.wait(poll_s):
            for line in ray.get(relay.drain.remote()):
                say(line)

    thread = threading.Thread(target=pump, daemon=True, name="relay")
    thread.start()
    try:
        yield relay
    finally:
        stop.set()
        thread.join()
        for line in ray.get(relay.drain.remote()):
            say(line)


def skipped_summary(skipped: dict[str, str], what: str = "label item(s)") -> str | None:
    """One line for the items skipped for bad media, by kind, with an example; None when there are none."""
    if not skipped:
        return None
    kinds = Counter(error.split(":", 1)[0] for error in skipped.values())
    first = min(skipped)
    return (
        f"skipped {len(skipped)} {what} whose media could not be loaded "
        f"({', '.join(f'{kind} {n}' for kind, n in kinds.most_common())}), e.g. {first}: {skipped[first]}"
    )


def duration(seconds: float) -> str:
    """1h02m, 3m05s, 42s: short enough for a progress line."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
