"""Object storage through fsspec: any URL (s3://, gs://, file://, a plain path), with retries on transient errors.

S3-compatible endpoints and credentials come from the standard AWS environment variables (AWS_ENDPOINT_URL, ...),
which s3fs/botocore read themselves.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pyarrow.fs import FSSpecHandler, PyFileSystem

T = TypeVar("T")

ATTEMPTS = 4
BASE_DELAY_S = 0.5
# Errors that another try cannot fix. (Arrow reports corrupt Parquet pages as a plain OSError, like a storage error:
# those are retried, and fail after the retries.)
PERMANENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError, TypeError)
# OS error numbers that mean "this name can never work": too long, a directory, an invalid argument (s3fs maps
# S3's KeyTooLongError to ENAMETOOLONG and InvalidBucketName/InvalidURI/InvalidArgument to EINVAL).
BAD_NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EISDIR, errno.EINVAL})


def is_bad_name(e: BaseException) -> bool:
    """The error says the URI itself can never work (so retrying it is pointless): see BAD_NAME_ERRNOS.

    Also a ValueError from a filesystem call (a NUL byte in a local path, an s3fs non-key path) and botocore's
    client-side ParamValidationError (a bucket name S3 would refuse).
    """
    if isinstance(e, (IsADirectoryError, ValueError)) or type(e).__name__ == "ParamValidationError":
        return True
    return isinstance(e, OSError) and e.errno in BAD_NAME_ERRNOS


def retry(fn: Callable[[], T], what: str, attempts: int = ATTEMPTS) -> T:
    """Call fn, retrying transient storage errors (timeouts, resets, throttling, 5xx) with exponential backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except PERMANENT:
            raise
        except Exception as e:
            if is_bad_name(e):
                raise
            if attempt == attempts - 1:
                raise OSError(f"{what}: {type(e).__name__}: {e} (after {attempts} attempts)") from e
            time.sleep(BASE_DELAY_S * 2**attempt)
    raise AssertionError("unreachable")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(url)


def absolute(url: str) -> str:
    """Plain local paths made absolute: Ray workers (and Ray Train's) do not share the driver's working directory."""
    return url if "://" in url else os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def basename(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return retry(lambda: fs.exists(path), f"exists {url}")


def read_text(url: str) -> str:
    fs, path = filesystem(url)
    return retry(lambda: fs.cat_file(path), f"read {url}").decode()


def put(url: str, data: bytes) -> None:
    """Write a whole object atomically: readers see the old object or the new one, never half of it.

    An object-store PUT is atomic by itself; on a local disk write a temporary file and rename it over the target.
    """
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0]
    retry(lambda: fs.makedirs(parent, exist_ok=True), f"mkdir {parent}")
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    else:
        retry(lambda: fs.pipe_file(path, data), f"write {url}")


def write_text(url: str, text: str) -> None:
    put(url, text.encode())


def read_json(url: str) -> Any:
    return json.loads(read_text(url))


def write_json(url: str, obj: Any) -> None:
    write_text(url, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(table: pa.Table, url: str) -> None:
    """Write a whole table as one object, atomically (see put)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    put(url, sink.getvalue().to_pybytes())


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(url)
    return retry(lambda: pq.read_table(path, columns=columns, filesystem=fs), f"read {url}")


def read_parquet_schema(url: str) -> pa.Schema:
    fs, path = filesystem(url)
    return retry(lambda: pq.read_schema(path, filesystem=fs), f"read schema of {url}")


def read_parquet_num_rows(url: str) -> int:
    """The rows of a Parquet file, from its footer alone."""
    fs, path = filesystem(url)
    return retry(lambda: pq.read_metadata(path, filesystem=fs).num_rows, f"read metadata of {url}")


def arrow_filesystem(url: str) -> tuple[PyFileSystem, str]:
    """A pyarrow view of the fsspec filesystem, for readers (Ray Data) that take pyarrow filesystems."""
    fs, path = filesystem(url)
    return PyFileSystem(FSSpecHandler(fs)), path
