"""Classical full-reference fidelity metrics (PSNR, SSIM, MS-SSIM) on luminance, CPU only.

All metrics take two float HxW luma planes in [0, `data_range`] (see `luminance`) of the same shape. They follow the
settings of the papers that defined them, so that numbers are comparable with published tables:

- SSIM: Wang, Bovik, Sheikh, Simoncelli 2004 -- 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population
  (biased) covariance, mean over the "valid" part of the SSIM map (where the whole window lies inside the image).
- MS-SSIM: Wang, Simoncelli, Bovik 2003 -- the same window at five scales, 2x2 average pooling between scales, weights
  `MS_SSIM_WEIGHTS`, contrast-structure at scales 1..4 and luminance * contrast-structure at scale 5.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

# PSNR of two identical images is +inf; a finite cap (MAX_PSNR, 100 dB: the psnr column's range) keeps the column
# numeric, sortable and filterable. 100 dB is far above anything a lossy codec produces on 8-bit content (MSE 1e-5 of
# a grey level), so it only ever means "identical".
from schemas.scores import MAX_PSNR

# ITU-R BT.601 luma weights on full-range (0..255) R'G'B' -- the "Y channel" most IQA papers and MATLAB's rgb2gray use.
BT601_WEIGHTS = (0.299, 0.587, 0.114)

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11x11 window: scipy's truncate 3.5 * sigma 1.5 rounds to a radius of 5 px
SSIM_K1 = 0.01
SSIM_K2 = 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# The 11-px window must still fit at the coarsest scale, which is 1/16 of the full resolution.
MS_SSIM_MIN_SIZE = (2 * SSIM_RADIUS + 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B in [0, 255] (float64, HxW) of an HxWx3 8-bit image.

    A 2-D (grey) input is returned as float64 unchanged. No studio-swing offset (16..235) is applied: the metrics only
    need a plane with the same range for reference and distorted images.
    """
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB or HxW grey image, got shape {arr.shape}")
    r, g, b = (arr[..., c].astype(np.float64) for c in range(3))
    return BT601_WEIGHTS[0] * r + BT601_WEIGHTS[1] * g + BT601_WEIGHTS[2] * b


def _check_pair(ref_y: np.ndarray, dist_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref_y, dtype=np.float64)
    dist = np.asarray(dist_y, dtype=np.float64)
    if ref.ndim != 2 or dist.ndim != 2:
        raise ValueError(f"expected two HxW luma planes, got shapes {ref.shape} and {dist.shape}")
    if ref.shape != dist.shape:
        raise ValueError(f"reference and distorted sizes differ: {ref.shape} vs {dist.shape}")
    return ref, dist


def psnr(ref_y: np.ndarray, dist_y: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio 10 log10(data_range^2 / MSE) in dB, capped at `MAX_PSNR` (identical images)."""
    ref, dist = _check_pair(ref_y, dist_y)
    mse = float(np.mean((ref - dist) ** 2))
    if mse == 0.0:
        return MAX_PSNR
    return min(10.0 * math.log10(data_range**2 / mse), MAX_PSNR)


def ssim(ref_y: np.ndarray, dist_y: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM with the settings of Wang et al. 2004 (scikit-image's implementation, options set to match)."""
    ref, dist = _check_pair(ref_y, dist_y)
    # gaussian_weights with sigma 1.5 and scikit-image's default truncate 3.5 gives the 11x11 window; the map is
    # averaged over the valid region (scikit-image crops the window radius), as Wang's ssim_index.m does.
    return float(
        structural_similarity(
            ref,
            dist,
            data_range=data_range,
            gaussian_weights=True,
            sigma=SSIM_SIGMA,
            use_sample_covariance=False,
            K1=SSIM_K1,
            K2=SSIM_K2,
        )
    )


def _gaussian_1d() -> np.ndarray:
    taps = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
    g = np.exp(-(taps**2) / (2.0 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable Gaussian filtering, keeping only pixels whose window lies entirely inside the image."""
    out = ndimage.correlate1d(img, g, axis=0, mode="nearest")
    out = ndimage.correlate1d(out, g, axis=1, mode="nearest")
    r = SSIM_RADIUS
    return out[r:-r, r:-r]


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """(mean contrast-structure, mean SSIM) of one scale."""
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


def _downsample(img: np.ndarray) -> np.ndarray:
    """2x2 average pooling; an odd row/column count is first padded by repeating the last one (symmetric padding, as
    Wang's msssim.m filters with imfilter(..., 'symmetric') and TensorFlow's ssim_multiscale pads)."""
    h, w = img.shape
    img = np.pad(img, ((0, h % 2), (0, w % 2)), mode="symmetric")
    return 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])


def ms_ssim(ref_y: np.ndarray, dist_y: np.ndarray, data_range: float = 255.0) -> float:
    """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003): prod_j cs_j^w_j for j = 1..4 times ssim_5^w_5.

    Negative scale terms (anti-correlated structure) are clamped at 0 before the fractional powers, as TensorFlow's
    tf.image.ssim_multiscale does (relu); the MATLAB original would return a complex number there. Both sides must be
    at least `MS_SSIM_MIN_SIZE` (176) px so that the 11-px window fits at the fifth scale; smaller raises ValueError.
    """
    ref, dist = _check_pair(ref_y, dist_y)
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
