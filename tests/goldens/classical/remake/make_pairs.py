"""Writes the golden's colour pairs: crops of scikit-image photographs and distorted copies of them, as PNG.

Run from the golden folder (tests/goldens/classical): `python remake/make_pairs.py`. Deterministic (seeded noise,
Pillow's JPEG encoder at a fixed quality); the committed PNGs are what the expected numbers were computed on, so the
test never needs to rerun this.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, data

HERE = Path(__file__).resolve().parent.parent
PAIRS = HERE / "pairs"

# reference name -> crop of a scikit-image photograph; coffee's odd size exercises MS-SSIM's padding of odd sides
REFERENCES = {
    "astronaut": lambda: data.astronaut()[30:254, 150:390],  # 224x240
    "coffee": lambda: data.coffee()[100:301, 150:337],  # 201x187
    "chelsea": lambda: data.chelsea()[40:232, 80:336],  # 192x256
}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def hue_shift(rgb: np.ndarray, degrees: float) -> np.ndarray:
    hsv = color.rgb2hsv(rgb)
    hsv[..., 0] = (hsv[..., 0] + degrees / 360.0) % 1.0
    return _to_uint8(color.hsv2rgb(hsv) * 255)


def saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
    hsv = color.rgb2hsv(rgb)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0, 1)
    return _to_uint8(color.hsv2rgb(hsv) * 255)


def colour_noise(rgb: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _to_uint8(rgb + sigma * rng.standard_normal(rgb.shape))


def blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    return _to_uint8(ndimage.gaussian_filter(rgb.astype(np.float64), (sigma, sigma, 0)))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)  # 4:2:0 chroma subsampling, Pillow's default
    return np.asarray(Image.open(buf).convert("RGB"))


# pair name -> (reference, distortion); the first three change colour and hardly the luminance
PAIRS_SPEC = {
    "astronaut-hue30": ("astronaut", lambda x: hue_shift(x, 30.0)),
    "coffee-channel-swap": ("coffee", lambda x: np.ascontiguousarray(x[..., ::-1])),  # RGB -> BGR
    "chelsea-saturation-half": ("chelsea", lambda x: saturation(x, 0.5)),
    "astronaut-colour-noise": ("astronaut", lambda x: colour_noise(x, 12.0, seed=24)),
    "coffee-blur": ("coffee", lambda x: blur(x, 1.2)),
    "chelsea-jpeg15": ("chelsea", lambda x: jpeg(x, 15)),
}


def main() -> None:
    PAIRS.mkdir(parents=True, exist_ok=True)
    refs = {name: np.ascontiguousarray(make()) for name, make in REFERENCES.items()}
    for name, rgb in refs.items():
        Image.fromarray(rgb).save(PAIRS / f"{name}.png")
    listing = {}
    for name, (ref, distort) in PAIRS_SPEC.items():
        Image.fromarray(distort(refs[ref])).save(PAIRS / f"{name}.png")
        listing[name] = {"reference": f"{ref}.png", "distorted": f"{name}.png"}
    (HERE / "pairs.json").write_text(json.dumps(listing, indent=1) + "\n")


if __name__ == "__main__":
    main()
