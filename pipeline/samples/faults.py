"""A fault-injecting HTTP proxy for an S3 endpoint: measures and stresses how the job reads object storage.

    with FaultProxy("http://127.0.0.1:5000", fault_rate=0.1, delay_s=0.02) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url      # s3fs/botocore now talk to the proxy
        ...
        proxy.counts()   # {"GET": 120, "HEAD": 3, ...}, faulted requests included; proxy.faults() likewise

Each request waits `delay_s` (a store's first-byte latency), then fails with probability `fault_rate` with the 503
SlowDown that S3 sends when it throttles (the request never reaches the endpoint), or is forwarded and its response
relayed whole. Requests are counted by method, and by method for the keys that `track` matches (e.g. the media
objects only, leaving out the manifest and listing requests); the most tracked requests in flight at once is kept too
(`peak_in_flight`: how far reads overlap, counted rather than timed). Used by tests/test_fetch.py and
jobs/benchmark_fetch.py.

It is a test and benchmark tool: one upstream, whole bodies in memory, no TLS.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)
# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own; the body is relayed with its length instead of chunked.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultProxy:
    """A threaded HTTP proxy in front of one endpoint; a context manager that starts and stops it."""

    def __init__(
        self,
        upstream: str,
        fault_rate: float = 0.0,
        delay_s: float = 0.0,
        track: Callable[[str], bool] = lambda path: True,
        seed: int | None = 0,
    ) -> None:
        if not 0.0 <= fault_rate < 1.0:
            raise ValueError(f"fault_rate must be in [0, 1), got {fault_rate}")
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.fault_rate, self.delay_s, self.track = fault_rate, delay_s, track
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._first: float | None = None  # perf_counter of the first and last tracked requests
        self._last: float | None = None
        self._in_flight = self._peak = 0  # tracked requests being handled now, and the most at once
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._first = self._last = None
            self._peak = self._in_flight

    def counts(self, tracked: bool = False, faulted: bool = False) -> dict[str, int]:
        """Requests by method: all of them, or only those `track` matched; with `faulted`, only the failed ones."""
        total: Counter = Counter()
        with self._lock:
            for (method, is_tracked, is_fault), n in self._counts.items():
                if (is_tracked or not tracked) and (is_fault or not faulted):
                    total[method] += n
        return dict(sorted(total.items()))

    def window_s(self) -> float:
        """Seconds from the first tracked request to the last: the reading itself, without a job's start-up."""
        with self._lock:
            return self._last - self._first if self._first is not None else 0.0

    def peak_in_flight(self) -> int:
        """The most tracked requests the proxy was handling at once (since the start or the last reset)."""
        with self._lock:
            return self._peak

    def _flight(self, step: int) -> None:
        with self._lock:
            self._in_flight += step
            self._peak = max(self._peak, self._in_flight)

    def _record(self, method: str, path: str, fault: bool) -> None:
        tracked, now = self.track(path), time.perf_counter()
        with self._lock:
            self._counts[(method, tracked, fault)] += 1
            if tracked:
                self._first = now if self._first is None else self._first
                self._last = now

    def _should_fault(self) -> bool:
        with self._lock:
            return self._random.random() < self.fault_rate

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections to a real store

            def log_message(self, *args) -> None:  # one line per request otherwise
                pass

            def _relay(self) -> None:
                tracked = proxy.track(self.path)
                if tracked:
                    proxy._flight(+1)
                try:
                    self._forward()
                finally:
                    if tracked:
                        proxy._flight(-1)

            def _forward(self) -> None:
                body = self._read_body()
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                fault = proxy._should_fault()
                proxy._record(self.command, self.path, fault)
                if fault:
                    self._send(503, [("Content-Type", "application/xml")], b"" if self.command == "HEAD" else SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    relayed = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
                    self._send(response.status, relayed, data, head=self.command == "HEAD")
                finally:
                    upstream.close()

            def _read_body(self) -> bytes | None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes, head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() != "content-length":
                        self.send_header(k, v)
                # A HEAD's length is the object's, as upstream said; the body is never sent.
                length = dict((k.lower(), v) for k, v in headers).get("content-length") if head else None
                self.send_header("Content-Length", length if length is not None else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _relay

        return Handler


def start_s3_server() -> tuple[object, str]:
    """moto's S3 server on loopback with throwaway credentials in the environment (the benchmarks' object store).
    Returns (server, endpoint URL); stop it with `server.stop()`."""
    import logging
    import os

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    return server, f"http://{host}:{port}"
