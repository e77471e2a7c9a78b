"""Tests of pipeline.scorers.classical: PSNR, PSNR-Y, SSIM and MS-SSIM against their reference implementations on
colour pairs (tests/goldens/classical: Wang's MATLAB code and MATLAB's psnr/rgb2ycbcr run in GNU Octave, and
scikit-image's peak_signal_noise_ratio), and against published values."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from pipeline.scorers import classical
from pipeline.scorers.classical import MAX_PSNR, METRICS, bt601_y, matlab_gray, ms_ssim, psnr, ssim

GOLDEN = Path(__file__).parent / "goldens" / "classical"


def _golden() -> tuple[dict, dict]:
    """The golden's pairs and expected values; a missing folder fails here, at collection, never skips."""
    return json.loads((GOLDEN / "pairs.json").read_text()), json.loads((GOLDEN / "expected.json").read_text())


PAIRS, EXPECTED = _golden()


def _rgb(name: str) -> np.ndarray:
    with Image.open(GOLDEN / "pairs" / name) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_metrics_reproduce_the_reference_implementations_on_colour_pairs(pair):
    """Measured: PSNR equal to 4e-15 dB, PSNR-Y to 5e-5 dB (a few pixels' Y rounded the other way at exact halves:
    Octave's rgb2ycbcr goes through [0, 1] doubles), SSIM and MS-SSIM to 5e-14."""
    ref, dist = _rgb(PAIRS[pair]["reference"]), _rgb(PAIRS[pair]["distorted"])
    expected = EXPECTED["pairs"][pair]
    assert METRICS["psnr"](ref, dist) == pytest.approx(expected["psnr"], abs=1e-9)
    assert METRICS["psnr"](ref, dist) == pytest.approx(peak_signal_noise_ratio(ref, dist, data_range=255), abs=1e-9)
    assert METRICS["psnr-y"](ref, dist) == pytest.approx(expected["psnr_y"], abs=1e-3)
    assert METRICS["ssim"](ref, dist) == pytest.approx(expected["ssim"], abs=1e-9)
    assert METRICS["ms-ssim"](ref, dist) == pytest.approx(expected["ms_ssim"], abs=1e-9)


def test_colour_damage_shows_in_rgb_psnr_and_little_in_luma():
    """The point of PSNR over RGB: swapping red and blue costs 14 dB more over RGB than on luma, and SSIM (grey)
    hardly sees a hue rotation."""
    got = {p: {m: METRICS[m](_rgb(v["reference"]), _rgb(v["distorted"])) for m in METRICS} for p, v in PAIRS.items()}
    assert got["coffee-channel-swap"]["psnr"] < 10.0 < 20.0 < got["coffee-channel-swap"]["psnr-y"]
    for pair in ("astronaut-hue30", "coffee-channel-swap", "chelsea-saturation-half"):
        assert got[pair]["psnr"] < got[pair]["psnr-y"] - 1.5, pair
    assert got["astronaut-hue30"]["ssim"] > 0.98


def test_matlab_gray_is_rgb2gray_to_the_last_bit():
    # the weights: the first row of inv of rgb2ntsc's matrix, as the golden's Octave computed them
    ntsc = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])
    np.testing.assert_allclose(classical.MATLAB_GRAY_WEIGHTS, np.linalg.inv(ntsc)[0], rtol=0, atol=1e-16)
    assert list(classical.MATLAB_GRAY_WEIGHTS) == EXPECTED["rgb2gray_weights"]
    # rounded to whole grey levels (MATLAB rgb2gray of uint8): red 76.23 -> 76, green 149.70 -> 150, blue 29.08 -> 29
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(matlab_gray(rgb), [[76, 150, 29, 255, 0]])
    assert matlab_gray(rgb).dtype == np.float64


def test_bt601_y_is_studio_range_rounded():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    # 16 + 65.481 = 81.481 -> 81, 16 + 128.553 -> 145, 16 + 24.966 -> 41; white 235, black 16
    np.testing.assert_array_equal(bt601_y(rgb), [[81, 145, 41, 235, 16]])
    # halves go up, as MATLAB's conversion to uint8 rounds (numpy's round would take 0.5 to 0)
    np.testing.assert_array_equal(classical._round_half_up(np.array([0.5, 1.5, 2.5, 2.4999])), [1, 2, 3, 2])


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metrics_take_8_bit_rgb_only(name):
    rgb = data.astronaut()
    for bad in (rgb.astype(np.float64), rgb[..., 0], rgb[..., :2]):
        with pytest.raises(ValueError, match="8-bit RGB"):
            METRICS[name](bad, bad)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def _noisy(x: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(x + sigma * rng.standard_normal(x.shape)), 0, 255).astype(np.uint8)


def _blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return np.round(ndimage.gaussian_filter(rgb.astype(np.float64), (sigma, sigma, 0))).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(METRICS))
def test_identical_images_score_perfectly(astronaut, name):
    assert METRICS[name](astronaut, astronaut) == (MAX_PSNR if name.startswith("psnr") else pytest.approx(1.0))


def test_psnr_matches_hand_formula():
    cam = data.camera().astype(np.float64)
    noisy = _noisy(cam, 10.0).astype(np.float64)
    mse = np.sum((cam - noisy) ** 2) / cam.size
    assert psnr(cam, noisy) == pytest.approx(10 * math.log10(255.0**2 / mse), rel=1e-12)
    # data_range enters squared: halving it costs 20 log10(2) dB
    assert psnr(cam, noisy, data_range=127.5) == pytest.approx(psnr(cam, noisy) - 20 * math.log10(2), rel=1e-12)
    assert psnr(cam, cam + 1e-9) == MAX_PSNR  # capped, never above the identical-image value


@pytest.mark.parametrize("name", sorted(METRICS))
def test_scores_fall_with_more_noise_and_more_blur(astronaut, name):
    by_noise = [METRICS[name](astronaut, _noisy(astronaut, s)) for s in (5.0, 15.0, 40.0)]
    by_blur = [METRICS[name](astronaut, _blurred(astronaut, s)) for s in (0.8, 1.6, 3.2)]
    assert by_noise[0] > by_noise[1] > by_noise[2]
    assert by_blur[0] > by_blur[1] > by_blur[2]


@pytest.mark.parametrize("metric", [psnr, ssim, ms_ssim])
def test_size_mismatch_raises(metric):
    with pytest.raises(ValueError, match="differ"):
        metric(np.zeros((200, 200)), np.zeros((200, 201)))


def test_ssim_and_ms_ssim_reject_images_below_their_window():
    with pytest.raises(ValueError, match="11x11 px .*10x300"):
        ssim(np.zeros((10, 300)), np.zeros((10, 300)))
    assert ssim(np.full((11, 11), 7.0), np.full((11, 11), 7.0)) == 1.0
    small = np.random.default_rng(0).uniform(0, 255, (170, 300))
    with pytest.raises(ValueError, match="170x300"):
        ms_ssim(small, small)
    with pytest.raises(ValueError, match="300x170"):
        ms_ssim(small.T, small.T)
    ok = np.random.default_rng(1).uniform(0, 255, (176, 176))
    assert ms_ssim(ok, ok) == pytest.approx(1.0)


def test_ms_ssim_clamps_negative_contrast_structure(astronaut):
    # The photographic negative anti-correlates every window: cs < 0 at each scale, clamped to 0 (relu) -> 0, not NaN.
    # (Wang's msssim.m returns a complex number here.)
    assert METRICS["ssim"](astronaut, 255 - astronaut) < 0
    assert METRICS["ms-ssim"](astronaut, 255 - astronaut) == 0.0


def test_ssim_settings_match_the_direct_formula():
    """SSIM recomputed window by window from the 2004 paper's definition (11x11 Gaussian sigma 1.5, K1 0.01, K2 0.03,
    population moments, mean over the windows that lie inside the image)."""
    ref = data.camera()[200:226, 240:270].astype(np.float64)
    dist = _noisy(ref, 25.0, seed=3)
    t = np.arange(-5, 6)
    g1 = np.exp(-(t**2) / (2 * 1.5**2))
    w = np.outer(g1, g1) / np.outer(g1, g1).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(ref.shape[0] - 10):
        for j in range(ref.shape[1] - 10):
            x, y = ref[i : i + 11, j : j + 11], dist[i : i + 11, j : j + 11]
            mx, my = (w * x).sum(), (w * y).sum()
            vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
            cxy = (w * (x - mx) * (y - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    assert ssim(ref, dist) == pytest.approx(np.mean(values), abs=1e-10)


def test_ssim_reproduces_ipol_reference_on_camera():
    """Published value: scikit-image/scikit-image, skimage/metrics/tests/test_structural_similarity.py,
    test_gaussian_structural_similarity_vs_IPOL: mssim_IPOL = 0.357959091663361, computed with the independent IPOL
    implementation (imdiff -m mssim, https://www.ipol.im/pub/art/2011/g_lmii/) on skimage.data.camera() against the
    same image plus N(0, 20^2) noise drawn with np.random.seed(5), clipped and cast to uint8. (scikit-image asserts it
    to 3 decimals; the two Gaussian windows differ slightly in truncation.)"""
    np.random.seed(5)  # the legacy global generator, exactly as the source draws the noise
    cam = data.camera()
    cam_noisy = np.clip(cam + 20.0 * np.random.randn(*cam.shape), 0, 255).astype(cam.dtype)
    assert ssim(cam, cam_noisy) == pytest.approx(0.357959091663361, abs=1e-5)


# Published calibration values on TID2013 (documentation: the images are not committed). IQA-PyTorch
# (chaofengc/IQA-PyTorch, ResultsCalibra/results_official.csv, commit 01ae427f9afd66842031d3a7cb694dcad5b5cbb8) gives
# the original code's values on five TID2013 pairs, I03 I04 I06 I08 I19 (I04 and I06 are colour distortions):
#   psnr     21.11   20.99   27.01   23.30   21.62   (scikit-image over RGB)
#   ssim     0.6993  0.9978  0.9989  0.9669  0.6519  (Wang's MATLAB code on rgb2gray)
#   ms_ssim  0.6733  0.9996  0.9998  0.9566  0.8462  (Wang's msssim.m on rgb2gray)
# This golden's Octave script on those pairs gives 21.1136 20.9872 27.0139 23.3003 21.6187; 0.69934 0.99775 0.99891
# 0.96690 0.65188; 0.66998 0.99963 0.99982 0.95653 0.84179, and these functions equal it to 5e-14. So PSNR and SSIM
# reproduce the published digits; the published MS-SSIM of I03, I08, I19 is NOT reproduced by Wang's msssim.m itself
# (off by 3.3e-3, 7e-5, 4.4e-3; IQA-PyTorch's own port also gives 0.670 and 0.842). The earlier luma PSNR read 56.0
# and 56.6 dB on I04 and I06; their rounded BT.601 Y is unchanged, so psnr-y is 100 dB (the cap) there.


def _checkerboard(index: int) -> np.ndarray:
    raw = base64.b64decode("".join(CHECKERBOARDS[index]))
    # The bytes are TensorFlow's files unchanged: their git blob ids are the ones in TensorFlow's tree.
    assert hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest() == CHECKERBOARD_BLOBS[index]
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.float64)


# Expected values of tensorflow/python/ops/image_ops_test.py (tensorflow/tensorflow), MultiscaleSSIMTest._msssim and
# SSIMTest._ssim, "computed with Matlab implementation" (Wang's), for the pairs (1, 2), (1, 3), (2, 3) of the three
# 240x180 RGB images tensorflow/core/lib/ssim/testdata/checkerboard{1,2,3}.png; "for color images, MS-SSIM scores
# are averaged over color channels" (so is SSIM); TensorFlow scales to [0, 1] with max_val 1, the same as 0..255 with
# data_range 255. Given to 6 decimals.
PUBLISHED_MS_SSIM = {(1, 2): 0.091016, (1, 3): 0.091025, (2, 3): 0.999567}
PUBLISHED_SSIM = {(1, 2): 0.230880, (1, 3): 0.231153, (2, 3): 0.996828}


@pytest.mark.parametrize("pair", list(itertools.combinations((1, 2, 3), 2)))
def test_ms_ssim_and_ssim_reproduce_published_matlab_values(pair):
    a, b = (_checkerboard(i) for i in pair)
    channels = range(3)
    ms = np.mean([ms_ssim(a[..., c], b[..., c]) for c in channels])
    single = np.mean([ssim(a[..., c], b[..., c]) for c in channels])
    # 6 published decimals: within rounding (5e-7) plus float noise
    assert ms == pytest.approx(PUBLISHED_MS_SSIM[pair], abs=1e-6)
    assert single == pytest.approx(PUBLISHED_SSIM[pair], abs=1e-6)


def test_ms_ssim_weights_and_minimum_are_the_papers():
    assert classical.MS_SSIM_WEIGHTS == (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    assert classical.MS_SSIM_MIN_SIZE == 176


# tensorflow/core/lib/ssim/testdata/checkerboard{1,2,3}.png (Apache-2.0, TensorFlow Authors), base64 of the
# unchanged files, with their git blob ids in TensorFlow's tree (commit 9ec03c98f72263a2d0a94296c3f37b8ea7697e23).
CHECKERBOARDS = {
    1: (
        "iVBORw0KGgoAAAANSUhEUgAAAPAAAAC0CAIAAAAl/ja/AAAACXBIWXMAAC4gAAAuIAHVHB4bAAACt0lEQVR42u3dwY3aYBhFUTtKD/YCF0gXdEF/"
        "wAJX8WfBrJIssRBX5xRgPTFXI2+sb5qOsW3b7XYbB7jdbtu22Wzzf/06YjF8iqBJETQpgiZF0KQImhRBkyJoUgRNiqBJETQpgiZF0KQImhRBkyJo"
        "UgRNiqBJETQpgiZF0KTMl8vl0xvgfQ76mvwbP4K3+ds3T145iBE0KYImRdCkCJoUQZMiaFIETYqgSRE0KYImRdCkCJoUQZMiaFIETYqgSRE0KYIm"
        "RdCk/L7f729/6DzP+74vyzLGmOf5jU8eYyzLsu/7PM9jDJtt/vv5R3x/O8ZY1/V6va7r+vaf4/l8ns/n5/P59j+hzV+9+eWQ/9CvX2RZltPp9PYn"
        "jzH2fX88Hjbb/C/v0KQImhRBkyJoUgRNiqBJETQpgiZF0KQImhRBkyJoUgRNiqBJETQpgiZF0KQImhRBkyJoUhyvp+WI6+SOqtv8kc2TVw5iBE2K"
        "oEkRNCmCJkXQpAiaFEGTImhSBE2KoEkRNCmCJkXQpAiaFEGTImhSBE2KoEkRNCmO19sc2fzzfMfrbW5sfnG83ubO5sk7NDGCJkXQpAiaFEGTImhS"
        "BE2KoEkRNCmCJkXQpAiaFEGTImhSBE2KoEkRNCmCJkXQpAiaFMfraTniOrmj6jZ/ZPPklYMYQZMiaFIETYqgSRE0KYImRdCkCJoUQZMiaFIETYqg"
        "SRE0KYImRdCkCJoUQZMiaFIETYrj9TZHNv883/F6mxubXxyvt7mzefIOTYygSRE0KYImRdCkCJoUQZMiaFIETYqgSRE0KYImRdCkCJoUQZMiaFIE"
        "TYqgSRE0KYImxfF6Wo64Tu6ous0f2Tx55SBG0KQImhRBkyJoUgRNiqBJETQpgiZF0KQImhRBkyJoUgRNiqBJETQpgiZF0KQImhRBkyJoUv4AO9Sl"
        "mVOmM2kAAAAASUVORK5CYII="
    ),
    2: (
        "iVBORw0KGgoAAAANSUhEUgAAAPAAAAC0CAIAAAAl/ja/AAAACXBIWXMAAC4gAAAuIAHVHB4bAAAL40lEQVR42u3d22tkWRUG8O/b51RVqtLpVHen"
        "k5mkk3YexBEFRVBBYUZBUVARVFR8csbLDOKoKIOICo6MPnsBB1EHRQVHQUS8wSiOc1FfxnkQ76B0Z3Lp9CWdSlKVVM7Zy4dKxD9gHcTF93vK054z"
        "q77aZ1fD2oujfh/+MvJyHv4C+QJgrguTFy+Xj9/BlUuw5LhwQr5cX7zz6uOX65Xk+swGnk9bD05/6HzaMtBxZSa7ujb/qbd96eraPJPnM+fMleXL"
        "v/nJHSsXLuX/kzqfrC8SiAItoSjQEooCLaEo0BKKAi2hKNASigItoSjQEooCLaEo0BKKAi2hKNASigItoSjQEooCLaEo0BKKAi2hKNASigItoZRl"
        "1czChuzfAQkABEqCk79cFYQVBJC9l84JVmZLlfnuIClbkTNgBjPXZzaYsSASkP5/6gygfOCT/ps0CdtJ+CZsxzt2GUXi6T9NpetdZNcnp+X98V2P"
        "PZSHs6Rr17ehx+JFeH0PhWstAGDxsLr//NeGMxWd68x0dvD9vx6mrR58vyqN1fl4edic+6JAxtoy3vATrF6Aa3s9jMWZZxfueWPZXzXX9nojlrbt"
        "B18eL90w328KkC2v1MNHzS74rguA06udN76Sp1bdbwRY76S3vKC/1km+qWuyzgBQ+ubtGJ1v4/hvBVAQRXK/8AMpsS6KqkT2PnGARS6ADOeHNiKZ"
        "WYLB95YSArBUEAWdjxxN1hnQj0IJRoGWUBRoCUWBllAUaAlFgZZQFGgJRYGWUBRoCUWBllAUaAlFgZZQFGgJRYGWUBRoCUWBllAUaAlFgZZQyiba"
        "YACASBmwSd+RH4NlgBmc/OX5wADMDNm7sZcGAzKR4d+qnkn/RU/qQUMy8+2mI0CYAdl3TvSx8uJ138QBAFKuBnnrPOra+x1g4EzRrhZaB7VvF10m"
        "2lVOc/vouBckA1Mcb0w+RtdqpDy1vpGQc+lb6GS4Uhftm6d6rcJ3IncmuntI5zI6npX4D176WOm+aLK8Nn3xra95bG16Jbl+wY3o7Y3v/NE/ertj"
        "54sojHPT+w+89tG56X3nrcOI1j6Wfo3Wvu+VAInY2MZ7vlJsbDu3shpt6qD74mdeMXXY9d2gzXBmDvd9pn1mjs57PwCgXGlih7ZsdS7ngDPe7d8E"
        "t4t2Nd85qM31MzRDp7PH87M4XTi/w41oZS6vo7XjWgsQqHvlRlpZtZbvPmrATN1u35zuDXvOxcjodchzHdzCJq4GKH33uQkCxpMDtPsJzAAYaO5L"
        "Gw3ZYOZfaAOMMO/jLkFLBJLv8QswGGHH513fa3cmMZ4UuYnTrv+SIv87CrSEokBLKAq0hKJASygKtISiQEsoCrSEokBLKAq0hKJASygKtISiQEso"
        "CrSEokBLKAq0hKJASygKtIRSom5gVQMyckGUyM6TopELkkUTjWNEQgKaGEDNXNBIg3dfaIEM1Ob90AYzy7lirpJzC1ZGromT/i53pb3Ff1GA7cOD"
        "l373yZXDed/mTQBWjzdu/sXqQ99yZMPuQVn9bZ69ee9eRexMVd+avX9nqvItBYnRHs+kcqogXd+1ZuifHb3qo7/vt0a+PfBmNtWambryJtyYaWKA"
        "dpnf7L4mCLRWD1728SduXjpN12HiBHZ7wx/f+dju9JCue3+GHRycq/7+abTO+Raahp1TnS88912rp7yvoiB6e/XruD1d1t6XOqS5s8+++sMPnzu7"
        "5h+6nfn64ffZzi2gf5ds2ciUeQJALlIuk3OgjVYU4GSsuudnSBhRgE30k4OT8wbNtRgwINEMtaF2P3Jkq7MxA+bbUc4MpOM6N3C6049CCUWBllAU"
        "aAlFgZZQFGgJRYGWUBRoCUWBllAUaAlFgZZQFGgJRYGWUBRoCUWBllAUaAlFgZZQFGgJRYGWUMqG5p4ToIGZ7nPgkWFghvPKkxGhpPOMYQAJRpqR"
        "ILNzOZDJyUhP34Y0y+R/Oq+cC0JMisxmhtcPzX+IOIFhag8WhwMk59wBh+3RQjnu88j3I8ywedRX9tq57PiOkqXhSl0sbG7adOHbUwiivVePZ2+i"
        "dL6MwiyN+ldsUJPONy+QVu3wyqBd7XbYQE9h+dTwJe6Lkrg2Uz/yvcev5co3z0Yu3qy//fVrizdr390uIW8e8t6fP3fzYJmuM3sNaYEbX3zk7gVu"
        "+m5KybC+gLse4vot8P2qZGJl52j87Rtpx3lLIrE5bL3jsdvXhiu+dZ5oZIdOxmEa7y4OBxw7Bxro9/JCebTI7PzCYq6t3txrr47a/lPEUSxUmxft"
        "cnb90ZIyUHA8WwzPOhfDwCGy7dS47n8dTD3i2qDTQJ2Bhs7Qkwelgd4nXeNkxvzJf8MPT24FAJyP0RlIgJGZyTfQADIxGVzv+/ae1Pnkx5DrExNg"
        "I3We0L9ySCgKtISiQEsoCrSEokBLKAq0hKJASygKtISiQEsoCrSEokBLKAq0hKJASygKtISiQEsoCrSEokBLKAq0hFJaE30wgCUYarBqoG0sE3nS"
        "fOSLyLkmanhfvoBsRN1AB10GJoPg4dsCPymHkbmBmyhANlVnAOXzf/ov90UTbL0703rZPdadoe+VAMRwL/+83p7LtXn3Kx51u+9/55+O0j99q2Hg"
        "bNrqz+4yjZNv1zdQlGnqiX63TL6vWiMwKJ98+vb5Qek7RRyww07/3rc+c9j5VyNNss//mX+gYdbrr7Ruex/OLLv3so52659W272cvce1c+7U7gPv"
        "+OHc7K45f4ZEa6deGaB16LuRJlhxrdX9VKd3teV8xwWBYe/Jp19+ajRtritbRv9WfuDBp88s0vxvMWjmyEEzS0Qj3dkALaEu/Me1M6Gua1Z18g90"
        "SrQG9iMSk9Nd4fy6MhoKS8kSs3OgiUTWuVXVjQRaPwolFAVaQlGgJRQFWkJRoCUUBVpCUaAlFAVaQlGgJRQFWkJRoCUUBVpCUaAlFAVaQlGgJRQF"
        "WkJRoCUUBVpCKRvoUwQMMFgiEnzbmU7mtBPuIz1B4mTUpG9RDMdd8DTfwdkJmDTAw3kg9+ShzTIs07l3M/9XJJqY9Y1z7msCBk7nma3B6f2Bc+MY"
        "MTWoxtVWYZVzT6HxII9s1EI55Tw81VC3jzarC1Wa9W2SJbFZFyXnp1j6toYarFu2Z5eGM2P3OtvpuTKNFzBsZDMt60/4L8rE7sbem+/+zvZm37kb"
        "GRy1R0++4Klhe+Qbjmy2tDc7/t172J417310Y7r19lN3rU+36LuTEu3tfHsaPKflPPncLJ2b23z3Zz94rn/Fu2XY0vB875efsz+eRxPD6xvZoQHu"
        "5Zmrg/pZMLneywGm7nD8vK2D9hC+hxnkw1zZqETV9X6BW5U669XSat1xv9Shl+sX4nqXtW+gM1K3ddRfHPbPDsz5DhvDoJuPWtifaubI0cQZmgBg"
        "5OQY7VoNIh2PVPfdoW1yIp386TwJfnIyt+Mx854LI01+rzRwhjYzMxqcfwWBdrwTsZEztP6VQ0JRoCUUBVpCUaAlFAVaQlGgJRQFWkJRoCUUBVpC"
        "UaAlFAVaQlGgJRQFWkJRoCUUBVpCUaAlFAVaQlGgJZTSdxb3BGEEUs1UJeeeQgMr1sbKnFuwslkNFMmKZMl3PrmhSGYFUTD7FjshJzIXrJ0b1WEp"
        "5eLkf8B1ZRBEmQzJu9UNAFD+bXyb+6IkrnfL337kz9cH7u316B6N33t5q3c0di4Gs+X21/9wq+Vb3XsK0d5/9/pXrb3v+yWEYdS2J+44GLaz99cb"
        "ixxUT+wlOjeqg7azVzz81NLO3pL3jQAAUP61iUADV6fGv73vz9fS2H3x5Rv5G5/fXb7u3LgP2urw1CufuXV1tOz/zHj2N7966KJdzvQ846WMS8t8"
        "5NFi9YL7tTvYuZGrB/d5zfk7SGJ3VH7xqaUm6ozGjhwgkDBp+/aUiWTHbdTeNwKYgSkZiOS6dgYJ1EVRocyuP1oSURcgSniXw4hkRAIK7yMHgYQm"
        "6nxcE/cVRf6HFGgJRYGWUBRoCUWBllAUaAlFgZZQFGgJRYGWUBRoCUWBllAUaAlFgZZQFGgJRYGWUBRoCUWBllAUaAlFgZZQFGgJ5d/hPJNcyKAM"
        "kwAAAABJRU5ErkJggg=="
    ),
    3: (
        "iVBORw0KGgoAAAANSUhEUgAAAPAAAAC0CAIAAAAl/ja/AAAACXBIWXMAAC4gAAAuIAHVHB4bAAARdElEQVR42u2dT4hs21XGv2/vfaqqq/t13e77"
        "BB3oCw8FTYhBgwMTjQRFMU6dmAzMRHj4J/iHTAwRIkIGPoKRDAxGFAMaxIDGYCIh8EAH0Wj8Ex2Eh8880IEk93bXvd1dVefsvT4HVbfvE6erMWzW"
        "jzvqwbqnd/9qn3M29a3Fzb17cIbABJ3b1b9AK8AAOhUWWsLZ5eyV53HvApZBuRQWOKA9sLPv+O9XLuxehsnpmgk1pBNe/c4z73yGjyoK4XTNYhnq"
        "44vTF37gj64uTvJgktM1U21KZ+eXL3/p+furi8kyv+HX+ZbkWy4I/n8JoYOuCKGDrgihg64IoYOuCKGDrgihg64IoYOuCKGDrgihg64IoYOuCKGD"
        "rgihg64IoYOuCKGDrgihg64IoYOuCKGDrgihg64otdxBVQIGu7OLTvvSfmFFASSaUGpNpoLqmCkkSmFlzWROyHDKFFIkxJoH1pJaZnO7ZhrSrLA2"
        "QwWqgd/w63xLOfm6b8HXLszdlBWQBQBZfiFZEJhT4/3BxBGDo9ACR5bd8nLGy4biJTTEzLqD7cZSt7kNyTEkq4njbphnFSBn+YVk72qdn178+z94"
        "7ltRIvOkzTl++5+0WTEbnBYalGpKq8t7f/IGrh6gDl5CAwSbxqP1Z95juyOm5nfNMGHO9A580xzJ76YCAYkcp/bZL/znODUmVzNa4vHm5AMf5fEG"
        "LflZd2fr/PQ/0LO+FSGCEx6d43u/hIsViqfQaInL9ekvvplHFzC33Y7AlHl+ZV/+tQenG4l+nxQQELCqeFVY8bBJuSCBnK3Lu57DYg2j12oIoPCo"
        "8I3fef9hToPkt23c3TofKLPJuSIEDMAECDBAbvfYfcEkPLtQWhqa2yMHhSnrnuH6/v3hGjU73ggPXUp41SAB1bNLiQ2YVdvNiARzu18JLFJtfHah"
        "PNjguiPd2TofuIOXwv0edDfvmiIyUIVskG8HmycvK6UdfuJ20ahQtZohAtnzocPAnAsrkwHVcYdOQEmshmqg4LVF3+U6H4hju6ArQuigK0LooCtC"
        "6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArivs3rA/fMhdEgN5R2UPBuyh9CCUfAqGetQncho0cl1tI"
        "h2/Iu2WkXnOJEghQdK6Ou1tnACjNfY/e//oJqT4JHPktCBtQIVaxip6RNBGiUE0TkB2Xg0CDDC1BAJJrTBZoiQC5l9otsQIgEZbNMuSXKQRgGcpA"
        "a97rfKCc3dzB569IGz0+hQyOuf394GwsWeoqTyYbHEOyMJQmnm44+D6IESjQHLM1RM9MIQQNmq0fkRAgt44fIgrwyDhcL+aFRY5/QKSE2QZ8prHc"
        "yQNveeW9l74VRQ5WHy7ymz6uywUcuxhARELeHL/po5+cb5oleg2CB9AsnSx2w+9/kotdtuRYGUjI2/L89yFt4ddoRkLJuLzm23/17PLRecl+Vywo"
        "aTbOfvQ3fmQ2zYx+rQYIq1ieYv6HC54iV7cWNreUe1fOO7QINjQTT4FjoLlWz8KMQ12VyZTdHu8I0FIpW5we8Ygwx61DQEYW7q2Rtp5PYAIJlXSB"
        "84fKA+TWaEZosoXycL2YjzPz6yZCoFXNCnG6wD1yuoNnaPOOZwvIeyUqMMG5I5gBVcYqmtHv5k1ISazYB509r1kQIUPLIB0fDA4dpCwPwAANgNuj"
        "AZGAAVI2y2bJbaUFmKRMVMNEVdF7i76DUw4Ces1RBFzfgvYHBji8CDleMsAnhV2v+fY/4L6LiGObEgAC9y+Djr0G9nUPV3k46PBahv0S68k6029P"
        "ekKcQwddEUIHXRFCB10RQgddEUIHXRFCB10RQgddEUIHXRFCB10RQgddEUIHXRFCB10RQgddEUIHXRFCB10RQgddUe4ieQsACakZKpKZ4zxnCama"
        "UAUzuX3HX5KQDA1GWIKSa7KXsFRRoAJlx/GYgKoykROyYwiSIGBkTsWSGZJfFIYQkAr3IXvPqMMTCtb+RdGAino/4wS1ZjfxBBS0qzRL53PIPKe9"
        "qjHPueFiwtEOjr0dKCgj7xZpB1aweQ4wBhaJIy52SObZbYDGBju6ul5O08Lgt9JEE2wAZhMWQPWq+5SidzlXlAAi1fr9H3ppPZ0WugX3te/XYvXf"
        "r/4ZVh0/4iSqabVL7cvfilmC34xaAdm4mbUXV++7mbXsF4SUkDLGK3xbHr6lkNltijihprQ8Gd/xvpeWeWquwT/JhrwoL/+U8oIy9wgWJzk/RkvI"
        "tJv14iPP/fRmvcg0rzQyoIS0GXYf+4lPb+djctw4yEn1PJ/+4+t+9zyfTqpef0MBg+nBonz7O79nvchsjk0dgIzZjX7yxc38Rub36EioteHk5MGL"
        "H3r9crmWnnQ5crhmgsL2ZHrxz3C9QnbsUnKg+G/7Igag8WZ5crM9SoN5dk5S2g3zWToXxkS3hzuCCW3GEywq8g5qfmPEARPmNstjSmU4dNhyKSzL"
        "HJKNeAjXNwpQTWXQxTilWUNrxVPoXDFlzkfYiFT9Pt8H7uClcP8ol5CapWqZ5hhHTlJKTWqG5tohgYYqVBiREuT6zGGAUlUxDNUxmy1ISDCiEJb8"
        "Gn4QMpTEnIpyhmieQiehSCKMIN2FjmO7oCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0Lo"
        "oCu8pxQCt1+N30/PFt2ybtrHPW5ngrleMZ/MxJQg+SX/ntSkAIneY+YpiYfhbn5Z5EPB//VruKJ9HvQuUt/uWfJ9CIFQnphrToBXKkFQVkpMEzgB"
        "WW4T9AhM4AQOSSlrkOeoyQQNWa0Qhc1c50JmtMLUSqoGx7m6lFpJrTwd2eiYgwSQMCRDFpK/0WXU4FxSyLARZXO+2yDlwTOCRXEcxrPUxn0uyE1o"
        "VrQV7GJbLJcqt4mQIgbThfJq/ci22TVgCSUMW5uWl0jmPPm8ldnxGhshAX4By32wVzd4uB20GZD9I1j8i8dv860oIIOP0X6ufvUxWvFqrLLfRxPO"
        "b/TFX//6+bUmt54tEDhwupjuv/Wvv3Ixng9p8ouyYkI5w8Xn0w+d4WLyuyWKGCZcnOEtn08XZyyTmxuEpsz71/aVD/7XvWsz13VOqa3Hszf91csP"
        "x/tDGh2bEO3x36EFFHAkN6vdyDaBbtlsQeR2sNPUjun4oAuBJCpsvS2PRzINboPgIYEJ+Wy6uK8HEwdfoZEwHZU6p838hBaMGE24Fq4Av/HkAJCg"
        "EZfb8niE4zrfchfP0CCUoGwJVPITOgk1MxtMhBy7wUBgBgzISUjIya0LEaFKZmEqZcIwwVNoCFMBVQDQbzn2c9qThIzDPy8EJCD7r/Mt/qccerIm"
        "2k9sd678dGP2PejAk1MO7A86XK9bACX3jm7cH57wyZK7vrppvxHp6U/ciutu1hlAnEMHnRFCB10RQgddEUIHXRFCB10RQgddEUIHXRFCB10RQgdd"
        "EUIHXRFCB10RQgddEUIHXRFCB10RQgddEUIHXVHY7iKxAlKH9IBjUmqP1FDgORwTAhPUWEq2lFGS2/RbQkIqjuOyX1N6H3dDA+AdZSXRZEqQzJwz"
        "habkvs63lN3pzLfiPiS7A5G+Bkxu3SJuSSg0EMVVaFBF43iRbYeR2XHeq4ARWZN3N5FDGxFYFgAV16HLlIrlRUVTdg3JIiGzjhfZthiT2zrfUr77"
        "ky/7VhRQzC5ni/y292O2gPkNKBeQMV3rU+3BM2bVbwQ1AJrVMvvlF75YOaNfXpFQQz7i4+XZNbhLaG6ZQiAJOXP52fNt5uAXZyJQk2ab/NLfvf6Z"
        "TW6e3TNItTosf+VnvjANS3reZQ+U7/rTV3wrCmTT+niV3vALWK7Q5LVJS2DGdKM/bjvfBheEasunxzcfe+G3jpc3atnzs6KEvGnffKU0ZkxuVYVE"
        "peu8fPfR7lEuxTHYS6MN0/wzf/v2eZ2b3whqEk04PsUHfu+lo3PpDu7fxU6dh30LzK3aMiNPyAImz09hBpKd4mtzSI7TrYnKdKLt9mJZNrlZ8hY6"
        "DecJGUByu2gBmajUSpZMxW2MuCCjabSTo+vFOJnfDk2gVSzn3F4eJ7HVOxDa/aUQBAw0HR7rVBybrkEAzDA0mOsOjYZkKCXbUBqb/BZa+4cwFKB4"
        "x6eTDi+FjX7dIvYrQjSYkimZ30qTMMGMJVvJpNvN+ylxbBd0RQgddEUIHXRFCB10RQgddEUIHXRFCB10RQgddEUIHXRFCB10RQgddEUIHXRFCB10"
        "RQgddEUIHXRFCB10RfHOdAE4JFQoQSAco0GQSO2/My85hmSF1wwZ42smvDmthfZjnD1Dsjr845Op9W6V95MmAfJwyX7B/f2kP7qNf/+/FFTvkgQa"
        "YGglYUBryS3+ISDDSkrIyfXeQkJICQUUaJ61KYhINrABAprXR2Vv2QAI1ZDk9xEUYDAhtym1KRn9YiWEVVgFkpDuYNQkUHDiXHEfwcICR+vNzbgc"
        "2uQotDJmNzbpEWHmmZNSQ5q0w1iQZ65dNARlldlDuyduILc5wwJKxqWlgtWMyS9SCIIGG9KwPN8upmae2XpYxdEpOS2xI+odCN1+07nivvtJudi9"
        "+60fvrlY5mKuK81xGD/1ls+NszFNyW2KOFnVzuy4fu79LEvHJjYCBtPDRXnzM+95OC+DY2cVQRnDtX5weDDMzLJjPE+tlZPTy1/6+x8/ObmszXF+"
        "NpEqtqfzj/+BbU+Z/I0uWPoWhCQQONLReqMLpNK8HphEZUtpNlY9GjUmx6dGcVKdZBgz2gxyjSOblIZLWz22QvNtB4NBKphmlHlm4FUxzFI7Wm2P"
        "lmPT5JaBF0Fhtm1TwTgg+T9zFL+mC6+56AwIraRWMga3NwBBULIhEyWhJbjl6wkkgMxIQjK/u/dh6jloGQYq0680D+8UhmYwv9n1ECTQ0MySAWbJ"
        "r3USkRuUkAQKbrfYp9zFKcfhGilQotyOOXg4OTkccfjG9g+T2uW9Zxxe1g6nHI6vboezHpBPDzqc1gI4FNyfbtC/2YD7zPpb4hw66IoQOuiKEDro"
        "ihA66IoQOuiKEDroihA66IoQOuiKEDroihA66IoQOuiKEDroihA66IoQOuiKEDroihA66IriPmxZ4CHyUMyKofjNfCVkyYoVaoCS32i+/dfYM1DF"
        "yVhFr+C+ABqqodSWKl0DljChNFOuymZ+WxMpiZYaTPsIuDOGaoQRpHs/gzKw+VYUSGigHV8fcbfMY3PMhSakPOWvWdmgJbn9DQk0oaa8OBpnZRzU"
        "3K6YpNnRQuOzxRZldJ3ojAxeaf7o/vxK5jdinlRtw8IScxKB7B38KzpaTuCI1NyzK/y37fO+FQXkpKtNft9HX3e1ydlx9Llg5KzVH37lX2etOnYx"
        "gAhW2Wrz6NOye6BjGllQQt7p9X+uPNJvQxKRhLHoc2/cjEWu3WBUlVe8+Ut+ZMVNk9vkc4k5tZvt6sOf+Jub7VlO1f0BgZ9Y/5hvRQEFfMzp50/+"
        "4YYT3TaOQ8+W1UavvvdmdSUVv+ymyKT1uHru06+udysmeS00JZErrV+9eW6l9f725XPNBIX1Cs+9Wtarw+I4XTNErG7w1Z+1e49h2bFDFVNql+PZ"
        "6176j/Xouc63lDlH34oAMjiylmlBDn7WgcKUUUZN2kk2mdsWLXFQnZRnR5YKBpqb0FBFnkFXR/fn4ITBUehhwtU5cssAS/UTGpgySjOcPkASsk9Z"
        "YD+fHBgxO7Y0eK7zLXfxUoi076hVJJq5Co0EG1QgAoXybBcBFKiKZqikn9BoQAVLrQXVd4cuFaVCGQAse+7QICwLDWiujf5waIdWzXmdb4lju6Ar"
        "QuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KArQuigK0LooCtC6KAr/gfsJq3IT5EUaQAA"
        "AABJRU5ErkJggg=="
    ),
}
CHECKERBOARD_BLOBS = {
    1: "6ede4395e2c8d3eb530c074ff3ac1c1974a441ef",
    2: "baaa43229074f737dcf5040d209e9fb9ecad989c",
    3: "95fa3bbb3ee42673b2b7e52cf84e704f249fa26b",
}
