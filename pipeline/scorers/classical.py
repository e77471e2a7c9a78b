"""Classical full-reference metrics (PSNR, PSNR-Y, SSIM, MS-SSIM) as the field computes them, CPU only.

`METRICS` maps each name to its value for a reference and a distorted image, HxWx3 8-bit RGB arrays (what
pipeline.infra.media decodes), computed on the colour representation of its published definition, so that numbers
compare with papers' tables:

- `psnr`: over the three RGB channels, data range 255 (MATLAB `psnr`, scikit-image `peak_signal_noise_ratio`).
- `psnr-y`: on BT.601 studio-range luma, the super-resolution papers' convention: Y = 16 + (65.481 R + 128.553 G +
  24.966 B) / 255 for R, G, B in 0..255, rounded to 8 bits (MATLAB `rgb2ycbcr` on uint8 input), data range 255.
- `ssim`: Wang's `ssim_index.m` (Wang, Bovik, Sheikh, Simoncelli 2004): 11x11 Gaussian window (sigma 1.5), K1 0.01,
  K2 0.03, population moments, mean over the windows inside the image; on MATLAB `rgb2gray` of each image.
- `ms-ssim`: Wang's `msssim.m` (Wang, Simoncelli, Bovik 2003): the same window at five scales, 2x2 averaging with
  symmetric padding between scales, weights `MS_SSIM_WEIGHTS`; on MATLAB `rgb2gray`.

`psnr`, `ssim` and `ms_ssim` compute on given arrays (planes for the SSIMs); `matlab_gray` and `bt601_y` make the
planes. tests/goldens/classical holds the values of the reference code on colour pairs (hue, channel order,
saturation, noise, blur, JPEG); tests/test_classical.py holds these functions to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

# PSNR of two identical images is +inf; a finite cap (MAX_PSNR, 100 dB: the psnr column's range) keeps the column
# numeric, sortable and filterable. 100 dB is far above anything a lossy codec produces on 8-bit content (MSE 1e-5 of
# a grey level), so it only ever means "identical".
from schemas.scores import MAX_PSNR

# MATLAB rgb2gray's weights: the first row of inv of rgb2ntsc's matrix [1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703],
# to the last bit (not BT.601's 0.299/0.587/0.114: the difference moves SSIM by up to 1e-3 on colour pairs).
MATLAB_GRAY_WEIGHTS = (0.29893602129377539, 0.58704307445112136, 0.11402090425510325)
# BT.601 studio-range luma of 8-bit R'G'B' (MATLAB rgb2ycbcr's first row and offset)
BT601_Y_WEIGHTS = (65.481, 128.553, 24.966)
BT601_Y_OFFSET = 16.0

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # the 11x11 window
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_MIN_SIZE = 2 * SSIM_RADIUS + 1  # ssim_index.m refuses images smaller than its window
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# The 11-px window must still fit at the coarsest scale, which is 1/16 of the full resolution.
MS_SSIM_MIN_SIZE = SSIM_MIN_SIZE * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


def _rgb8(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 8-bit RGB image, got shape {arr.shape} of {arr.dtype}")
    return arr.astype(np.float64)


def _round_half_up(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion to uint8 of non-negative values: to the nearest whole number, halves away from zero
    (numpy's round takes halves to even)."""
    return np.floor(x + 0.5)


def matlab_gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB `rgb2gray` of an 8-bit RGB image: the weighted sum rounded to whole grey levels (float64, HxW)."""
    x = _rgb8(rgb)
    w = MATLAB_GRAY_WEIGHTS
    return _round_half_up(w[0] * x[..., 0] + w[1] * x[..., 1] + w[2] * x[..., 2])


def bt601_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 studio-range luma (16..235) of an 8-bit RGB image, rounded to whole levels as MATLAB `rgb2ycbcr` does
    on uint8 input (float64, HxW)."""
    x = _rgb8(rgb)
    w = [c / 255.0 for c in BT601_Y_WEIGHTS]
    return _round_half_up(w[0] * x[..., 0] + w[1] * x[..., 1] + w[2] * x[..., 2] + BT601_Y_OFFSET)


def _check_pair(ref: np.ndarray, dist: np.ndarray, planes: bool) -> tuple[np.ndarray, np.ndarray]:
    ref, dist = np.asarray(ref, dtype=np.float64), np.asarray(dist, dtype=np.float64)
    if planes and (ref.ndim != 2 or dist.ndim != 2):
        raise ValueError(f"expected two HxW planes, got shapes {ref.shape} and {dist.shape}")
    if ref.shape != dist.shape:
        raise ValueError(f"reference and distorted sizes differ: {ref.shape} vs {dist.shape}")
    return ref, dist


def psnr(ref: np.ndarray, dist: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB, the MSE over every element (all channels of
    an RGB image), capped at `MAX_PSNR` (identical images)."""
    ref, dist = _check_pair(ref, dist, planes=False)
    mse = float(np.mean((ref - dist) ** 2))
    if mse == 0.0:
        return MAX_PSNR
    return min(10.0 * math.log10(data_range**2 / mse), MAX_PSNR)


def _gaussian_1d() -> np.ndarray:
    taps = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-(taps**2) / (2.0 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering, keeping only pixels whose window lies inside the image (filter2's 'valid')."""
    out = ndimage.correlate1d(img, g, axis=0, mode="nearest")
    out = ndimage.correlate1d(out, g, axis=1, mode="nearest")
    r = SSIM_RADIUS
    return out[r:-r, r:-r]


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """(mean contrast-structure, mean SSIM) of one scale: Wang's ssim_index_new.m."""
    g = _gaussian_1d()
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x**2
    var_y = _filter_valid(y * y, g) - mu_y**2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)
    lum_map = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float(cs_map.mean()), float((lum_map * cs_map).mean())


def ssim(ref: np.ndarray, dist: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM of two HxW planes (e.g. `matlab_gray`), as Wang's ssim_index.m. Both sides must be at least
    `SSIM_MIN_SIZE` (11) px; smaller raises ValueError."""
    ref, dist = _check_pair(ref, dist, planes=True)
    if min(ref.shape) < SSIM_MIN_SIZE:
        h, w = ref.shape
        raise ValueError(f"SSIM needs at least {SSIM_MIN_SIZE}x{SSIM_MIN_SIZE} px (its window), got {h}x{w}")
    return _ssim_terms(ref, dist, data_range)[1]


def _downsample(img: np.ndarray) -> np.ndarray:
    """2x2 average pooling; an odd row/column count is first padded by repeating the last one (msssim.m's
    imfilter(ones(2)/4, 'symmetric', 'same') then every second pixel)."""
    h, w = img.shape
    img = np.pad(img, ((0, h % 2), (0, w % 2)), mode="symmetric")
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


def ms_ssim(ref: np.ndarray, dist: np.ndarray, data_range: float = 255.0) -> float:
    """Multi-scale SSIM of two HxW planes, as Wang's msssim.m: prod_j cs_j^w_j for j = 1..4 times ssim_5^w_5.

    Negative scale terms (anti-correlated structure) are clamped at 0 before the fractional powers, as TensorFlow's
    tf.image.ssim_multiscale does (relu); the MATLAB original returns a complex number there. Both sides must be
    at least `MS_SSIM_MIN_SIZE` (176) px so that the 11-px window fits at the fifth scale; smaller raises ValueError.
    """
    ref, dist = _check_pair(ref, dist, planes=True)
    h, w = ref.shape
    if min(h, w) < MS_SSIM_MIN_SIZE:
        raise ValueError(f"MS-SSIM needs at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} px (5 scales), got {h}x{w}")
    result = 1.0
    last = len(MS_SSIM_WEIGHTS) - 1
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        if scale > 0:
            ref, dist = _downsample(ref), _downsample(dist)
        cs, full = _ssim_terms(ref, dist, data_range)
        term = full if scale == last else cs
        result *= max(term, 0.0) ** weight
    return float(result)


# metric name -> its value for a pair of 8-bit RGB images (reference, distorted), each on its own representation
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "psnr": lambda ref, dist: psnr(_rgb8(ref), _rgb8(dist)),
    "psnr-y": lambda ref, dist: psnr(bt601_y(ref), bt601_y(dist)),
    "ssim": lambda ref, dist: ssim(matlab_gray(ref), matlab_gray(dist)),
    "ms-ssim": lambda ref, dist: ms_ssim(matlab_gray(ref), matlab_gray(dist)),
}
# What each name means, in words: part of the kind's identity (its rows' model_revision), so that scores of another
# definition never mix with these in one output.
DEFINITIONS = {
    "psnr": "PSNR over RGB, peak 255 (MATLAB psnr, scikit-image)",
    "psnr-y": "PSNR on BT.601 studio-range Y rounded to 8 bits (MATLAB rgb2ycbcr), peak 255",
    "ssim": "SSIM as ssim_index.m (Wang 2004) on MATLAB rgb2gray",
    "ms-ssim": "MS-SSIM as msssim.m (Wang 2003) on MATLAB rgb2gray",
}
