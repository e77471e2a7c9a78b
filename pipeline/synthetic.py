"""A synthetic MOS label set that a tiny model can learn from, with whole photographs held out for evaluation.

The sample corpus (pipeline.corpus) has one distortion kind per photo and images downscaled far below their
distortions' scale, too little for a from-scratch model to learn quality rather than content. This set:
- uses every bundled scikit-image photograph (colour ones, and grey ones as RGB): 17 sources;
- holds whole photographs out for the eval split, so the held-out SRCC measures generalisation to unseen content;
- applies every distortion kind at every level to every training photo, at two scales (more content per source);
- stores training items larger than the model's input so that training draws a new random crop of it every
  epoch (`crop` in pipeline.training): the model cannot memorise a few fixed pictures;
- stores eval items as crops of exactly the model's input size, so what the run measures is what the scoring job
  sees (no resize that would blur away the distortion).

MOS: 5 - level on a 1..5 scale (pipeline.corpus.synthetic_mos), a label with a known truth.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline import store
from pipeline.corpus import DISTORTIONS, LEVELS, distort, load_photo, resize_long_side, synthetic_mos
from schemas import LABELS_V1, validate_labels

COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket")
GREY_PHOTOS = ("brick", "camera", "cell", "clock", "coins", "grass", "gravel", "moon", "page", "text")
EVAL_PHOTOS = ("coffee", "rocket", "camera", "coins")  # held out whole: never trained on, in any crop or scale
TRAIN_PHOTOS = tuple(p for p in COLOUR_PHOTOS + GREY_PHOTOS if p not in EVAL_PHOTOS)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _crop_boxes(image: np.ndarray, crop: int, count: int) -> list[tuple[int, int]]:
    """`count` crop corners spread evenly over the image (a fixed grid: content-blind, deterministic)."""
    h, w = image.shape[:2]
    side = int(np.ceil(np.sqrt(count)))
    tops = np.linspace(0, h - crop, side).round().astype(int)
    lefts = np.linspace(0, w - crop, side).round().astype(int)
    return [(int(t), int(left)) for t in tops for left in lefts][:count]


def build_learning_set(
    root: str,
    crop: int = 32,
    train_sides: tuple[int, ...] = (96, 160),
    eval_side: int = 96,
    eval_crops: int = 4,
    train_photos: tuple[str, ...] = TRAIN_PHOTOS,
    eval_photos: tuple[str, ...] = EVAL_PHOTOS,
    seed: int = 0,
    train_kinds: tuple[str, ...] = DISTORTIONS,
) -> list[dict]:
    """Write the set's images under the local folder `root` (PNG, lossless) and return its label rows (labels/v1).

    Train rows: each train photo at each long side in `train_sides`, pristine once and each of `train_kinds` at
    levels 1..4. Eval rows: each eval photo at `eval_side`, pristine and every distortion kind alike, cut into
    `eval_crops` crops of `crop` x `crop` pixels at fixed positions.
    """
    if set(train_photos) & set(eval_photos):
        raise ValueError(f"photos in both splits: {sorted(set(train_photos) & set(eval_photos))}")
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    rows: list[dict] = []

    def add(item_id: str, pixels: np.ndarray, level: int, split: str, source: str, kind: str) -> None:
        path = os.path.join(root, f"{item_id}.png")
        Image.fromarray(pixels).save(path)
        rows.append(
            {
                "id": item_id,
                "uri": path,
                "media_type": "image",
                "task": "quality",
                "mos": synthetic_mos(level),
                "scale_min": 1.0,
                "scale_max": 5.0,
                "split": split,
                "source": source,
                "distortion": kind,
                "level": level,
            }
        )

    def versions(photo: np.ndarray, p: int, kinds: tuple[str, ...]) -> list[tuple[str, int, np.ndarray]]:
        """(kind, level, pixels): the pristine photo once, then each kind at every level above 0."""
        out = [("none", 0, photo)]
        for kind in kinds:
            k = DISTORTIONS.index(kind)
            out += [(kind, lv, distort(photo, kind, lv, seed=_seed(seed, p, k, lv))) for lv in LEVELS if lv]
        return out

    for p, name in enumerate(train_photos):
        for side in train_sides:
            photo = resize_long_side(load_photo(name), side)
            for kind, level, pixels in versions(photo, p * 100 + side, train_kinds):
                add(f"train-{name}-{side}-{kind}-{level}", pixels, level, "train", name, kind)

    for p, name in enumerate(eval_photos):
        photo = resize_long_side(load_photo(name), eval_side)
        boxes = _crop_boxes(photo, crop, eval_crops)
        for kind, level, pixels in versions(photo, 10_000 + p, DISTORTIONS):
            for c, (top, left) in enumerate(boxes):
                window = np.ascontiguousarray(pixels[top : top + crop, left : left + crop])
                add(f"eval-{name}-{c}-{kind}-{level}", window, level, "eval", name, kind)
    return rows


def write_label_shard(rows: list[dict], url: str) -> str:
    """Validate rows as labels/v1 and write them as one Parquet shard (extra columns carried along)."""
    table = pa.Table.from_pylist(rows)
    columns = {f.name: table.column(f.name).cast(f.type) for f in LABELS_V1}
    extra = {name: table.column(name) for name in table.column_names if name not in columns}
    table = pa.table({**columns, **extra})
    validate_labels(table, url)
    store.write_parquet(table, url)
    return url
