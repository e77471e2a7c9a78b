"""Load images and videos from any fsspec URL into RGB uint8 frames.

`load_media` is the single entry point used by the CPU decode stage of the pipeline. It never raises anything
but `MediaError`, whose `kind` is one of `ERROR_KINDS`: a bad item becomes an error row with that kind, and
the job goes on (DESIGN.md section 5).

Order of checks, cheapest first: media type, URI scheme, object size (one metadata request), bytes, decode.

Decisions worth knowing:
- Transparent images (RGBA, LA, P with transparency) are composited on WHITE, not alpha-dropped: the colour
  stored under fully transparent pixels is arbitrary (often black or junk) and would distort a quality score.
- 16-bit images are scaled to 8 bits (v / 257, rounded), never clipped. Pillow alone clips I;16 -> L.
- The pixel limit is checked from the header, before any pixel is decoded. PIL's own decompression-bomb
  limit is set to the same value so that PIL refuses at exactly the same size.
- Videos are decoded from memory (BytesIO) by decord: the whole object is read once (it is at most
  `max_bytes`), which also gives object stores one sequential GET instead of many small range reads.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass

import fsspec
import numpy as np
from PIL import Image, ImageOps

ERROR_KINDS = (
    "bad_scheme",
    "not_found",
    "empty",
    "too_large",
    "decode_error",
    "no_frames",
    "io_error",
    "bad_media_type",
)
MEDIA_TYPES = ("image", "video")

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
    max_frames: int = 16  # cap: uniform subsampling over the sampled frames when exceeded
    # Instead of sampling at sample_fps: this many frames spread uniformly over the whole video (Q-ReAlign's 8).
    uniform_frames: int | None = None
    max_pixels: int = 64_000_000  # more pixels than this: refused from the header (decompression bombs)
    max_bytes: int = 2 * 1024**3  # objects larger than this are refused (too_large)
    # A plain path (no "://") counts as "file".
    allowed_schemes: tuple[str, ...] = ("file", "s3", "gs", "gcs", "az", "abfs", "memory")

    def __post_init__(self) -> None:
        # A bad option is a configuration bug, so it fails at construction, not as a per-item error.
        if not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {self.sample_fps}")
        for name in ("max_frames", "max_pixels", "max_bytes", "uniform_frames"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------------------
# Reading bytes


def uri_scheme(uri: str) -> str:
    """The URI's scheme in lower case; a plain path (no "://") counts as "file"."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def read_bytes(uri: str, options: MediaOptions = MediaOptions()) -> bytes:
    """Read a whole object through fsspec, retrying transient storage errors. Raises MediaError only."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise MediaError("bad_scheme", f"uri must be a non-empty string, got {uri!r}")
    scheme = uri_scheme(uri)
    if scheme not in {s.lower() for s in options.allowed_schemes}:
        allowed = ", ".join(options.allowed_schemes)
        raise MediaError("bad_scheme", f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:  # backend not installed (e.g. gcsfs), malformed URL: no retry
        raise MediaError("io_error", f"cannot open a filesystem for {uri}: {e}") from e

    last_error: Exception | None = None
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            time.sleep(RETRY_BASE_DELAY_S * 2 ** (attempt - 1))
        try:
            return _read_once(fs, path, uri, options)
        except MediaError:
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise MediaError("not_found", f"{uri}: {e}") from e
        except PermissionError as e:  # access denied is not transient
            raise MediaError("io_error", f"permission denied: {uri}: {e}") from e
        except Exception as e:  # timeouts, connection resets, throttling, 5xx: worth another try
            last_error = e
    raise MediaError(
        "io_error", f"{uri}: {type(last_error).__name__}: {last_error} (after {READ_ATTEMPTS} attempts)"
    ) from last_error


def _read_once(fs: fsspec.AbstractFileSystem, path: str, uri: str, options: MediaOptions) -> bytes:
    # One metadata request first, so that an oversized object is refused without downloading it.
    info = fs.info(path)
    if info.get("type") == "directory":
        raise MediaError("not_found", f"{uri} is a directory, not an object")
    size = info.get("size")
    if size is not None:
        _check_size(int(size), uri, options)
    data = fs.cat_file(path)
    _check_size(len(data), uri, options)  # the listed size may be missing or stale
    return data


def _check_size(size: int, uri: str, options: MediaOptions) -> None:
    if size == 0:
        raise MediaError("empty", f"{uri} has zero bytes")
    if size > options.max_bytes:
        raise MediaError("too_large", f"{uri} has {size} bytes, over the limit of {options.max_bytes}")


# ------------------------------------------------------------------------------------------------------------
# Loading


def load_media(uri: str, media_type: str, options: MediaOptions = MediaOptions()) -> Media:
    """Load one image or video as RGB uint8 frames. Raises MediaError (and nothing else) on any failure."""
    if media_type not in MEDIA_TYPES:
        raise MediaError("bad_media_type", f"media_type must be one of {MEDIA_TYPES}, got {media_type!r}")
    data = read_bytes(uri, options)
    if media_type == "image":
        frame = decode_image(data, options, uri)
        return Media(frames=[frame], media_type="image", fps=None, frame_indices=[0], num_source_frames=1)
    return decode_video(data, options, uri)


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

    Index i is round_half_up(i * native_fps / sample_fps), so 1 fps on a 24 fps video gives 0, 24, 48, ...
    A video shorter than one sampling period still gives frame 0. Without a usable native fps, the frames are
    spread uniformly over the whole video. With `uniform_frames`, that many frames spread uniformly, whatever the fps.
    """
    if num_frames <= 0:
        return []
    if options.uniform_frames is not None:
        count = min(options.uniform_frames, num_frames)
        return [int(i) for i in np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64)]
    if native_fps is None or not math.isfinite(native_fps) or native_fps <= 0:
        indices = np.arange(num_frames)
    else:
        step = native_fps / options.sample_fps
        count = int(math.ceil(num_frames / step)) + 1
        indices = np.floor(np.arange(count) * step + 0.5).astype(np.int64)
        # Sampling faster than the native rate would repeat frames; keep each frame once, in order.
        indices = np.unique(indices[indices < num_frames])
    if len(indices) > options.max_frames:
        # Uniform over the sampled frames, first and last included.
        picks = np.round(np.linspace(0, len(indices) - 1, options.max_frames)).astype(np.int64)
        indices = indices[picks]
    return [int(i) for i in indices]


def decode_video(data: bytes, options: MediaOptions = MediaOptions(), uri: str = "<bytes>") -> Media:
    """Decode video bytes with decord and sample frames. Raises MediaError only."""
    import decord  # imported here: it is heavy, and image-only workers never need it

    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
    except Exception as e:
        if "cannot find video stream" in str(e):
            # A real container without a decodable video stream: audio-only, or a video track with no frames.
            raise MediaError("no_frames", f"{uri}: no video stream with frames") from e
        raise MediaError("decode_error", f"{uri}: {type(e).__name__}: {_first_line(e)}") from e

    try:
        num_frames = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as e:
        raise MediaError("decode_error", f"{uri}: {type(e).__name__}: {_first_line(e)}") from e
    if num_frames == 0:
        raise MediaError("no_frames", f"{uri}: the video has no frames")
    fps_known = math.isfinite(fps) and fps > 0
    indices = sample_frame_indices(num_frames, fps if fps_known else None, options)

    try:
        batch = reader.get_batch(indices).asnumpy()
    except Exception as e:
        raise MediaError("decode_error", f"{uri}: {type(e).__name__}: {_first_line(e)}") from e
    if batch.shape[0] == 0:
        raise MediaError("no_frames", f"{uri}: no frame could be decoded")
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.shape[0] != len(indices):
        raise MediaError("decode_error", f"{uri}: unexpected decoded batch shape {batch.shape}")
    return Media(
        frames=[np.ascontiguousarray(frame, dtype=np.uint8) for frame in batch],
        media_type="video",
        fps=fps if fps_known else None,
        frame_indices=indices,
        num_source_frames=num_frames,
    )


def _first_line(e: Exception) -> str:
    # decord messages carry a timestamp, a C++ source location, a stack trace and sometimes the raw input
    # bytes; keep the first line without the "[12:34:56] src/file.cc:123: " prefix, so messages are stable.
    lines = str(e).strip().splitlines()
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", lines[0])[:300] if lines else ""
