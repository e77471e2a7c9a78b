"""The scorer that ships with qcurate, and the labelled set it is trained on.

The scorer is a registry entry made by jobs/train_shipped_scorer.py, so that a first run (the demo, `qcurate score`
without --model) gives scores that mean something, with no download. Its set is made on the spot from what installs
with qcurate's dependencies: procedural "dead leaves" pictures (occluding discs whose sizes follow a power law, a
model of natural images' statistics that image-quality work uses) and windows of bundled photographs, each pristine
and at every distortion kind and level. It is measured on the demo's own full-reference pairs: six photographs it
never saw, whole images as the demo scores them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.samples.corpus import DEFAULT_PHOTOS, DISTORTIONS, build_pair_corpus, load_photo, resize_long_side
from pipeline.samples.synthetic import GREY_PHOTOS, label_row, versions

SHIPPED_SCORER = Path(__file__).resolve().parent / "registry" / "tiny-iqa"

NOTICE = (
    "no --model: scoring with qcurate's shipped tiny-iqa, a tiny Q-Align-style scorer that knows four synthetic "
    "distortions (blur, noise, JPEG, pixelation) and not real photographs' quality; name a real checkpoint with "
    "--model (e.g. q-future/one-align)"
)


def recorded_metrics() -> dict:
    """The shipped version's metrics.json, as the retraining job wrote it (held-out figures under "held_out")."""
    from pipeline import registry

    version = registry.current_version(str(SHIPPED_SCORER))
    return json.loads((SHIPPED_SCORER / version / registry.METRICS_FILE).read_text())


# Every bundled photograph the demo does not show: three colour ones and the grey ones (as RGB).
SCORER_PHOTOS = ("retina", "motorcycle", "grace_hopper", *GREY_PHOTOS)
SCORER_SIDES = (224, 320)  # long sides: the demo's sample corpus (224) and its full-reference pairs (320)


def dead_leaves(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A dead-leaves picture (HxWx3 uint8): discs of random colours near one palette, radii drawn from p(r) ~ r^-3,
    each drawn over the ones before; half of them shaded linearly; a faint 1/f texture on top. Rendered at twice the
    size and Lanczos-downscaled, so its edges are as soft as a downscaled photograph's (the pristine level must not
    look pixelated)."""
    h, w = 2 * height, 2 * width
    image = np.empty((h, w, 3), np.float32)
    image[:] = rng.uniform(0, 255, 3)
    palette = rng.uniform(40, 215, 3)
    count = int(rng.integers(1500, 3000))
    r_min, r_max = 4.0, 0.5 * min(h, w)
    a = -2.0  # 1 - 3: inverse CDF of the r^-3 law on [r_min, r_max]
    radii = (r_min**a + rng.uniform(size=count) * (r_max**a - r_min**a)) ** (1 / a)
    ys, xs = np.mgrid[0:h, 0:w]
    for radius in radii:
        cy, cx = rng.uniform(-radius, h + radius), rng.uniform(-radius, w + radius)
        y0, y1 = int(max(0, cy - radius)), int(min(h, cy + radius + 1))
        x0, x1 = int(max(0, cx - radius)), int(min(w, cx + radius + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = ys[y0:y1, x0:x1] - cy, xs[y0:y1, x0:x1] - cx
        inside = dy**2 + dx**2 <= radius**2
        colour = np.clip(palette + rng.normal(0, 60, 3) * rng.uniform(0.2, 1), 0, 255) * rng.uniform(0.3, 1.2)
        if rng.uniform() < 0.5:
            slope = rng.normal(0, 40, 2) / max(radius, 1.0)
            colour = colour + (dy * slope[0] + dx * slope[1])[inside][:, None]
        image[y0:y1, x0:x1][inside] = np.clip(colour, 0, 255)
    # A faint 1/f texture over everything (as natural surfaces have): texture must not read as noise.
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    spectrum = np.fft.rfft2(rng.normal(size=(h, w))) / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w))
    texture = np.fft.irfft2(spectrum, s=(h, w))
    image += (texture / texture.std() * rng.uniform(0, 12))[:, :, None]
    small = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(small)


def build_scorer_set(root: str, leaves: int = 300, views: int = 12, seed: int = 0) -> list[dict]:
    """Write the shipped scorer's labelled set under the local folder `root` (PNG) and return its labels/v2 rows.

    Train: `leaves` dead-leaves pictures, and `views` random windows of each of SCORER_PHOTOS (each side 40-100% of
    the photograph's, at a random place); each at a random long side between the demo's two sizes and aspect ratio
    up to 3:2, pristine and at every distortion kind and level: whole images, as the scorer sees them when it scores.
    Eval: the demo's full-reference pair corpus (pipeline.samples.corpus.build_pair_corpus: six photographs never
    trained on, every kind and level), whole.
    """
    if set(SCORER_PHOTOS) & set(DEFAULT_PHOTOS):
        raise ValueError(f"photographs in both splits: {sorted(set(SCORER_PHOTOS) & set(DEFAULT_PHOTOS))}")
    root = os.path.abspath(root)
    os.makedirs(os.path.join(root, "train"), exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []

    def add(source: str, view: int, picture: np.ndarray, seeds: tuple[int, ...]) -> None:
        for kind, level, pixels in versions(picture, seeds, DISTORTIONS):
            item_id = f"{source}-{view}-{kind}-{level}"
            path = os.path.join(root, "train", f"{item_id}.png")
            Image.fromarray(pixels).save(path, compress_level=1)  # lossless; fast to write and read
            rows.append(label_row(item_id, path, level, "train", source, kind))

    def long_side() -> int:
        return int(rng.integers(SCORER_SIDES[0], SCORER_SIDES[1] + 1))

    for v in range(leaves):
        long = long_side()
        short = int(long * rng.uniform(2 / 3, 1.0))
        height, width = (long, short) if rng.uniform() < 0.5 else (short, long)
        add("leaves", v, dead_leaves(height, width, rng), (seed, 1000 + v))
    for p, name in enumerate(SCORER_PHOTOS):
        photo = load_photo(name)
        h, w = photo.shape[:2]
        for v in range(views):
            ch, cw = (int(side * rng.uniform(0.4, 1.0)) for side in (h, w))
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            add(name, v, resize_long_side(photo[top : top + ch, left : left + cw], long_side()), (seed, p, v))
    for pair in build_pair_corpus(os.path.join(root, "eval")):
        rows.append(label_row(pair["id"], pair["uri"], pair["level"], "eval", pair["source"], pair["distortion"]))
    return rows
