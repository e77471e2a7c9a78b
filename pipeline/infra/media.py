"""Load images and videos from any fsspec URL into RGB uint8 frames.

`load_media` is the single entry point used by the CPU decode stage of the pipeline. It never raises anything
but `MediaError`, whose `kind` is one of `ERROR_KINDS`: a bad item becomes an error row with that kind, and
the job goes on (DESIGN.md section 5).

Order of checks, cheapest first: media type, URI scheme, object size against the media type's byte limit, a sniff
of the first KB for the format (objects over SNIFF_ABOVE_BYTES only), the bytes, decode. On S3 all of it comes from
one ranged GET (the size from its headers, before the body is read); elsewhere from metadata, then bounded reads.
`Prefetcher` keeps several reads in flight per decode worker while decoding stays one row at a time.

Decisions worth knowing:
- Transparent images (RGBA, LA, P with transparency) are composited on WHITE, not alpha-dropped: the colour
  stored under fully transparent pixels is arbitrary (often black or junk) and would distort a quality score.
- 16-bit images are scaled to 8 bits (v / 257, rounded), never clipped. Pillow alone clips I;16 -> L.
- The pixel limit is checked from the header, before any pixel is decoded. PIL's own decompression-bomb
  limit is set to the same value so that PIL refuses at exactly the same size.
- The bytes are read with a bounded range (at most the limit + 1 byte), so a missing or stale size in the metadata
  never lets an object cost more memory than its media type's limit.
- Large JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (`draft_side`, set from the model's processor:
  never below twice its input side, so the processor's antialiased resize still makes the final step), which cuts
  decode time several-fold; the model's preprocessed pixels change by well under one level (tests/test_media.py).
- Videos are decoded from memory (BytesIO) by decord: the whole object is read once (it is at most
  `max_video_bytes`), which also gives object stores one sequential GET instead of many small range reads. What decord
  cannot open or decode (its FFmpeg has no AV1 decoder and fails on some tiny frame sizes) is decoded by PyAV with the
  same sampling; only when both fail is the video an error, naming the codec when the container says it.
- OS errors that mean the URI can never work (ENAMETOOLONG, EISDIR, EINVAL, a malformed name) are `bad_uri` at once,
  without retries.
"""

from __future__ import annotations

import errno
import io
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import fsspec
import fsspec.asyn
import numpy as np
import pillow_heif
from PIL import Image, ImageOps

from pipeline.infra import store

ERROR_KINDS = (
    "bad_scheme",
    "bad_uri",
    "not_found",
    "empty",
    "too_large",
    "decode_error",
    "no_frames",
    "io_error",
    "bad_media_type",
    # a tar member's (pipeline.corpora.tars)
    "archive_not_found",
    "archive_truncated",
    "not_in_archive",
    "archive_error",
)
# Raised while an item is prepared for a model, not by load_media: items the model cannot take (an aspect ratio over
# its processor's limit, a video given to a scorer of single images).
MODEL_LIMIT_KINDS = ("aspect_ratio", "video_not_supported")
MEDIA_TYPES = ("image", "video")

# HEIF/HEIC (iPhone photos) decoded by libheif through pillow-heif's Pillow plugin, registered for every process that
# imports this module (Ray's decode workers too). AVIF stays Pillow's own plugin.
pillow_heif.register_heif_opener()

# Storage retries: a few attempts with exponential backoff (0.5 s, 1 s). Module-level so tests can set them.
READ_ATTEMPTS = 3
RETRY_BASE_DELAY_S = 0.5


class MediaError(Exception):
    """An item that cannot be loaded. `kind` is one of ERROR_KINDS, `message` says what happened."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __reduce__(self):
        # Keep (kind, message) across pickling: Ray ships exceptions between processes.
        return (type(self), (self.kind, self.message))


@dataclass
class Media:
    frames: list[np.ndarray]  # RGB uint8 HxWx3; one for an image, the sampled frames in order for a video
    media_type: str  # "image" | "video"
    fps: float | None  # the video's native fps (None for images, or when the container does not say)
    frame_indices: list[int]  # which source frames were taken (images: [0])
    num_source_frames: int  # total frames in the source (images: 1)


@dataclass(frozen=True)
class MediaOptions:
    sample_fps: float = 1.0  # video sampling rate
    # Cap (a deviation from Q-Align, which has none): a video with more sampled frames keeps a uniform subset of them.
    max_frames: int = 16
    # Instead of sampling at sample_fps: exactly this many frames spread uniformly over the whole video, a shorter
    # clip repeating frames (Q-ReAlign's 8).
    uniform_frames: int | None = None
    max_pixels: int = 64_000_000  # more pixels than this: refused from the header (decompression bombs)
    # Objects larger than these are refused (too_large) from their metadata, before any byte is read. 256 MiB holds
    # an uncompressed 8-bit RGBA image at the pixel limit (64 MP x 4 bytes); a video is read whole into memory once.
    max_image_bytes: int = 256 * 1024**2
    max_video_bytes: int = 2 * 1024**3
    # A plain path (no "://") counts as "file".
    allowed_schemes: tuple[str, ...] = ("file", "s3", "gs", "gcs", "az", "abfs", "memory")
    # Large JPEGs are decoded at a reduced DCT scale (1/2, 1/4, 1/8: libjpeg's, through Pillow's Image.draft) when
    # the decoded image still has at least `draft_side` pixels on each side. Only a scorer that knows its model's
    # input size sets draft_side (pipeline.scorers.lmm: twice the processor's side, so the processor's own
    # antialiased resize still makes the final step); None decodes at full size. See draft_side_for.
    draft: bool = True
    draft_side: int | None = None
    # Items fetched at once by one decode worker (pipeline.scoring.stages.PrepareStage, through Prefetcher):
    # object-store reads are latency-bound, so a worker keeps this many in flight while it decodes the one in hand.
    fetch_concurrency: int = 8

    def __post_init__(self) -> None:
        # A bad option is a configuration bug, so it fails at construction, not as a per-item error.
        if not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {self.sample_fps}")
        for name in (
            *("max_frames", "max_pixels", "max_image_bytes", "max_video_bytes", "uniform_frames"),
            *("draft_side", "fetch_concurrency"),
        ):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def max_bytes(self, media_type: str) -> int:
        """The byte limit of one media type."""
        return self.max_video_bytes if media_type == "video" else self.max_image_bytes


# ------------------------------------------------------------------------------------------------------------
# Reading bytes


def uri_scheme(uri: str) -> str:
    """The URI's scheme in lower case; a plain path (no "://") counts as "file"."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


# Objects up to this size are read whole and sniffed from the bytes in hand (one GET: most images are small);
# larger ones have their first SNIFF_BYTES read and checked before the rest is fetched.
SNIFF_BYTES = 1024
SNIFF_ABOVE_BYTES = 1024**2


def read_bytes(uri: str, options: MediaOptions = MediaOptions(), media_type: str = "image") -> bytes:
    """Read a whole object through fsspec, retrying transient storage errors. Raises MediaError only.

    The object's size (metadata) is checked against the media type's byte limit and its first bytes against the
    media type's formats before the object is read; the read itself never takes more than the limit + 1 byte.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise MediaError("bad_scheme", f"uri must be a non-empty string, got {uri!r}")
    given = getattr(_ACTIVE, "given", None)
    if given is not None and given[0] == uri:
        return _checked_given(given[1], uri, options, media_type)
    scheme = uri_scheme(uri)
    if scheme not in {s.lower() for s in options.allowed_schemes}:
        allowed = ", ".join(options.allowed_schemes)
        raise MediaError("bad_scheme", f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except ImportError as e:  # backend not installed (e.g. gcsfs): a deployment problem, not the item's
        raise MediaError("io_error", f"cannot open a filesystem for {uri}: {e}") from e
    except ValueError as e:  # malformed URL: it can never work
        raise MediaError("bad_uri", f"{uri}: {e}") from e

    prefetched = _prefetched(uri, options, media_type)
    if prefetched is not None:
        return prefetched.result()  # the bytes, or the MediaError that reading them raised
    last_error: Exception | None = None
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(RETRY_BASE_DELAY_S * 2 ** (attempt - 1))
        try:
            if _is_s3(fs):
                return _read_s3(fs, path, uri, options.max_bytes(media_type), media_type)
            return _read_once(fs, path, uri, options, media_type)
        except MediaError:
            raise
        except (FileNotFoundError, NotADirectoryError) as e:
            if _is_s3(fs) and _is_s3_prefix(fs, path):  # what the HEAD path called a directory
                raise MediaError("bad_uri", f"{uri} is a directory, not an object") from e
            raise MediaError("not_found", f"{uri}: {e}") from e
        except PermissionError as e:  # access denied is not transient
            raise MediaError("io_error", f"permission denied: {uri}: {e}") from e
        except Exception as e:
            if store.is_bad_name(e):  # too long, a directory, an invalid name: no retry can fix it
                raise MediaError("bad_uri", f"{_shorten(uri)}: {type(e).__name__}: {_shorten(str(e))}") from e
            last_error = e  # timeouts, connection resets, throttling, 5xx: worth another try
    raise MediaError(
        "io_error", f"{uri}: {type(last_error).__name__}: {last_error} (after {READ_ATTEMPTS} attempts)"
    ) from last_error


def _read_once(fs: fsspec.AbstractFileSystem, path: str, uri: str, options: MediaOptions, media_type: str) -> bytes:
    """Any filesystem: the size from metadata (free on local disks and in memory), then bounded reads."""
    # One metadata request first, so that an oversized object is refused without downloading it.
    info = fs.info(path)
    if info.get("type") == "directory":
        raise MediaError("bad_uri", f"{uri} is a directory, not an object")
    limit = options.max_bytes(media_type)
    size = info.get("size")
    if size is not None:
        _check_size(int(size), uri, limit)
    small = size is not None and int(size) <= SNIFF_ABOVE_BYTES
    if not small:  # a large (or unsized) object: its first KB must look like the media type before the rest
        sniff_format(fs.cat_file(path, start=0, end=SNIFF_BYTES), media_type, uri)
    # A bounded range: the listed size may be missing or stale, and an object must never cost more than its limit.
    data = fs.cat_file(path, start=0, end=limit + 1)
    _check_size(len(data), uri, limit, read=True)
    if small:  # sniffed from the bytes in hand: one request instead of two
        sniff_format(data[:SNIFF_BYTES], media_type, uri)
    return data


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    return "s3" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "s3"


def _read_s3(fs, path: str, uri: str, limit: int, media_type: str) -> bytes:
    """S3 in ONE request, whatever the object's size: a GET of the range [0, limit], streamed.

    The response's headers (Content-Range: "bytes 0-N/TOTAL") give the object's size before any of its body is
    read, so the limit is checked as the HEAD used to check it, and an oversized object is refused with the
    connection closed and its body unread. Objects over SNIFF_ABOVE_BYTES have their first KB read off the
    stream and sniffed before the rest. The range bounds the read at limit + 1 bytes even if the size is stale.
    """
    return fsspec.asyn.sync(fs.loop, _get_s3, fs, path, uri, limit, media_type)


async def _get_s3(fs, path: str, uri: str, limit: int, media_type: str) -> bytes:
    bucket, key, version = fs.split_path(path)
    if not key:
        raise MediaError("bad_uri", f"{uri} is a bucket, not an object")
    versioned = {"VersionId": version} if version else {}
    try:
        # s3fs's call: its session, region and credential handling, and its retries on SlowDown and dropped reads
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{limit}", **versioned)
    except OSError as e:
        # 416 InvalidRange (s3fs: EINVAL) for a range that starts at byte 0 means the object has no bytes; other
        # EINVALs (an invalid name) stay bad_uri. Told apart by the object's metadata: one more request, rarely.
        if e.errno == errno.EINVAL and (await fs._info(path)).get("size") == 0:
            raise MediaError("empty", f"{uri} has zero bytes") from e
        raise
    body = response["Body"]
    try:
        size = _object_size(response)
        if size is not None:
            _check_size(size, uri, limit)
        small = size is not None and size <= SNIFF_ABOVE_BYTES
        head = b""
        if not small:
            head = await _read_up_to(body, SNIFF_BYTES)
            sniff_format(head, media_type, uri)
        data = head + await _read_up_to(body, limit + 1 - len(head))
    finally:
        body.close()  # a refused object's unread body is dropped with its connection, never downloaded
    _check_size(len(data), uri, limit, read=True)
    if small:
        sniff_format(data[:SNIFF_BYTES], media_type, uri)
    return data


def _object_size(response: dict) -> int | None:
    """The whole object's size from a ranged GET: Content-Range's total, else (a 200 without a range) its length."""
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.get("ContentRange") or "")
    if match:
        return int(match.group(1))
    if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
        length = response.get("ContentLength")
        return int(length) if length is not None else None
    return None


async def _read_up_to(body, n: int) -> bytes:
    """At most n bytes off a streamed body (a read may return fewer than asked before the end)."""
    chunks, got = [], 0
    while got < n:
        chunk = await body.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _is_s3_prefix(fs, path: str) -> bool:
    """The missing key is a prefix of other keys (a "directory"). Asked only after a GET found nothing."""
    try:
        return fs.isdir(path)
    except Exception:
        return False


def _check_size(size: int, uri: str, limit: int, read: bool = False) -> None:
    """`read`: `size` is what a read bounded at limit + 1 returned, so more than the limit means "at least"."""
    if size == 0:
        raise MediaError("empty", f"{uri} has zero bytes")
    if size > limit:
        got = f"more than {limit} bytes" if read else f"{size} bytes"
        raise MediaError("too_large", f"{uri} has {got}, over the limit of {limit}")


def _shorten(text: str, keep: int = 200) -> str:
    # A URI too long for the filesystem would otherwise fill the error column with kilobytes of name.
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"


@contextmanager
def given_bytes(uri: str, data: bytes | MediaError) -> Iterator[None]:
    """Within the block, `read_bytes(uri)` in this thread returns `data` instead of reading the object (or raises it,
    a MediaError): the bytes a manifest or an archive already holds (pipeline.scoring.stages.PrepareStage). They are
    checked as a read's are: the media type's byte limit, then the format from the first bytes."""
    _ACTIVE.given = (uri, data)
    try:
        yield
    finally:
        _ACTIVE.given = None


def _checked_given(data: bytes | MediaError, uri: str, options: MediaOptions, media_type: str) -> bytes:
    if isinstance(data, MediaError):
        raise data
    _check_size(len(data), uri, options.max_bytes(media_type))
    sniff_format(data[:SNIFF_BYTES], media_type, uri)
    return data


# ------------------------------------------------------------------------------------------------------------
# Fetching ahead: a decode worker keeps several reads in flight while it decodes one item

ReadKey = tuple[str, str, int, tuple[str, ...]]
_ACTIVE = threading.local()  # the Prefetcher of the thread that prepares rows, if any


def _read_key(uri: str, options: MediaOptions, media_type: str) -> ReadKey:
    # What decides a read's outcome: a read made under other limits or schemes is not reused.
    return (uri, media_type, options.max_bytes(media_type), tuple(options.allowed_schemes))


def _prefetched(uri: str, options: MediaOptions, media_type: str) -> Future | None:
    prefetcher = getattr(_ACTIVE, "prefetcher", None)
    return prefetcher.take(uri, options, media_type) if prefetcher is not None else None


class Prefetcher:
    """Reads the objects of the rows ahead of the one being prepared, `options.fetch_concurrency` rows at a time.

        with Prefetcher([[(uri, media_type), ...] for each row], options) as prefetch:
            for i, row in enumerate(rows):
                prefetch.advance(i)
                prepare(row)        # its load_media/read_bytes takes row i's bytes from the prefetch

    Decoding stays in the caller's thread, one row at a time, in order; only the reads run ahead. A read is the
    same `read_bytes` (limits, sniff, retries), so a row's bytes or its MediaError are exactly what a read in the
    caller's thread would have given. Memory: at most `fetch_concurrency` rows' objects are held or in flight,
    and a row's bytes are released once it is taken (or skipped: what an earlier row did not take is dropped).
    A read the prefetch does not hold (another URI, other limits) is made in the caller's thread as before.
    """

    def __init__(self, rows: list[list[tuple[str, str]]], options: MediaOptions) -> None:
        self.rows, self.options = rows, options
        self.window = options.fetch_concurrency
        self._pool = ThreadPoolExecutor(self.window, "fetch") if self.window > 1 and len(rows) > 1 else None
        self._futures: dict[int, dict[ReadKey, Future]] = {}
        self._submitted = 0  # rows whose reads were submitted
        self._current = -1

    def __enter__(self) -> Prefetcher:
        if self._pool is not None:
            _ACTIVE.prefetcher = self
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.prefetcher = None
        for futures in self._futures.values():
            for future in futures.values():
                future.cancel()
        self._futures.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # no read outlives the batch

    def advance(self, row: int) -> None:
        """Row `row` is prepared next: drop what earlier rows left, submit the reads of the rows in the window."""
        self._current = row
        for done in [r for r in self._futures if r < row]:
            for future in self._futures.pop(done).values():
                future.cancel()
        if self._pool is None:
            return
        while self._submitted < min(len(self.rows), row + self.window):
            reads = {}
            for uri, media_type in self.rows[self._submitted]:
                if isinstance(uri, str) and media_type in MEDIA_TYPES:
                    key = _read_key(uri, self.options, media_type)
                    reads.setdefault(key, self._pool.submit(read_bytes, uri, self.options, media_type))
            self._futures[self._submitted] = reads
            self._submitted += 1

    def take(self, uri: str, options: MediaOptions, media_type: str) -> Future | None:
        """The current row's read of this object (the caller's thread only), or None."""
        return self._futures.get(self._current, {}).pop(_read_key(uri, options, media_type), None)


# ------------------------------------------------------------------------------------------------------------
# Sniffing the format from the first bytes

# Video containers FFmpeg (decord, PyAV) reads, by their signatures: (name, offset, magic).
VIDEO_SIGNATURES = (
    ("MP4/MOV", 4, (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")),
    ("Matroska/WebM", 0, (b"\x1a\x45\xdf\xa3",)),
    ("AVI", 8, (b"AVI ", b"AVIX")),  # after "RIFF" and the size
    ("FLV", 0, (b"FLV",)),
    ("Ogg", 0, (b"OggS",)),
    ("ASF/WMV", 0, (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11",)),
    ("MPEG-PS/ES", 0, (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")),
    ("H.264/HEVC Annex B", 0, (b"\x00\x00\x00\x01",)),
    ("IVF", 0, (b"DKIF",)),
    ("Y4M", 0, (b"YUV4MPEG2",)),
    ("RealMedia", 0, (b".RMF",)),
    ("MXF", 0, (b"\x06\x0e\x2b\x34",)),
    ("GIF", 0, (b"GIF87a", b"GIF89a")),  # animated GIFs are videos to FFmpeg
)


# ISO-BMFF brands of still images (and image sequences) in HEIF and AVIF files: their `ftyp` box is an MP4's, the
# brand tells them apart. HEIC photos have major brand heic (or mif1); AVIF ones avif (avis: an animated AVIF).
IMAGE_BRANDS = {
    b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"mif2", b"msf1", b"avif",
    b"avis", b"avci", b"avcs",
}  # fmt: skip


def is_image_brand(head: bytes) -> bool:
    """The first bytes are an ISO-BMFF `ftyp` box whose major brand is a HEIF or AVIF image's."""
    return head[4:8] == b"ftyp" and head[8:12] in IMAGE_BRANDS


def video_container(head: bytes) -> str | None:
    """The video container the first bytes announce (not a HEIF or AVIF image's ftyp box), or None."""
    if is_image_brand(head):
        return None
    for name, offset, magics in VIDEO_SIGNATURES:
        if any(head[offset : offset + len(m)] == m for m in magics):
            return name
    if head[:1] == b"\x47" and (len(head) <= 188 or head[188:189] == b"\x47"):  # MPEG-TS: a sync byte per packet
        return "MPEG-TS"
    return None


def image_format(head: bytes) -> str | None:
    """The image format PIL recognises from the first bytes, or None.

    PIL's own recognisers decide: each plugin's prefix check, then, for the few formats that have none (TGA, IM,
    SPIDER, ...), a header parse of the bytes in hand, which those short headers fit in.
    """
    Image.init()
    unchecked = []
    for name, (_, accept) in Image.OPEN.items():
        if accept is None:
            unchecked.append(name)
        elif accept(head):
            return name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head), formats=unchecked) as img:
                return img.format
    except Exception:
        return None


def sniff_format(head: bytes, media_type: str, uri: str) -> None:
    """Raise decode_error when the first bytes are not of the media type (saying what they look like instead)."""
    if media_type == "video":
        if video_container(head) is None:
            other = image_format(head)
            what = f"an image ({other})" if other else "no known video container"
            raise MediaError("decode_error", f"{uri}: not a video: the first bytes show {what}")
    elif image_format(head) is None:
        other = video_container(head)
        what = f"a video ({other})" if other else "no known image format"
        raise MediaError("decode_error", f"{uri}: not an image: the first bytes show {what}")


# ------------------------------------------------------------------------------------------------------------
# Loading


def load_media(uri: str, media_type: str, options: MediaOptions = MediaOptions()) -> Media:
    """Load one image or video as RGB uint8 frames. Raises MediaError (and nothing else) on any failure."""
    if media_type not in MEDIA_TYPES:
        raise MediaError("bad_media_type", f"media_type must be one of {MEDIA_TYPES}, got {media_type!r}")
    data = read_bytes(uri, options, media_type)
    if media_type == "image":
        frame = decode_image(data, options, uri)
        return Media(frames=[frame], media_type="image", fps=None, frame_indices=[0], num_source_frames=1)
    return decode_video(data, options, uri)


def draft_scale(width: int, height: int, side: int) -> int:
    """The JPEG draft's reduction (8, 4, 2; 1: none) for a width x height image and a draft side.

    The largest that keeps both sides >= `side` and keeps the source's pixel grid: both sides, and half their
    difference, divide by it exactly, so that the reduced image is the source at exactly 1/scale and a centred pad
    or crop to a square (mPLUG-Owl2's expand2square, CLIP's centre crop) covers the same source pixels. Without the
    last condition a 4000x3000 photo at 1/8 pads by 62 px instead of 62.5, a shift the processor's output shows.
    """
    for scale in (8, 4, 2):
        exact = width % scale == 0 and height % scale == 0 and (width - height) % (2 * scale) == 0
        if exact and min(width, height) // scale >= side:
            return scale
    return 1


def draft_side_for(*sizes: object, factor: int = 2) -> int | None:
    """The `draft_side` for a processor that resizes images to `sizes` (its `size`, `crop_size`, ... settings).

    `factor` times the largest number they hold, so that the processor's own resize is at least a `factor`-fold
    antialiased downscale of the drafted image, whatever it does with those numbers (shortest or longest edge,
    height and width, a tile). Counts of pixels (Qwen-VL's min/max_pixels under the edge names) read as sides only
    make the draft smaller or nothing, never below what the processor needs. None when no size is known.
    """
    numbers: list[float] = []

    def collect(size: object) -> None:
        if isinstance(size, bool) or size is None:
            return
        if isinstance(size, (int, float)):
            numbers.append(float(size))
        elif isinstance(size, (tuple, list)):  # e.g. LLaVA-NeXT/OneVision's image_grid_pinpoints [[h, w], ...]
            for value in size:
                collect(value)
        elif hasattr(size, "items"):
            for value in size.values():
                collect(value)
        elif hasattr(size, "__dict__"):  # transformers' SizeDict
            for value in vars(size).values():
                collect(value)

    for size in sizes:
        collect(size)
    return int(math.ceil(factor * max(numbers))) if numbers else None


# PIL's decompression-bomb limit is a process-wide global; the lock keeps "set the limit, open" atomic when
# several threads decode with different options.
_PIL_LIMIT_LOCK = threading.Lock()


def decode_image(data: bytes, options: MediaOptions = MediaOptions(), uri: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to an HxWx3 RGB uint8 array. Raises MediaError only."""
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; make it raise at the limit itself.
            Image.MAX_IMAGE_PIXELS = options.max_pixels
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
        width, height = img.size
        if width * height > options.max_pixels:  # explicit too, in case PIL's global was changed meanwhile
            limit = options.max_pixels
            raise MediaError("too_large", f"{uri}: {width}x{height} pixels, over the limit of {limit}")
        scale = draft_scale(width, height, options.draft_side) if options.draft and options.draft_side else 1
        if scale > 1 and img.format == "JPEG":
            # Decoded at 1/scale in the DCT domain: far less to decode; the processor still makes the final resize.
            img.draft(None, (width // scale, height // scale))
        img.load()  # full decode now, so truncated data fails here (LOAD_TRUNCATED_IMAGES stays False)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError("too_large", f"{uri}: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise MediaError("decode_error", f"{uri}: not a recognised image format") from e
    except Exception as e:  # "image file is truncated", codec errors, ...
        raise MediaError("decode_error", f"{uri}: {type(e).__name__}: {e}") from e

    try:
        img = _apply_exif_orientation(img)
        return _to_rgb_array(img)
    except Exception as e:
        raise MediaError("decode_error", f"{uri}: cannot convert {img.mode} to RGB: {e}") from e


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        # A corrupt EXIF block does not make the pixels unusable: viewers show such images unrotated too.
        return img


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> HxWx3 uint8 RGB. Animated images give their first frame (the one `open` selects)."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (PNG/TIFF). Pillow's own convert clips to 255; scale instead. "I" is 32-bit but PIL
        # uses it for 16-bit sources, so values are taken in the 16-bit range.
        grey = np.asarray(img).astype(np.float64)
        grey = np.round(np.clip(grey, 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(img).astype(np.float64)
        grey = grey * 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else grey  # [0,1] floats or [0,255] floats
        grey = np.round(np.clip(np.nan_to_num(grey), 0, 255)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:  # e.g. P or L with tRNS
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        # L, 1, P, CMYK (PIL undoes Adobe's inverted CMYK), YCbCr, LAB, HSV, RGBX; 16-bit RGB(A) PNGs already
        # arrive as 8-bit RGB(A) from PIL (high byte).
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def sample_frame_indices(num_frames: int, native_fps: float | None, options: MediaOptions) -> list[int]:
    """Source frame indices at `sample_fps`, then capped to `max_frames` by uniform subsampling.

    The rule of Q-Align's own video loader (`load_video`, q_align/evaluate/scorer.py), at any rate: with
    step = native_fps / sample_fps, the frames int(i * step) for i in range(int(num_frames / step)): whole sampling
    periods only (a started one adds no frame), indices rounded down. 1 fps on 29.97 fps gives 0, 29, 59, ...; a
    2.5 s video gives 2 frames (tests/goldens/qalign_video_tiny). Two deviations, both outside what the reference
    can do: a video shorter than one period still gives frame 0 (the reference has no frame and fails), and the
    `max_frames` cap (the reference has none and runs out of memory on long videos) keeps a uniform subset of those
    frames, so a video within the cap gets exactly the reference's frames. Without a usable native fps, the frames
    are spread uniformly over the whole video. With `uniform_frames`, exactly that many frames, whatever the fps:
    index int(round(i)) of linspace(0, n - 1, uniform_frames), so a clip with fewer frames repeats some (the
    Q-ReAlign toolkit's sampler: round half to even, as Python's round).
    """
    if num_frames <= 0:
        return []
    if options.uniform_frames is not None:
        return [int(round(i)) for i in np.linspace(0, num_frames - 1, options.uniform_frames)]
    if native_fps is None or not math.isfinite(native_fps) or native_fps <= 0:
        indices = np.arange(num_frames)
    else:
        step = native_fps / options.sample_fps  # at 1 fps exactly the reference's float fps
        count = max(1, int(num_frames / step))
        # Python floats, as the reference: int(fps * i) truncates the same float product.
        # Sampling faster than the native rate would repeat frames; keep each frame once, in order.
        indices = np.unique([int(step * i) for i in range(count)])
    if len(indices) > options.max_frames:
        # Uniform over the sampled frames, first and last included.
        picks = np.round(np.linspace(0, len(indices) - 1, options.max_frames)).astype(np.int64)
        indices = indices[picks]
    return [int(i) for i in indices]


def decode_video(data: bytes, options: MediaOptions = MediaOptions(), uri: str = "<bytes>") -> Media:
    """Decode video bytes and sample frames: decord first, then PyAV where decord fails. Raises MediaError only.

    decord's bundled FFmpeg has no AV1 decoder ("cannot find video stream") and fails on some valid streams (a 16x16
    H.264 video: "Check failed: from_size == to_size"); PyAV brings its own FFmpeg. Both sample the same frames
    (`sample_frame_indices`), so an item's frames do not depend on which decoder read it.
    """
    try:
        return _decode_with_decord(data, options)
    except MediaError as decord_error:
        try:
            return _decode_with_pyav(data, options)
        except MediaError as e:
            # PyAV's verdict counts (it names the codec); decord's reason is kept for whoever debugs the item.
            raise MediaError(e.kind, f"{uri}: {e.message} (decord: {decord_error.message})") from e


def _decode_with_decord(data: bytes, options: MediaOptions) -> Media:
    import decord  # imported here: it is heavy, and image-only workers never need it

    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
    except Exception as e:
        if "cannot find video stream" in str(e):
            # No stream decord can decode: audio-only, a track with no frames, or a codec its FFmpeg lacks.
            raise MediaError("no_frames", "no video stream with frames") from e
        raise MediaError("decode_error", f"{type(e).__name__}: {_first_line(e)}") from e
    try:
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as e:
        raise MediaError("decode_error", f"{type(e).__name__}: {_first_line(e)}") from e
    if num_frames == 0:
        raise MediaError("no_frames", "the video has no frames")
    fps_known = math.isfinite(fps) and fps > 0
    indices = sample_frame_indices(num_frames, fps if fps_known else None, options)
    try:
        batch = reader.get_batch(indices).asnumpy()
    except Exception as e:
        raise MediaError("decode_error", f"{type(e).__name__}: {_first_line(e)}") from e
    if batch.shape[0] == 0:
        raise MediaError("no_frames", "no frame could be decoded")
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[0] != len(indices):
        raise MediaError("decode_error", f"unexpected decoded batch shape {batch.shape}")
    return _video(list(batch), fps if fps_known else None, indices, num_frames)


def _video(frames: list[np.ndarray], fps: float | None, indices: list[int], num_frames: int) -> Media:
    return Media(
        frames=[np.ascontiguousarray(frame, dtype=np.uint8) for frame in frames],
        media_type="video",
        fps=fps,
        frame_indices=indices,
        num_source_frames=num_frames,
    )


def _decode_with_pyav(data: bytes, options: MediaOptions) -> Media:
    """Decode with PyAV: frames are counted (the container's count, else one per demuxed packet), sampled like decord,
    and the sampled ones kept while decoding in presentation order."""
    import av

    codec = "unknown"
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise MediaError("no_frames", "no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.codec.canonical_name if stream.codec_context else "unknown"
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            stated = stream.frames  # 0 when the container does not say (Matroska)
            num_frames = stated or _count_frames(container, stream, codec)
        if num_frames == 0:
            raise MediaError("no_frames", f"the {codec} video has no frames")
        indices = sample_frame_indices(num_frames, fps, options)
        frames, decoded = _pyav_frames(data, indices)
        if len(frames) < len(indices):
            if stated:  # the container promised more frames than its data holds: cut short
                raise MediaError("decode_error", f"{codec} video truncated: {decoded} of {stated} frames decode")
            # Counted from packets, which can outnumber frames: sample again over the frames that exist.
            num_frames = decoded
            indices = sample_frame_indices(num_frames, fps, options)
            if not indices:
                raise MediaError("no_frames", f"no frame of the {codec} video could be decoded")
            frames, _ = _pyav_frames(data, indices)
            if len(frames) != len(indices):  # the same data decoded twice gave different frames: do not guess
                raise MediaError("decode_error", f"{codec} video: {len(frames)} of {len(indices)} sampled frames read")
    except MediaError:
        raise
    except Exception as e:  # av.error.*: no decoder for the codec, invalid data, ...
        raise MediaError("decode_error", f"cannot decode the {codec} video: {type(e).__name__}: {e}") from e
    return _video(frames, fps, indices, num_frames)


def _count_frames(container, stream, codec: str) -> int:
    """Frames by demuxed packets (one per frame), refusing a file whose packets end well before the duration its
    header declares: a truncated Matroska file demuxes without an error, and would be scored from its first part."""
    count, end = 0, None
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            if packet.pts is not None:
                packet_end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                end = packet_end if end is None else max(end, packet_end)
    if container.duration and end is not None:
        declared = container.duration / 1_000_000  # AV_TIME_BASE: microseconds
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if declared - (end - start) > max(1.0, 0.1 * declared):
            raise MediaError("decode_error", f"{codec} video truncated: {end - start:.1f} s of {declared:.1f} s")
    return count


def _pyav_frames(data: bytes, indices: list[int]) -> tuple[list[np.ndarray], int]:
    """The frames at `indices` (in presentation order; an index may repeat) as RGB arrays, and how many frames were
    decoded. Fewer frames than indices: the video ended before the last one."""
    import av

    found: dict[int, np.ndarray] = {}
    wanted, n = set(indices), 0
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(video=0):
            if n in wanted:
                found[n] = frame.to_ndarray(format="rgb24")
            n += 1
            if len(found) == len(wanted):
                break
    return [found[i] for i in indices if i in found], n


def _first_line(e: Exception) -> str:
    # decord messages carry a timestamp, a C++ source location, a stack trace and sometimes the raw input
    # bytes; keep the first line without the "[12:34:56] src/file.cc:123: " prefix, so messages are stable.
    lines = str(e).strip().splitlines()
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0])[:300] if lines else ""
