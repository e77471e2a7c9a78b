"""pipeline.infra.media and pipeline.samples.corpus on real data: scikit-image photos, H.264 mp4s written by PyAV, and
decord.

S3 tests run against moto's S3 server on loopback, reached through s3fs exactly as a real bucket would be.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tracemalloc
import uuid

import av
import decord
import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.infra import media, store
from pipeline.infra.media import ERROR_KINDS, MediaError, MediaOptions, load_media, read_bytes, sample_frame_indices
from pipeline.samples.corpus import (
    ZOO_SIZE,
    build_sample_corpus,
    distort,
    synthetic_mos,
    write_bad_files,
    write_video,
    zoo_photo,
)

W, H = ZOO_SIZE

# What each zoo item must give, stated here independently of the zoo itself.
EXPECTED_ERRORS = {
    "zero_bytes": "empty",
    "truncated_jpeg": "decode_error",
    "text_as_jpeg": "decode_error",
    "missing_file": "not_found",
    "directory": "bad_uri",
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
        read_bytes(uri, MediaOptions(max_image_bytes=size - 1))
    assert info.value.kind == "too_large"
    assert len(read_bytes(uri, MediaOptions(max_image_bytes=size))) == size


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
    for bad in [
        dict(sample_fps=0),
        dict(max_frames=0),
        dict(max_pixels=0),
        dict(max_image_bytes=0),
        dict(max_video_bytes=0),
    ]:
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
    # 45 frames at 10 fps (4.5 s): whole periods only, so no frame for the started fifth second (Q-Align's rule)
    [(1.0, [0, 10, 20, 30]), (2.0, [0, 5, 10, 15, 20, 25, 30, 35, 40]), (0.25, [0])],
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
    assert capped.frame_indices == [0, 20, 30]  # a uniform subset of the 1 fps frames 0, 10, 20, 30


def test_short_video_gives_one_frame(zoo):
    item = load_media(zoo["tiny_video"][0], "video")  # 4 frames at 8 fps: half a second
    assert (item.frame_indices, item.num_source_frames, len(item.frames)) == ([0], 4, 1)
    assert item.fps == pytest.approx(8.0)


def test_sample_frame_indices_rules():
    one_fps = MediaOptions(sample_fps=1.0)
    assert sample_frame_indices(72, 24.0, one_fps) == [0, 24, 48]
    assert sample_frame_indices(30, 29.97, one_fps) == [0]
    # Q-Align's load_video: int(fps * i) for whole seconds only, so 29.97 fps gives 29, 59 (not 30, 60) and a
    # 2.5 s video no third frame.
    ntsc = 30000 / 1001
    assert (
        sample_frame_indices(126, ntsc, one_fps) == [int(ntsc * i) for i in range(int(126 / ntsc))] == [0, 29, 59, 89]
    )
    assert sample_frame_indices(25, 10.0, one_fps) == [0, 10]
    # Other rates the same way: a step of 2.5 frames gives 0, 2, 5, 7 (rounded down, the started period dropped).
    assert sample_frame_indices(11, 5.0, MediaOptions(sample_fps=2.0)) == [0, 2, 5, 7]
    # Shorter than one period: frame 0 (the reference has no frame at all).
    assert sample_frame_indices(4, 8.0, one_fps) == [0]
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


# ------------------------------------------------------------------------------------------------------------
# Videos decord cannot read fall back to PyAV, with the same sampling


def counting_frames(size: tuple[int, int] = (48, 64)) -> list[np.ndarray]:
    """45 flat frames at 10 fps, frame i at grey level 5*i (as counting_video)."""
    return [np.full((*size, 3), 5 * i, np.uint8) for i in range(45)]


@pytest.fixture(scope="module")
def av1_mkv(tmp_path_factory) -> str:
    assert "libsvtav1" in av.codecs_available  # PyAV's wheel brings an AV1 encoder (SVT-AV1)
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration to stderr otherwise
    path = str(tmp_path_factory.mktemp("av1") / "counting.mkv")
    write_video(path, counting_frames(), fps=10, codec="libsvtav1", fmt="matroska")
    return path


@pytest.fixture(scope="module")
def tiny_h264(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("h264") / "counting-16x16.mp4")
    write_video(path, counting_frames((16, 16)), fps=10)
    return path


def test_decord_fails_on_both_videos(av1_mkv, tiny_h264):
    # The reason for the fallback, checked on decord itself: if decord learns to read these, this test says so.
    with pytest.raises(decord.DECORDError, match="cannot find video stream"):
        decord.VideoReader(av1_mkv)
    with pytest.raises(decord.DECORDError, match="from_size == to_size"):
        decord.VideoReader(tiny_h264).get_batch([0]).asnumpy()


@pytest.mark.parametrize("options", [MediaOptions(), MediaOptions(sample_fps=10.0, max_frames=4)])
def test_pyav_fallback_samples_like_decord(av1_mkv, tiny_h264, counting_video, options):
    reference = load_media(counting_video, "video", options)  # decord, on the same frames as H.264 48x64
    for uri, shape in [(av1_mkv, (48, 64, 3)), (tiny_h264, (16, 16, 3))]:
        item = load_media(uri, "video", options)
        assert (item.frame_indices, item.num_source_frames) == (reference.frame_indices, 45), uri
        assert item.fps == pytest.approx(10.0)
        assert [frame_number(f) for f in item.frames] == item.frame_indices  # the decoded frames are the ones named
        assert all(f.shape == shape and f.dtype == np.uint8 and f.flags.c_contiguous for f in item.frames)


def test_video_neither_decoder_reads_is_an_error_naming_the_codec(zoo, av1_mkv, tmp_path):
    with pytest.raises(MediaError) as info:
        load_media(zoo["truncated_mp4"][0], "video")  # its index is first (faststart): PyAV opens it, then fails
    assert info.value.kind == "decode_error" and "h264" in info.value.message and "decord:" in info.value.message

    # A truncated Matroska file demuxes without an error; its header's duration gives it away.
    with open(av1_mkv, "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError) as info:
        load_media(str(cut), "video")
    assert info.value.kind == "decode_error" and "av1 video truncated" in info.value.message


# ------------------------------------------------------------------------------------------------------------
# Size limits per media type and the header sniff, before the bytes: on local storage and on S3


@pytest.fixture(params=["local", "s3"])
def put_object(request, tmp_path):
    """put_object(name, data) -> URI of a real object with those bytes, on local disk or on moto's S3."""
    if request.param == "local":

        def put(name: str, data: bytes) -> str:
            (tmp_path / name).write_bytes(data)
            return str(tmp_path / name)

        return put
    fs, bucket = request.getfixturevalue("s3_bucket")

    def put_s3(name: str, data: bytes) -> str:
        fs.pipe_file(f"{bucket}/{name}", data)
        return f"s3://{bucket}/{name}"

    return put_s3


def peak_memory_of(fn) -> tuple[Exception | None, int]:
    """Run fn; return what it raised and the peak of Python allocations (bytes objects included) meanwhile.

    fn runs once before, unmeasured, so that one-time costs (imports, caches) do not count.
    """
    for measured in (False, True):
        if measured:
            tracemalloc.start()
        try:
            fn()
            raised = None
        except Exception as e:
            raised = e
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return raised, peak


PEAK_SCRIPT = """
import json, sys, tracemalloc
from pipeline.infra.media import MediaError, MediaOptions, load_media
from tests.test_media import peak_memory_of
options = MediaOptions(**json.loads(sys.argv[3]))
raised, peak = peak_memory_of(lambda: load_media(sys.argv[1], sys.argv[2], options))
print(json.dumps({"kind": getattr(raised, "kind", None), "message": getattr(raised, "message", None), "peak": peak}))
"""


def load_measured(uri: str, media_type: str, **options) -> tuple[str | None, str | None, int]:
    """load_media in a fresh process (moto's server, which holds the objects, lives in this one):
    (error kind or None, message, peak Python allocation in bytes)."""
    cmd = [sys.executable, "-c", PEAK_SCRIPT, uri, media_type, json.dumps(options)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out["kind"], out["message"], out["peak"]


MiB = 1024**2


def test_a_large_non_image_is_refused_from_its_first_kb(put_object):
    uri = put_object("huge.jpg", b"not an image, just text named .jpg\n" * (4 * MiB // 35))  # 4 MiB
    kind, message, peak = load_measured(uri, "image")
    assert kind == "decode_error" and "not an image" in message, message
    assert peak < MiB  # the object was never read: 4 MiB would show


def test_large_files_of_the_other_media_type_are_named(put_object, zoo):
    with open(zoo["video"][0], "rb") as f:
        video = f.read()
    padded_video = put_object("clip.jpg", video + b"\0" * 2 * MiB)  # over SNIFF_ABOVE_BYTES: sniffed first
    with pytest.raises(MediaError, match=r"not an image: the first bytes show a video \(MP4/MOV\)"):
        load_media(padded_video, "image")
    with open(zoo["rgb_jpeg"][0], "rb") as f:
        jpeg = f.read()
    padded_jpeg = put_object("photo.mp4", jpeg + b"\0" * 2 * MiB)
    with pytest.raises(MediaError, match=r"not a video: the first bytes show an image \(JPEG\)"):
        load_media(padded_jpeg, "video")


@pytest.fixture(scope="module")
def noise_png() -> bytes:
    """A real 1024x1024 PNG of noise: about 3 MiB (noise does not compress)."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_image_over_its_byte_limit_is_refused_from_metadata_unread(put_object, noise_png):
    uri = put_object("noise.png", noise_png)
    kind, message, peak = load_measured(uri, "image", max_image_bytes=MiB)
    assert kind == "too_large" and f"{len(noise_png)} bytes" in message, message
    assert peak < MiB / 2  # not one megabyte of its 3 MiB was read (an S3 request alone costs some 300 KB)
    assert load_media(uri, "image").frames[0].shape == (1024, 1024, 3)  # under the default limit it loads


def test_byte_limits_are_per_media_type(put_object, zoo):
    with open(zoo["rgb_jpeg"][0], "rb") as f:
        jpeg = f.read()
    with open(zoo["video"][0], "rb") as f:
        video = f.read()
    image_uri, video_uri = put_object("photo.jpg", jpeg), put_object("clip.mp4", video)
    small_images = MediaOptions(max_image_bytes=len(jpeg) - 1)
    with pytest.raises(MediaError) as info:
        load_media(image_uri, "image", small_images)
    assert info.value.kind == "too_large"
    assert len(load_media(video_uri, "video", small_images).frames) == 2  # the video limit is its own
    small_videos = MediaOptions(max_video_bytes=len(video) - 1)
    with pytest.raises(MediaError) as info:
        load_media(video_uri, "video", small_videos)
    assert info.value.kind == "too_large"
    assert load_media(image_uri, "image", small_videos).frames[0].shape == (H, W, 3)


def test_defaults_documented():
    options = MediaOptions()
    assert (options.max_image_bytes, options.max_video_bytes) == (256 * MiB, 2 * 1024 * MiB)
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "failures.md").read_text()
    assert "256 MiB" in doc and "2 GiB" in doc


def test_an_object_without_a_listed_size_costs_at_most_the_limit(tmp_path, monkeypatch, noise_png):
    # Some stores list no size (or a stale one); the read is bounded at the limit + 1 byte all the same.
    from fsspec.implementations.local import LocalFileSystem

    path = tmp_path / "big.png"
    path.write_bytes(noise_png)
    original = LocalFileSystem.info
    monkeypatch.setattr(LocalFileSystem, "info", lambda self, p, **kw: {**original(self, p, **kw), "size": None})
    limit = MiB
    raised, peak = peak_memory_of(lambda: load_media(str(path), "image", MediaOptions(max_image_bytes=limit)))
    assert isinstance(raised, MediaError) and raised.kind == "too_large", raised
    assert f"more than {limit} bytes" in raised.message
    assert limit < peak < 1.5 * limit  # it read up to the limit, never the 3 MiB
    assert load_media(str(path), "image").frames[0].shape == (1024, 1024, 3)  # under the default limit it loads


# ------------------------------------------------------------------------------------------------------------
# URIs that can never work: bad_uri, at once, without retries


def test_names_that_can_never_work_are_bad_uri(tmp_path, zoo, s3_endpoint):
    too_long = str(tmp_path / ("x" * 300 + ".jpg"))  # a path component over NAME_MAX (255): ENAMETOOLONG
    for uri in [too_long, zoo["directory"][0], str(tmp_path / "nul\0byte.jpg"), "s3://Not_A_Bucket!/key.jpg"]:
        with pytest.raises(MediaError) as info:
            load_media(uri, "image")
        assert info.value.kind == "bad_uri", (uri[:80], info.value)
    assert len(str(info.value)) < 600  # a kilobyte-long name is shortened in the error


@pytest.mark.parametrize("code", [errno.ENAMETOOLONG, errno.EISDIR, errno.EINVAL])
def test_bad_uri_errors_are_not_retried(memory_jpeg, monkeypatch, code):
    # s3fs raises these OSErrors for S3's KeyTooLongError, InvalidBucketName, InvalidURI, ...
    calls = flaky_cat(monkeypatch, failures=99, error=OSError(code, os.strerror(code)))
    with pytest.raises(MediaError) as info:
        load_media(memory_jpeg, "image")
    assert info.value.kind == "bad_uri" and len(calls) == 1


def test_storage_retry_gives_up_at_once_on_bad_names():
    calls = []

    def stat_too_long():
        calls.append(1)
        raise OSError(errno.ENAMETOOLONG, "File name too long")

    with pytest.raises(OSError):
        store.retry(stat_too_long, "stat")
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------------------------
# JPEG draft: large JPEGs decoded at a reduced DCT scale, never below twice the model's input side

# The bound on the model's preprocessed pixels, draft on vs off, on the 0..255 scale (docs/failures.md, Limits): a mean
# absolute difference of at most 0.5, at most 8 at any pixel, and a PSNR of at least 50 dB, for real photographs
# at 12 MP. Measured: tiny LLaVA and tiny mPLUG-Owl2 mean <= 0.06, max 1, PSNR >= 60 dB; CLIP at 336 (LLaVA-1.5)
# mean <= 0.3, max 6, >= 53 dB; CLIP at 448 mean <= 0.16, max 4, >= 56 dB.
DRAFT_MEAN_ABS, DRAFT_MAX_ABS, DRAFT_PSNR_DB = 0.5, 8.0, 50.0


@pytest.fixture(scope="module")
def photos_12mp(tmp_path_factory) -> list[str]:
    """scikit-image's bundled colour photographs, upscaled to 4000x3000 (12 MP) and saved as JPEG q90."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).resize((4000, 3000), Image.Resampling.LANCZOS).save(path, quality=90)
        paths.append(str(path))
    return paths


def assert_within_draft_bound(a: np.ndarray, b: np.ndarray, mean, std, what) -> None:
    """Two processed pixel tensors (channels before height and width), compared on the 0..255 scale: normalised
    ones mapped back, raw uint8 ones (what the decode stage ships, pipeline.models) as they are."""
    shape = (-1, 1, 1)

    def to_255(x: np.ndarray) -> np.ndarray:
        if x.dtype == np.uint8:
            return x.astype(np.float64)
        return (x.astype(np.float64) * np.asarray(std).reshape(shape) + np.asarray(mean).reshape(shape)) * 255.0

    diff = to_255(np.asarray(a)) - to_255(np.asarray(b))
    mean_abs, max_abs, mse = np.abs(diff).mean(), np.abs(diff).max(), (diff**2).mean()
    psnr = 10 * np.log10(255.0**2 / mse) if mse else np.inf
    assert mean_abs <= DRAFT_MEAN_ABS and max_abs <= DRAFT_MAX_ABS and psnr >= DRAFT_PSNR_DB, (
        what,
        mean_abs,
        max_abs,
        psnr,
    )


def test_draft_decodes_smaller_but_never_below_its_side(photos_12mp):
    # 4000x3000: 1/8 would shift a centred square by half a pixel (1000 / 8 is odd), so 1/4 is the most
    for side, expected in ((64, (750, 1000)), (672, (750, 1000)), (896, (1500, 2000)), (2000, (3000, 4000))):
        frame = load_media(photos_12mp[0], "image", MediaOptions(draft_side=side)).frames[0]
        assert frame.shape[:2] == expected and min(expected) >= side
    full = load_media(photos_12mp[0], "image", MediaOptions(draft_side=672, draft=False)).frames[0]
    assert full.shape[:2] == (3000, 4000)
    assert load_media(photos_12mp[0], "image").frames[0].shape[:2] == (3000, 4000)  # no side known: full size


def test_draft_scale_keeps_the_pixel_grid():
    assert media.draft_scale(4032, 3024, 448) == 4  # 3024 / 8 = 378 < 448
    assert media.draft_scale(4032, 3024, 300) == 8  # an iPhone photo: every condition holds at 1/8
    assert media.draft_scale(4000, 3000, 100) == 4  # (4000 - 3000) / 8 is odd
    assert media.draft_scale(4000, 2667, 100) == 1  # 2667 is odd: no exact reduction
    assert media.draft_scale(6000, 4000, 896) == 4  # 4000 / 8 = 500 < 896


def test_draft_applies_to_jpeg_only(tmp_path, photos_12mp):
    png = tmp_path / "photo.png"
    Image.open(photos_12mp[1]).save(png)
    assert load_media(str(png), "image", MediaOptions(draft_side=64)).frames[0].shape[:2] == (3000, 4000)


def test_draft_side_follows_the_processor():
    assert media.draft_side_for({"shortest_edge": 336}, {"height": 336, "width": 336}) == 672
    assert media.draft_side_for({"longest_edge": 1456}, {"longest_edge": 364}) == 2912  # Idefics3: its largest
    assert media.draft_side_for(None, [[384, 768], [2304, 2304]]) == 4608  # anyres grids reach far above `size`
    assert media.draft_side_for({"shortest_edge": 3136, "longest_edge": 12845056}) > 12_000_000  # pixels: no draft
    assert media.draft_side_for(None, None) is None


@pytest.mark.parametrize("family", ["llava", "owl2"])
def test_lmm_preparer_drafts_within_the_bound(tiny_models, photos_12mp, family):
    from pipeline.scorers import ScorerArgs
    from pipeline.scorers.lmm import create

    kind = create("lmm", ScorerArgs(model=tiny_models[family], model_path=tiny_models[family]))
    drafted, full = kind.preparer(MediaOptions()), kind.preparer(MediaOptions(draft=False))
    from pipeline.scorers.lmm_model import Preprocessor

    image_processor = Preprocessor(tiny_models[family]).processor.image_processor
    for path in photos_12mp:
        row = {"uri": path, "media_type": "image"}
        a, b = drafted(row).inputs["pixel_values"], full(row).inputs["pixel_values"]
        assert_within_draft_bound(a, b, image_processor.image_mean, image_processor.image_std, path)


@pytest.mark.parametrize(
    "side, square", [(336, False), (448, False), (448, True)]
)  # LLaVA-1.5's CLIP processor; CLIP at 448; Q-Align's (mPLUG-Owl2: padded to a square first, then CLIP at 448)
def test_draft_within_the_bound_at_real_model_sizes(photos_12mp, side, square):
    from transformers import CLIPImageProcessor

    from pipeline.models.owl2 import preprocess_frames

    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    draft_side = media.draft_side_for(processor.size, processor.crop_size)

    def pixels(frame: np.ndarray) -> np.ndarray:
        if square:
            return preprocess_frames([frame], processor).numpy()[0]
        return processor(images=frame, return_tensors="np")["pixel_values"][0]

    for path in photos_12mp:
        a, b = (
            pixels(load_media(path, "image", options).frames[0])
            for options in (MediaOptions(draft_side=draft_side), MediaOptions(draft=False))
        )
        assert_within_draft_bound(a, b, processor.image_mean, processor.image_std, (path, side, square))
