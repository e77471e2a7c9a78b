"""The scoring job's progress line: rows done of the total, the rates, the ETA, shards committed, errors by kind.

On a terminal it redraws in place (tqdm); elsewhere (`ray job logs`, CI, a file) it prints a line at most every
`every_s` seconds. The rates count from the first scored row, not from the start: actor start-up and model loading
would otherwise drag the rate (and the ETA) for the whole run.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from typing import IO

from pipeline.infra.console import duration


class ScoringProgress:
    def __init__(
        self,
        rows: int,
        shards: int,
        say: Callable[[str], None],
        terminal: IO[str] | None = None,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`terminal`: the stream to redraw a bar on; without one, each line goes to `say`."""
        self.rows, self.shards, self.every_s, self.clock = rows, shards, every_s, clock
        self.say = say
        self.done, self.committed, self.errors = 0, 0, Counter()
        self.first: tuple[float, int] | None = None  # (time, rows) when the first scored rows came back
        self.window: deque[tuple[float, int]] = deque()  # recent (time, rows): the rate over the last interval
        self.last_line = self.clock()
        self.bar = None
        if terminal is not None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=rows,
                file=terminal,
                unit="rows",
                bar_format="scoring: {n_fmt}/{total_fmt} rows {percentage:3.0f}% |{bar:20}| {postfix}",
                mininterval=0.5,
                dynamic_ncols=True,
            )

    def update(self, new_rows: int, new_errors: Counter, committed: int) -> None:
        """Rows that just came back (and their errors by kind); shards committed so far."""
        now = self.clock()
        self.done += new_rows
        self.errors.update(new_errors)
        self.committed = committed
        if self.first is None:
            self.first = (now, self.done)
        self.window.append((now, self.done))
        while len(self.window) > 2 and now - self.window[1][0] >= self.every_s:
            self.window.popleft()
        if self.bar is not None:
            self.bar.set_postfix_str(self.details(now), refresh=False)
            self.bar.update(new_rows)
        elif now - self.last_line >= self.every_s:
            self.last_line = now
            self.say(self.line(now))

    def rates(self, now: float) -> tuple[float | None, float | None]:
        """(rows/s over the last interval, rows/s since the first scored row); None before there is a span."""
        (t0, r0), (t1, r1) = self.window[0], self.window[-1]
        recent = (r1 - r0) / (t1 - t0) if t1 > t0 else None
        since = (self.done - self.first[1]) / (now - self.first[0]) if self.first and now > self.first[0] else None
        return recent, since or None

    def details(self, now: float) -> str:
        recent, since = self.rates(now)
        parts = []
        if since:
            parts.append(f"{recent or 0:.1f} rows/s ({since:.1f} since the first row), ETA {self.eta(since)}")
        parts.append(f"shards {self.committed}/{self.shards} committed")
        if self.errors:
            parts.append("errors: " + ", ".join(f"{k} {n}" for k, n in sorted(self.errors.items())))
        return ", ".join(parts)

    def eta(self, rate: float) -> str:
        return duration((self.rows - self.done) / rate)

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        percent = 100 * self.done / self.rows if self.rows else 100.0
        return f"scoring: {self.done:,}/{self.rows:,} rows ({percent:.1f}%), {self.details(now)}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
