"""Items inside tar archives: a manifest row's uri `tar://<member>::<archive url>` (fsspec's form for a tar member;
the archive on any fsspec filesystem, e.g. `tar://000123.jpg::s3://bucket/shards/00042.tar`).

Such rows are not fetched one by one. The read task (pipeline.corpora.shards.read_rows) groups a shard's rows by
archive and streams each archive once, front to back (tarfile's stream mode over one sequential read: no request per
member, no seeking, never the whole archive in memory), handing each wanted member's bytes to its row; the rows of
one archive go on to be decoded together. What cannot be read is the row's error, with its own kind:

    archive_not_found   the archive does not exist
    archive_truncated   the archive ends before the row's member (cut inside a member, or before its end marker)
    not_in_archive      the archive is whole and has no member of that name
    archive_error       the archive cannot be read (not a tar, a storage error after retries)
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.infra import store
from pipeline.infra.media import MediaError

PREFIX = "tar://"
# The archive is read in blocks of this size: one request each on an object store, a few members at a time.
READ_BLOCK = 8 * 1024**2
_END = bytes(1024)  # a tar ends with two zero blocks of 512 bytes


def split_tar_uri(uri: str) -> tuple[str, str] | None:
    """(member, archive url) of a `tar://<member>::<archive url>` uri, or None for any other uri."""
    if not isinstance(uri, str) or not uri.startswith(PREFIX) or "::" not in uri:
        return None
    member, archive = uri[len(PREFIX) :].split("::", 1)
    return member.lstrip("/"), archive


def tar_uri(member: str, archive: str) -> str:
    return f"{PREFIX}{member}::{archive}"


class _Tail:
    """A file's reader that keeps the last bytes it returned: a tar whose stream ends without its end marker was
    cut at a member boundary (tarfile's stream mode ends there silently)."""

    def __init__(self, fh) -> None:
        self.fh, self.tail = fh, b""

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.tail = (self.tail + data)[-len(_END) :]
        return data


def stream_members(archive: str, wanted: set[str], limit: int) -> Iterator[tuple[str, bytes | MediaError]]:
    """(member, its bytes or the MediaError that stands for them) for every name in `wanted`, in archive order, then
    the wanted names the archive did not give, each with its error. A member over `limit` bytes is refused
    (too_large) from its header, unread."""
    left = set(wanted)
    try:
        fs, path = store.filesystem(archive)
        with fs.open(path, "rb", block_size=READ_BLOCK) as fh:
            reader = _Tail(fh)
            with tarfile.open(fileobj=reader, mode="r|*") as tar:
                for info in tar:
                    name = info.name.lstrip("/")
                    if name not in left:
                        continue
                    if not info.isfile():
                        got = MediaError("bad_uri", f"{tar_uri(name, archive)} is not a file in the archive")
                    elif info.size > limit:
                        got = MediaError("too_large", f"{tar_uri(name, archive)} has {info.size} bytes")
                    else:
                        got = tar.extractfile(info).read()  # a cut inside the member raises here: still left
                    left.discard(name)
                    yield name, got
                    if not left:
                        return
            cut = reader.tail != _END
    except FileNotFoundError as e:
        yield from ((n, MediaError("archive_not_found", f"{archive}: {e}")) for n in sorted(left))
        return
    except (tarfile.ReadError, EOFError) as e:  # cut inside a header or a member's data, or not a tar at all
        kind = "archive_error" if "empty file" in str(e) or "invalid header" in str(e) else "archive_truncated"
        yield from ((n, MediaError(kind, f"{archive}: {type(e).__name__}: {e}")) for n in sorted(left))
        return
    except Exception as e:  # storage errors (s3fs retries its reads first), permissions, a bad URL
        yield from ((n, MediaError("archive_error", f"{archive}: {type(e).__name__}: {e}")) for n in sorted(left))
        return
    kind, why = ("archive_truncated", "ends before its end marker") if cut else ("not_in_archive", "has no such member")
    yield from ((n, MediaError(kind, f"{tar_uri(n, archive)}: the archive {why}")) for n in sorted(left))


def read_members(uris: list[str], limit: int) -> dict[str, bytes | MediaError]:
    """uri -> its bytes (or the MediaError that stands for them) for each tar:// uri among `uris`, each archive
    streamed once (stream_members), the archives side by side; other uris are left out. For a few items (the
    report's thumbnails): the scoring job streams its archives in its read tasks (pipeline.corpora.shards)."""
    wanted: dict[str, dict[str, list[str]]] = {}  # archive -> member -> the uris that name it
    for uri in uris:
        split = split_tar_uri(uri)
        if split is not None:
            wanted.setdefault(split[1], {}).setdefault(split[0], []).append(uri)

    def read(archive: str) -> list[tuple[str, bytes | MediaError]]:
        members = wanted[archive]
        return [(uri, got) for member, got in stream_members(archive, set(members), limit) for uri in members[member]]

    with ThreadPoolExecutor(max_workers=8) as pool:  # object-store reads overlap
        return {uri: got for pairs in pool.map(read, wanted) for uri, got in pairs}
