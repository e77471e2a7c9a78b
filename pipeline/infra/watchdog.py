"""No wait on Ray work is forever: each one fails, naming its stage, when nothing has progressed for `stall_s`.

A Ray job whose work cannot be placed (resources the cluster lacks, a stage starved by another) waits silently; the
failure says which stage stalled and what the cluster holds and is waiting for, so the user knows what to change.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

DEFAULT_STALL_S = 600.0

# The stages whose `watched` call was given up on: its thread is still inside Ray (see end_process).
_abandoned: list[str] = []


class StallError(RuntimeError):
    """A stage made no progress for the configured time."""


def waiting() -> list[str] | None:
    """What the cluster has been asked to run but cannot place (actors, tasks and placement groups, by name), or
    None when Ray's state API cannot tell."""
    import ray
    from ray.util import state

    address = ray.get_runtime_context().gcs_address  # this driver's cluster, not another one on the machine
    found = []
    try:
        queries = (
            ("actor", state.list_actors, ("state", "=", "PENDING_CREATION"), "class_name"),
            ("task", state.list_tasks, ("state", "=", "PENDING_NODE_ASSIGNMENT"), "name"),
            ("placement group", state.list_placement_groups, ("state", "=", "PENDING"), "name"),
        )
        for kind, query, condition, key in queries:
            items = query(address=address, filters=[condition], limit=1000, raise_on_missing_output=False)
            for name, n in Counter(getattr(i, key) or "?" for i in items).most_common(5):
                found.append(f"{n} {kind}(s) {name}")
    except Exception:  # the state API is a diagnosis aid: its failure must neither hide nor fake a stall
        return None
    return found


def cluster_state() -> str:
    """One line: the cluster's resources (free / total) and what waits to be placed."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    shown = ", ".join(f"{k} {free.get(k, 0):g}/{total[k]:g} free" for k in ("CPU", "GPU") if k in total)
    pending = waiting()
    listed = "unknown (Ray's state API did not answer)" if pending is None else ", ".join(pending) or "nothing"
    return f"cluster: {shown or 'no resources'}; waiting to be placed: {listed}"


def stalled(stage: str, stall_s: float) -> StallError:
    return StallError(
        f"{stage}: no progress for {stall_s:.0f} s ({cluster_state()}). If work cannot be placed, ask for fewer "
        "resources or add nodes; a slow stage can be given longer with --stall-timeout."
    )


def wait_or_fail(refs: list, stall_s: float, stage: str, num_returns: int = 1) -> tuple[list, list]:
    """ray.wait for `num_returns` of `refs` (fewer when `stall_s` passes first), failing after `stall_s` without any."""
    import ray

    done, pending = ray.wait(refs, num_returns=num_returns, timeout=stall_s)
    if not done:
        raise stalled(stage, stall_s)
    return done, pending


_END = object()


def watch(items: Iterable[T], stall_s: float, stage: str) -> Iterator[T]:
    """Yield from `items` (e.g. a Ray Data iterator), failing when the next item takes longer than `stall_s`.

    The iterator runs in a thread and hands items over one at a time; when the caller stops (a stall, or any
    error) the thread stops at its next item and closes the iterator.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=1.0)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not hand(item):
                    return
            hand(_END)
        except BaseException as e:  # re-raised in the caller's thread
            hand(e)
        finally:  # a closed Ray Data iterator shuts its execution down
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    threading.Thread(target=produce, daemon=True, name=f"watch:{stage}").start()
    try:
        while True:
            try:
                item = handoff.get(timeout=stall_s)
            except queue.Empty:
                raise stalled(stage, stall_s) from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def watched(fn: Callable[[], T], stall_s: float, stage: str, poll_s: float = 2.0) -> T:
    """Run `fn` (one long blocking Ray call: a training run, an evaluation) and fail when the cluster has had work
    it cannot place for `stall_s` without a break; such a call reports no progress of its own to watch."""
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:
            result["error"] = e

    thread = threading.Thread(target=call, daemon=True, name=f"watched:{stage}")
    thread.start()
    stuck_since = None
    while thread.is_alive():
        thread.join(poll_s)
        if not thread.is_alive():
            break
        if not waiting():  # nothing unplaced, or the state API cannot tell: not a stall
            stuck_since = None
        elif stuck_since is None:
            stuck_since = time.monotonic()
        elif time.monotonic() - stuck_since > stall_s:
            _abandoned.append(stage)
            raise stalled(stage, stall_s)
    if "error" in result:
        raise result["error"]
    return result["value"]


def end_process(status: int) -> int:
    """A command's exit status, for its process's last line (`sys.exit(end_process(main()))`).

    A stalled `watched` call leaves its thread inside Ray (a training run cannot be cancelled from outside), and the
    interpreter's teardown under that thread (Ray's own exit handler) crashed the process with SIGSEGV after the
    one-line failure, so a stalled retraining exited -11, not 1. With such a thread the process ends here, at once,
    as a killed driver would (the cluster reclaims the driver's work); otherwise the status is returned.
    """
    if _abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status
