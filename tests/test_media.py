"""pipeline.media and pipeline.corpus on real data: scikit-image photos, H.264 mp4s written by PyAV, decord.

S3 tests run against moto's S3 server on loopback, reached through s3fs exactly as a real bucket would be.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import pickle
import uuid

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline import media
from pipeline.corpus import (
    ZOO_SIZE,
    build_sample_corpus,
    distort,
    synthetic_mos,
    write_bad_files,
    write_video,
    zoo_photo,
)
from pipeline.media import ERROR_KINDS, MediaError, MediaOptions, load_media, read_bytes, sample_frame_indices

W, H = ZOO_SIZE

# What each zoo item must give, stated here independently of the zoo itself.
EXPECTED_ERRORS = {
    "zero_bytes": "empty",
    "truncated_jpeg": "decode_error",
    "text_as_jpeg": "decode_error",
    "missing_file": "not_found",
    "directory": "not_found",
    "video_no_frames": "no_frames",
    "audio_only_mp4": "no_frames",
    "truncated_mp4": "decode_error",
    "garbage_mp4": "decode_error",
    "image_as_video": "decode_error",
    "video_as_image": "decode_error",
    "oversized_image": "too_large",
    "http_scheme": "bad_scheme",
    "ftp_scheme": "bad_scheme",
    "bad_media_type": "bad_media_type",
}
VALID_IMAGES = (
    "rgb_jpeg",
    "grayscale_jpeg",
    "bilevel_png",
    "rgba_png",
    "la_png",
    "palette_png",
    "gray16_png",
    "rgb16_png",
    "cmyk_jpeg",
    "exif_rotated_jpeg",
    "animated_gif",
    "webp",
)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, tuple[str, str, str | None]]:
    return write_bad_files(str(tmp_path_factory.mktemp("zoo")))


@pytest.fixture(scope="module")
def counting_video(tmp_path_factory) -> str:
    """45 flat grey frames at 10 fps (4.5 s); frame i is grey level 5*i, so each frame shows its index."""
    path = str(tmp_path_factory.mktemp("video") / "counting.mp4")
    write_video(path, [np.full((48, 64, 3), 5 * i, np.uint8) for i in range(45)], fps=10)
    return path


def frame_number(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / 5)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def raw_pixels(path: str) -> np.ndarray:
    """The stored pixels as PIL decodes them, with no orientation or mode handling."""
    with Image.open(path) as img:
        return np.asarray(img)


# ------------------------------------------------------------------------------------------------------------
# Bad input: every failure is a MediaError of one exact kind


def test_zoo_holds_the_expected_items(zoo):
    assert {name for name, (_, _, kind) in zoo.items() if kind} == set(EXPECTED_ERRORS)
    valid_images = {name for name, (_, mt, kind) in zoo.items() if kind is None and mt == "image"}
    assert valid_images == set(VALID_IMAGES)
    for name, (_, _, kind) in zoo.items():
        assert kind is None or kind == EXPECTED_ERRORS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_bad_item_gives_its_error_kind(zoo, name):
    uri, media_type, _ = zoo[name]
    with pytest.raises(MediaError) as info:
        load_media(uri, media_type)
    assert info.value.kind == EXPECTED_ERRORS[name]
    assert str(info.value) == f"{info.value.kind}: {info.value.message}"


def test_media_error_survives_pickling():
    error = pickle.loads(pickle.dumps(MediaError("not_found", "s3://b/k")))
    assert (error.kind, error.message, str(error)) == ("not_found", "s3://b/k", "not_found: s3://b/k")
    assert set(ERROR_KINDS) >= set(EXPECTED_ERRORS.values())


def test_oversized_image_is_refused_from_the_header(zoo, monkeypatch):
    # If any pixel were decoded, load() would raise and the kind would be decode_error instead.
    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(MediaError) as info:
        load_media(zoo["oversized_image"][0], "image")
    assert info.value.kind == "too_large"


@pytest.mark.parametrize("max_pixels", [W * H - 1, 100])  # just over the limit, and over PIL's own 2x limit
def test_pixel_limit_is_exact(zoo, max_pixels):
    uri = zoo["rgb_jpeg"][0]
    with pytest.raises(MediaError) as info:
        load_media(uri, "image", MediaOptions(max_pixels=max_pixels))
    assert info.value.kind == "too_large"
    assert load_media(uri, "image", MediaOptions(max_pixels=W * H)).frames[0].shape == (H, W, 3)


def test_pil_bomb_limit_follows_max_pixels(zoo):
    # PIL's own guard is set to the same limit, so PIL refuses at exactly our size too.
    load_media(zoo["rgb_jpeg"][0], "image", MediaOptions(max_pixels=12_345_678))
    assert Image.MAX_IMAGE_PIXELS == 12_345_678
    load_media(zoo["rgb_jpeg"][0], "image")
    assert Image.MAX_IMAGE_PIXELS == MediaOptions().max_pixels


def test_byte_limit(zoo):
    uri = zoo["rgb_jpeg"][0]
    size = os.path.getsize(uri)
    with pytest.raises(MediaError) as info:
        read_bytes(uri, MediaOptions(max_bytes=size - 1))
    assert info.value.kind == "too_large"
    assert len(read_bytes(uri, MediaOptions(max_bytes=size))) == size


def test_schemes(zoo, tmp_path, monkeypatch):
    path = zoo["rgb_jpeg"][0]
    assert load_media("file://" + path, "image").frames[0].shape == (H, W, 3)
    assert load_media(pathlib.Path(path), "image").frames[0].shape == (H, W, 3)
    monkeypatch.chdir(os.path.dirname(path))
    assert load_media(os.path.basename(path), "image").frames[0].shape == (H, W, 3)  # relative plain path
    only_s3 = MediaOptions(allowed_schemes=("s3",))
    for uri, options in [(path, only_s3), ("", MediaOptions()), (None, MediaOptions())]:
        with pytest.raises(MediaError) as info:
            load_media(uri, "image", options)
        assert info.value.kind == "bad_scheme"


def test_invalid_options_fail_at_construction():
    for bad in [dict(sample_fps=0), dict(max_frames=0), dict(max_pixels=0), dict(max_bytes=0)]:
        with pytest.raises(ValueError):
            MediaOptions(**bad)


# ------------------------------------------------------------------------------------------------------------
# Odd but valid images: RGB uint8 with the right shape and the right pixels


@pytest.mark.parametrize("name", VALID_IMAGES)
def test_valid_image_loads_as_rgb(zoo, name):
    uri, media_type, kind = zoo[name]
    assert kind is None
    item = load_media(uri, media_type)
    (frame,) = item.frames
    expected_shape = (W, H, 3) if name == "exif_rotated_jpeg" else (H, W, 3)
    assert frame.shape == expected_shape and frame.dtype == np.uint8 and frame.flags.c_contiguous
    assert (item.media_type, item.fps, item.frame_indices, item.num_source_frames) == ("image", None, [0], 1)


def test_image_pixels_per_mode(zoo):
    photo = zoo_photo()
    grey = np.asarray(Image.fromarray(photo).convert("L"))

    def load(name: str) -> np.ndarray:
        return load_media(zoo[name][0], "image").frames[0]

    # Lossy formats on a small detailed photo stay within a few levels; a wrong reading is off by 50+.
    assert mean_abs_diff(load("rgb_jpeg"), photo) < 8
    assert mean_abs_diff(load("webp"), photo) < 8
    # CMYK JPEGs are stored inverted (Adobe); a naive reading would give a negative.
    assert mean_abs_diff(load("cmyk_jpeg"), photo) < 8

    gray = load("grayscale_jpeg")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert mean_abs_diff(gray[..., 0], grey) < 8
    assert set(np.unique(load("bilevel_png"))) <= {0, 255}

    # 16-bit: scaled to 8 bits exactly (Pillow's own convert would clip everything above 255 to white).
    np.testing.assert_array_equal(load("gray16_png"), np.dstack([grey] * 3))
    np.testing.assert_array_equal(load("rgb16_png"), photo)

    # Transparency is composited on white; alpha runs from 0 (left column) to 255 (right column).
    alpha = np.linspace(0, 255, W).round()[None, :, None] / 255.0
    on_white = photo * alpha + 255 * (1 - alpha)
    rgba = load("rgba_png")
    assert (rgba[:, 0] == 255).all()
    assert np.abs(rgba - on_white).max() <= 1.0
    la_on_white = grey[..., None] * alpha + 255 * (1 - alpha)
    assert np.abs(load("la_png") - la_on_white).max() <= 1.0

    palette_rgb = np.asarray(Image.open(zoo["palette_png"][0]).convert("RGB"))
    np.testing.assert_array_equal(load("palette_png"), palette_rgb)
    # Animated GIF: the first frame (red), not the later blue or green ones.
    assert (load("animated_gif") == np.array([255, 0, 0], np.uint8)).all()


def test_exif_orientation_is_applied(zoo):
    uri = zoo["exif_rotated_jpeg"][0]
    stored = raw_pixels(uri)
    assert stored.shape == (H, W, 3)  # stored landscape, displayed portrait
    frame = load_media(uri, "image").frames[0]
    # Orientation 6 = turn 90 degrees clockwise for display; np.rot90 with k=-1 turns clockwise.
    np.testing.assert_array_equal(frame, np.rot90(stored, k=-1))
    assert mean_abs_diff(frame, np.rot90(zoo_photo(), k=-1)) < 8
    assert mean_abs_diff(frame, np.rot90(zoo_photo(), k=1)) > 50  # the wrong way round is far off


# ------------------------------------------------------------------------------------------------------------
# Videos: sampling at sample_fps, the frame cap, recorded indices


@pytest.mark.parametrize(
    "sample_fps, expected",
    [(1.0, [0, 10, 20, 30, 40]), (2.0, [0, 5, 10, 15, 20, 25, 30, 35, 40]), (0.25, [0, 40])],
)
def test_video_sampling(counting_video, sample_fps, expected):
    item = load_media(counting_video, "video", MediaOptions(sample_fps=sample_fps))
    assert item.media_type == "video"
    assert item.fps == pytest.approx(10.0)
    assert item.num_source_frames == 45
    assert item.frame_indices == expected
    assert [frame_number(f) for f in item.frames] == expected  # the decoded frames are the ones named
    assert all(f.shape == (48, 64, 3) and f.dtype == np.uint8 for f in item.frames)


def test_frame_cap_subsamples_uniformly(counting_video):
    # At 10 fps all 45 frames are sampled; a cap of 4 keeps the first, the last and two evenly between.
    item = load_media(counting_video, "video", MediaOptions(sample_fps=10.0, max_frames=4))
    assert item.frame_indices == [0, 15, 29, 44]
    assert [frame_number(f) for f in item.frames] == [0, 15, 29, 44]
    capped = load_media(counting_video, "video", MediaOptions(sample_fps=1.0, max_frames=3))
    assert capped.frame_indices == [0, 20, 40]


def test_short_video_gives_one_frame(zoo):
    item = load_media(zoo["tiny_video"][0], "video")  # 4 frames at 8 fps: half a second
    assert (item.frame_indices, item.num_source_frames, len(item.frames)) == ([0], 4, 1)
    assert item.fps == pytest.approx(8.0)


def test_sample_frame_indices_rules():
    one_fps = MediaOptions(sample_fps=1.0)
    assert sample_frame_indices(72, 24.0, one_fps) == [0, 24, 48]
    assert sample_frame_indices(30, 29.97, one_fps) == [0]
    # Rounding is half-up: a step of 2.5 frames gives 0, 3, 5, 8, 10 (not banker's 0, 2, 5, 8, 10).
    assert sample_frame_indices(11, 5.0, MediaOptions(sample_fps=2.0)) == [0, 3, 5, 8, 10]
    # Sampling faster than the native rate takes each frame once.
    assert sample_frame_indices(5, 2.0, MediaOptions(sample_fps=30.0)) == [0, 1, 2, 3, 4]
    # Unknown fps: spread uniformly over the video, within the cap.
    assert sample_frame_indices(100, None, MediaOptions(max_frames=5)) == [0, 25, 50, 74, 99]
    assert sample_frame_indices(0, 24.0, one_fps) == []


# ------------------------------------------------------------------------------------------------------------
# Retries on transient storage errors (fsspec's in-memory filesystem with an injected fault)


@pytest.fixture
def memory_jpeg(zoo):
    import fsspec

    path = f"memory://media-tests/{uuid.uuid4().hex}.jpg"
    with open(zoo["rgb_jpeg"][0], "rb") as f:
        fsspec.filesystem("memory").pipe_file(path, f.read())
    yield path
    fsspec.filesystem("memory").rm(path)


def flaky_cat(monkeypatch, failures: int, error: Exception) -> list[int]:
    from fsspec.implementations.memory import MemoryFileSystem

    calls = []
    original = MemoryFileSystem.cat_file

    def cat_file(self, path, *args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", cat_file)
    monkeypatch.setattr(media, "RETRY_BASE_DELAY_S", 0.0)
    return calls


def test_transient_errors_are_retried(memory_jpeg, monkeypatch):
    calls = flaky_cat(monkeypatch, failures=media.READ_ATTEMPTS - 1, error=ConnectionError("reset by peer"))
    assert load_media(memory_jpeg, "image").frames[0].shape == (H, W, 3)
    assert len(calls) == media.READ_ATTEMPTS


def test_persistent_errors_become_io_error(memory_jpeg, monkeypatch):
    calls = flaky_cat(monkeypatch, failures=99, error=TimeoutError("slow down"))
    with pytest.raises(MediaError) as info:
        load_media(memory_jpeg, "image")
    assert info.value.kind == "io_error" and "TimeoutError" in info.value.message
    assert len(calls) == media.READ_ATTEMPTS


def test_permanent_errors_are_not_retried(memory_jpeg, monkeypatch):
    calls = flaky_cat(monkeypatch, failures=99, error=PermissionError("access denied"))
    with pytest.raises(MediaError) as info:
        load_media(memory_jpeg, "image")
    assert info.value.kind == "io_error" and len(calls) == 1


# ------------------------------------------------------------------------------------------------------------
# S3 through s3fs, against moto's S3 server on loopback


def test_load_image_and_video_from_s3(s3_bucket, zoo):
    fs, bucket = s3_bucket
    image_path, video_path = zoo["rgb_jpeg"][0], zoo["video"][0]
    fs.put_file(image_path, f"{bucket}/images/photo.jpg")
    fs.put_file(video_path, f"{bucket}/videos/clip.mp4")

    image = load_media(f"s3://{bucket}/images/photo.jpg", "image")
    np.testing.assert_array_equal(image.frames[0], load_media(image_path, "image").frames[0])

    video = load_media(f"s3://{bucket}/videos/clip.mp4", "video")
    local = load_media(video_path, "video")
    assert video.frame_indices == local.frame_indices == [0, 10]  # 20 frames at 10 fps
    assert video.fps == pytest.approx(10.0)
    for a, b in zip(video.frames, local.frames, strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_s3_objects_are_not_found(s3_bucket):
    _, bucket = s3_bucket
    for uri in [f"s3://{bucket}/no/such/key.jpg", f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/key.jpg"]:
        with pytest.raises(MediaError) as info:
            load_media(uri, "image")
        assert info.value.kind == "not_found", uri


def test_empty_s3_object(s3_bucket):
    fs, bucket = s3_bucket
    fs.pipe_file(f"{bucket}/empty.jpg", b"")
    with pytest.raises(MediaError) as info:
        load_media(f"s3://{bucket}/empty.jpg", "image")
    assert info.value.kind == "empty"


# ------------------------------------------------------------------------------------------------------------
# The sample corpus


def file_digests(rows: list[dict]) -> dict[str, str]:
    digests = {}
    for row in rows:
        with open(row["uri"], "rb") as f:
            digests[row["id"]] = hashlib.sha256(f.read()).hexdigest()
    return digests


def test_sample_corpus_is_real_small_and_deterministic(tmp_path):
    rows = build_sample_corpus(str(tmp_path / "a"))
    again = build_sample_corpus(str(tmp_path / "b"))

    def without_uri(rs):
        return [{k: v for k, v in r.items() if k != "uri"} for r in rs]

    assert without_uri(rows) == without_uri(again)
    assert file_digests(rows) == file_digests(again)  # byte-identical, videos included

    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 6 * 5 + 3
    assert {r["media_type"] for r in rows} == {"image", "video"}
    assert "astronaut-blur-2" in ids and "astronaut-pristine" in ids
    assert sum(os.path.getsize(r["uri"]) for r in rows) < 5 * 1024**2
    for row in rows:
        assert os.path.isabs(row["uri"])
        assert row["mos"] == synthetic_mos(row["level"]) == 5.0 - row["level"]
        assert (row["distortion"] == "none") == (row["level"] == 0)
        item = load_media(row["uri"], row["media_type"])
        assert item.media_type == row["media_type"]
        assert all(f.ndim == 3 and f.shape[2] == 3 and f.dtype == np.uint8 for f in item.frames)
        if row["media_type"] == "video":
            assert item.frames[0].shape == (96, 128, 3) and 2 <= len(item.frames) <= 5


def test_corpus_seed_changes_the_noise(tmp_path):
    # coffee is the second photo, so it gets the "noise" distortion.
    kwargs = dict(photos=("astronaut", "coffee"), levels=(0, 2), n_videos=0)
    seed0 = file_digests(build_sample_corpus(str(tmp_path / "s0"), seed=0, **kwargs))
    seed1 = file_digests(build_sample_corpus(str(tmp_path / "s1"), seed=1, **kwargs))
    assert seed0["coffee-noise-2"] != seed1["coffee-noise-2"]
    assert seed0["astronaut-blur-2"] == seed1["astronaut-blur-2"]  # no randomness in blur


@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg", "pixelate"])
def test_distortion_grows_with_level(kind):
    photo = zoo_photo()
    assert np.array_equal(distort(photo, kind, 0, seed=0), photo)
    errors = [mean_abs_diff(distort(photo, kind, level, seed=0), photo) for level in range(1, 5)]
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.5
    assert distort(photo, kind, 3, seed=0).shape == photo.shape
