"""A small but real sample corpus for the demo and the tests, plus a zoo of bad and odd inputs.

Everything is built offline from scikit-image's bundled photographs:
- `build_sample_corpus` writes each photo at several distortion levels (JPEG/PNG) and a few short H.264 mp4
  videos (a slow pan and zoom over a photo), and returns manifest rows with a synthetic MOS.
- `write_bad_files` writes inputs that must fail with a known `MediaError` kind, and odd-but-valid ones
  (grey, 16-bit, CMYK, EXIF-rotated, palette, animated GIF, ...) that must load as RGB.

Synthetic MOS: the distortion level fixes it, mos = 5 - level (level 0 pristine = 5.0 "excellent" ... level 4
worst = 1.0 "bad"), the same for every distortion kind. It is a label with a known truth, not a human rating.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import av
import numpy as np
from PIL import Image
from scipy import ndimage

DISTORTIONS = ("blur", "noise", "jpeg", "pixelate")
LEVELS = (0, 1, 2, 3, 4)
# Per kind, the parameter at levels 0..4. Level 0 is always the untouched image.
_BLUR_SIGMA = (0.0, 0.8, 1.6, 3.0, 5.0)  # Gaussian sigma in pixels
_NOISE_STD = (0.0, 6.0, 14.0, 28.0, 50.0)  # additive Gaussian noise, std on the 0..255 scale
_JPEG_QUALITY = (None, 50, 25, 10, 3)  # JPEG re-encode quality
_PIXELATE_BLOCK = (1, 2, 3, 6, 10)  # block size in pixels

# RGB colour photographs that ship inside scikit-image (no download needed).
DEFAULT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
IMAGE_LONG_SIDE = 224  # corpus images are downscaled so the whole corpus stays small
VIDEO_SIZE = (128, 96)  # width, height (even, as yuv420p needs)
# (fps, seconds, distortion, level) for the videos, used in turn.
_VIDEO_SPECS = (
    (12, 3.0, "none", 0),
    (24, 2.0, "blur", 3),
    (8, 4.0, "noise", 2),
    (10, 5.0, "pixelate", 4),
    (15, 2.5, "jpeg", 3),
)


def load_photo(name: str) -> np.ndarray:
    """A bundled photograph as HxWx3 uint8 RGB (grey ones with three equal channels): a scikit-image `data` name,
    or one of OTHER_PHOTOS."""
    from skimage import data

    image = np.asarray(OTHER_PHOTOS[name]() if name in OTHER_PHOTOS else getattr(data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"photograph {name!r} is not a uint8 photograph ({image.shape}, {image.dtype})")
    return image


def _motorcycle() -> np.ndarray:
    from skimage import data

    return data.stereo_motorcycle()[0]  # the left view of scikit-image's stereo pair


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    return np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))


# Photographs that installed packages bundle outside scikit-image's `data` functions (no download either).
OTHER_PHOTOS = {"motorcycle": _motorcycle, "grace_hopper": _grace_hopper}


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def distort(image: np.ndarray, kind: str, level: int, seed: int) -> np.ndarray:
    """Apply one distortion ("blur", "noise", "jpeg", "pixelate") at level 0 (none) .. 4 (worst)."""
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}; expected one of {DISTORTIONS}")
    if level not in LEVELS:
        raise ValueError(f"level must be in {LEVELS}, got {level}")
    image = np.asarray(image, dtype=np.uint8)
    if level == 0:
        return image.copy()
    if kind == "blur":
        sigma = _BLUR_SIGMA[level]
        return ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect")
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noisy = image.astype(np.float32) + rng.normal(0.0, _NOISE_STD[level], image.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=_JPEG_QUALITY[level])
        return np.asarray(Image.open(buffer).convert("RGB"))
    # pixelate: average over blocks, then blow the blocks back up.
    block = _PIXELATE_BLOCK[level]
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, w // block), max(1, h // block)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST))


def synthetic_mos(level: int) -> float:
    """MOS on 1..5 from the distortion level: 5.0 (level 0, pristine) down to 1.0 (level 4, worst)."""
    if level not in LEVELS:
        raise ValueError(f"level must be in {LEVELS}, got {level}")
    return 5.0 - level


def write_video(path: str, frames: list[np.ndarray], fps: int, codec: str = "libx264", fmt: str = "mp4") -> None:
    """Write RGB uint8 frames as a real video (default H.264 yuv420p in mp4). Odd sizes are cropped by one pixel to
    even. `codec` and `fmt` name any PyAV encoder and container, e.g. "libsvtav1" in "matroska"."""
    if not frames:
        raise ValueError("write_video needs at least one frame")
    h, w = frames[0].shape[:2]
    h, w = h - h % 2, w - w % 2  # yuv420p subsamples chroma 2x2
    # faststart puts the index (moov) first, so readers can start without seeking to the end of the object.
    options = {"movflags": "+faststart"} if fmt == "mp4" else {}
    with av.open(path, "w", format=fmt, options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "23", "preset": "medium"}
        for frame in frames:
            if frame.shape[:2] != frames[0].shape[:2]:
                raise ValueError(f"all frames must have one size; got {frame.shape} after {frames[0].shape}")
            rgb = np.ascontiguousarray(frame[:h, :w, :3], dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())  # flush the encoder's delayed frames


def pan_zoom_frames(photo: np.ndarray, n_frames: int, size: tuple[int, int] = VIDEO_SIZE) -> list[np.ndarray]:
    """A slow pan from the top-left to the bottom-right of the photo while zooming in from 1.0x to 1.5x."""
    out_w, out_h = size
    h, w = photo.shape[:2]
    # Crop windows keep the output aspect ratio; the largest one is as big as the photo allows.
    base_w = min(w, h * out_w / out_h) * 0.8
    image = Image.fromarray(photo)
    frames = []
    for t in np.linspace(0.0, 1.0, n_frames):
        crop_w = base_w / (1.0 + 0.5 * t)
        crop_h = crop_w * out_h / out_w
        left, top = t * (w - crop_w), t * (h - crop_h)
        box = (left, top, left + crop_w, top + crop_h)
        frames.append(np.asarray(image.resize(size, Image.Resampling.BILINEAR, box=box)))
    return frames


def build_sample_corpus(
    root: str,
    photos: tuple[str, ...] = DEFAULT_PHOTOS,
    levels: tuple[int, ...] = LEVELS,
    n_videos: int = 3,
    seed: int = 0,
) -> list[dict]:
    """Write the sample corpus under the local folder `root` and return its manifest rows.

    Photo i gets distortion DISTORTIONS[i % 4] at each level; level 0 is the pristine one, "<name>-pristine".
    Photos alternate between JPEG (quality 95) and PNG; the "jpeg" distortion is written as the JPEG itself.
    Video j pans over photo j with the j-th entry of _VIDEO_SPECS (fps, duration, distortion, level).
    Rows: id, uri (absolute path), media_type, source, distortion, level, mos.
    """
    root = os.path.abspath(root)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    rows = []
    for p, name in enumerate(photos):
        photo = resize_long_side(load_photo(name), IMAGE_LONG_SIDE)
        kind = DISTORTIONS[p % len(DISTORTIONS)]
        for level in levels:
            distortion = kind if level else "none"
            item_id = f"{name}-{kind}-{level}" if level else f"{name}-pristine"
            if kind == "jpeg" and level:
                # Write the low-quality JPEG bytes themselves: real JPEG artifacts, and a small file.
                path = os.path.join(root, "images", f"{item_id}.jpg")
                Image.fromarray(photo).save(path, "JPEG", quality=_JPEG_QUALITY[level])
            else:
                pixels = distort(photo, kind, level, seed=_item_seed(seed, p, level))
                ext = "png" if p % 2 else "jpg"
                path = os.path.join(root, "images", f"{item_id}.{ext}")
                Image.fromarray(pixels).save(path, **({"quality": 95} if ext == "jpg" else {}))
            rows.append(_row(item_id, path, "image", name, distortion, level))

    for v in range(n_videos):
        fps, seconds, kind, level = _VIDEO_SPECS[v % len(_VIDEO_SPECS)]
        name = photos[v % len(photos)]
        frames = pan_zoom_frames(load_photo(name), n_frames=round(fps * seconds))
        if level:
            # Noise differs per frame, as real sensor noise does.
            seeds = [_item_seed(seed, 1000 + v, t) for t in range(len(frames))]
            frames = [distort(f, kind, level, seed=s) for f, s in zip(frames, seeds, strict=True)]
        item_id = f"{name}-video-{kind}-{level}" if level else f"{name}-video-pristine"
        path = os.path.join(root, "videos", f"{item_id}.mp4")
        write_video(path, frames, fps)
        rows.append(_row(item_id, path, "video", name, kind, level))
    return rows


PAIR_LONG_SIDE = 320  # pairs are larger than the sample's images: MS-SSIM's five scales need 176 px on each side


def build_pair_corpus(
    root: str, photos: tuple[str, ...] = DEFAULT_PHOTOS, levels: tuple[int, ...] = LEVELS, seed: int = 0
) -> list[dict]:
    """Full-reference pairs under the local folder `root`: each photo once as a lossless PNG reference, and every
    distortion kind at each level as the item, with `ref_uri` naming its reference; level 0 once, a pixel copy of
    the reference (PSNR at its cap). Rows: the sample corpus's columns plus ref_uri."""
    root = os.path.abspath(root)
    os.makedirs(os.path.join(root, "pairs"), exist_ok=True)
    rows = []
    for p, name in enumerate(photos):
        photo = resize_long_side(load_photo(name), PAIR_LONG_SIDE)
        reference = os.path.join(root, "pairs", f"{name}-reference.png")
        Image.fromarray(photo).save(reference)
        for k, kind in enumerate(DISTORTIONS):
            for level in [lv for lv in levels if lv or k == 0]:
                item_id = f"{name}-{kind}-{level}" if level else f"{name}-copy"
                path = os.path.join(root, "pairs", f"{item_id}.png")
                Image.fromarray(distort(photo, kind, level, seed=_item_seed(seed, p * 10 + k, level))).save(path)
                row = _row(item_id, path, "image", name, kind if level else "none", level)
                rows.append({**row, "ref_uri": reference})
    return rows


def _item_seed(seed: int, item: int, level: int) -> int:
    return int(np.random.SeedSequence([seed, item, level]).generate_state(1)[0])


def _row(item_id: str, path: str, media_type: str, source: str, distortion: str, level: int) -> dict:
    return {
        "id": item_id,
        "uri": path,
        "media_type": media_type,
        "source": source,
        "distortion": distortion,
        "level": level,
        "mos": synthetic_mos(level),
    }


# ------------------------------------------------------------------------------------------------------------
# The zoo of bad and odd inputs

ZOO_SIZE = (64, 48)  # width, height of the zoo's images (EXIF-rotated one: stored 64x48, displayed 48x64)
# A real, decodable 1-bit PNG of 8001x8001 = 64,016,001 pixels: just over MediaOptions().max_pixels (64e6),
# yet only ~8 KB on disk. Decoding it as RGB would take 192 MB, so it must be refused from the header.
OVERSIZED_SIDE = 8001


def zoo_photo() -> np.ndarray:
    """The photo the zoo's images are made from: astronaut at ZOO_SIZE, HxWx3 uint8."""
    image = Image.fromarray(load_photo("astronaut"))
    return np.asarray(image.resize(ZOO_SIZE, Image.Resampling.LANCZOS))


def write_bad_files(root: str) -> dict[str, tuple[str, str, str | None]]:
    """Write the zoo under `root`: name -> (uri, media_type, expected MediaError kind or None if it loads).

    Expectations hold with the default MediaOptions().
    """
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    photo = zoo_photo()
    zoo: dict[str, tuple[str, str, str | None]] = {}

    def put(name: str, filename: str, data: bytes, media_type: str, kind: str | None) -> str:
        path = os.path.join(root, filename)
        with open(path, "wb") as f:
            f.write(data)
        zoo[name] = (path, media_type, kind)
        return path

    def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **kwargs)
        return buffer.getvalue()

    jpeg = encode(Image.fromarray(photo), "JPEG", quality=95)
    video_path = os.path.join(root, "video.mp4")
    write_video(video_path, pan_zoom_frames(load_photo("coffee"), 20), fps=10)
    with open(video_path, "rb") as f:
        video = f.read()

    # Must fail, each with its kind.
    put("zero_bytes", "zero_bytes.jpg", b"", "image", "empty")
    put("truncated_jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2], "image", "decode_error")
    put("text_as_jpeg", "text.jpg", b"this is not an image\n" * 4, "image", "decode_error")
    zoo["missing_file"] = (os.path.join(root, "does-not-exist.jpg"), "image", "not_found")
    os.makedirs(os.path.join(root, "a_directory"), exist_ok=True)
    zoo["directory"] = (os.path.join(root, "a_directory"), "image", "bad_uri")
    put("video_no_frames", "no_frames.mp4", _zero_frame_mp4(), "video", "no_frames")
    put("audio_only_mp4", "audio_only.mp4", _audio_only_mp4(), "video", "no_frames")
    put("truncated_mp4", "truncated.mp4", video[: len(video) // 2], "video", "decode_error")
    garbage = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    put("garbage_mp4", "garbage.mp4", garbage, "video", "decode_error")
    put("image_as_video", "image_as_video.jpg", jpeg, "video", "decode_error")
    put("video_as_image", "video_as_image.mp4", video, "image", "decode_error")
    oversized = Image.new("1", (OVERSIZED_SIDE, OVERSIZED_SIDE))
    put("oversized_image", "oversized.png", encode(oversized, "PNG", optimize=True), "image", "too_large")
    zoo["http_scheme"] = ("http://example.com/photo.jpg", "image", "bad_scheme")
    zoo["ftp_scheme"] = ("ftp://example.com/photo.jpg", "image", "bad_scheme")

    # Odd but valid: each must load as RGB uint8.
    rgb_jpeg = put("rgb_jpeg", "rgb.jpg", jpeg, "image", None)
    zoo["bad_media_type"] = (rgb_jpeg, "audio", "bad_media_type")  # a fine file, asked for as "audio"
    put("grayscale_jpeg", "gray.jpg", encode(Image.fromarray(photo).convert("L"), "JPEG"), "image", None)
    put("bilevel_png", "bilevel.png", encode(Image.fromarray(photo).convert("1"), "PNG"), "image", None)
    put("rgba_png", "rgba.png", encode(Image.fromarray(_with_alpha_ramp(photo)), "PNG"), "image", None)
    la = Image.fromarray(_with_alpha_ramp(photo)).convert("LA")
    put("la_png", "la.png", encode(la, "PNG"), "image", None)
    palette = Image.fromarray(photo).quantize(colors=32)
    put("palette_png", "palette.png", encode(palette, "PNG"), "image", None)
    grey16 = np.asarray(Image.fromarray(photo).convert("L")).astype(np.uint16) * 257  # full 16-bit range
    put("gray16_png", "gray16.png", encode(Image.fromarray(grey16), "PNG"), "image", None)
    put("rgb16_png", "rgb16.png", _png_rgb16(photo.astype(np.uint16) * 257), "image", None)
    cmyk = encode(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    put("cmyk_jpeg", "cmyk.jpg", cmyk, "image", None)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored image must be turned 90 degrees clockwise for display
    rotated = encode(Image.fromarray(photo), "JPEG", quality=95, exif=exif)
    put("exif_rotated_jpeg", "exif_rotated.jpg", rotated, "image", None)
    gif_frames = [Image.new("RGB", ZOO_SIZE, colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    gif = encode(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=100, loop=0)
    put("animated_gif", "animated.gif", gif, "image", None)
    put("webp", "photo.webp", encode(Image.fromarray(photo), "WEBP", quality=80), "image", None)
    tiny_path = os.path.join(root, "tiny.mp4")
    write_video(tiny_path, pan_zoom_frames(load_photo("chelsea"), 4), fps=8)  # 0.5 s: under one 1-fps period
    zoo["tiny_video"] = (tiny_path, "video", None)
    zoo["video"] = (video_path, "video", None)
    return zoo


def _with_alpha_ramp(photo: np.ndarray) -> np.ndarray:
    """RGBA: the photo with alpha going from 0 (left) to 255 (right)."""
    h, w = photo.shape[:2]
    alpha = np.broadcast_to(np.linspace(0, 255, w).round().astype(np.uint8), (h, w))
    return np.dstack([photo, alpha])


def _zero_frame_mp4() -> bytes:
    """A valid mp4 container with an H.264 video track that holds no frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # write the header although no frame follows
    return buffer.getvalue()


def _audio_only_mp4() -> bytes:
    """A valid mp4 with one second of silent AAC audio and no video track."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def _png_rgb16(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    h, w = rgb16.shape[:2]
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    rows = rgb16.astype(">u2").reshape(h, w * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
