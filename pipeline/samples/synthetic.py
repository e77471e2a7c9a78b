"""A synthetic MOS label set that a tiny model can learn from, with whole photographs held out for evaluation.

The sample corpus (pipeline.samples.corpus) has one distortion kind per photo and images downscaled far below their
distortions' scale, too little for a from-scratch model to learn quality rather than content. This set:
- uses every bundled scikit-image photograph (colour ones, and grey ones as RGB): 17 sources;
- holds whole photographs out for the eval split, so the held-out SRCC measures generalisation to unseen content;
- applies every distortion kind at every level to every training photo, at two scales (more content per source);
- stores training items larger than the model's input so that training draws a new random crop of it every
  epoch (`crop` in pipeline.training.lmm): the model cannot memorise a few fixed pictures;
- stores eval items as crops of exactly the model's input size, so what the run measures is what the scoring job
  sees (no resize that would blur away the distortion).

MOS: 5 - level on a 1..5 scale (pipeline.samples.corpus.synthetic_mos), a label with a known truth.

With `full_reference`, every item is a pair (labels/v2 `ref_uri`): its reference is the pristine photograph at the
same size and crop, written losslessly once per (photograph, size) for training and per (photograph, crop) for
evaluation, so a random training crop taken at one place in both stays aligned.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.infra import store
from pipeline.samples.corpus import DISTORTIONS, LEVELS, distort, load_photo, resize_long_side, synthetic_mos
from schemas import LABELS_V2, validate_labels
from schemas.labels import OPTIONAL

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


def versions(photo: np.ndarray, seeds: tuple[int, ...], kinds: tuple[str, ...]) -> list[tuple[str, int, np.ndarray]]:
    """(kind, level, pixels): the pristine photo once, then each kind at every level above 0 (noise seeded by
    `seeds`, the kind and the level)."""
    out = [("none", 0, photo)]
    for kind in kinds:
        k = DISTORTIONS.index(kind)
        out += [(kind, lv, distort(photo, kind, lv, seed=_seed(*seeds, k, lv))) for lv in LEVELS if lv]
    return out


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
    full_reference: bool = False,
) -> list[dict]:
    """Write the set's images under the local folder `root` (PNG, lossless) and return its label rows (labels/v2).

    Train rows: each train photo at each long side in `train_sides`, pristine once and each of `train_kinds` at
    levels 1..4. Eval rows: each eval photo at `eval_side`, pristine and every distortion kind alike, cut into
    `eval_crops` crops of `crop` x `crop` pixels at fixed positions. `full_reference`: each row's `ref_uri` names its
    pristine photograph at the same size and crop (the pristine item is then a pair of identical images).
    """
    if set(train_photos) & set(eval_photos):
        raise ValueError(f"photos in both splits: {sorted(set(train_photos) & set(eval_photos))}")
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    rows: list[dict] = []

    def reference(ref_id: str, pixels: np.ndarray) -> dict:
        if not full_reference:
            return {}
        path = os.path.join(root, f"{ref_id}.png")
        if not os.path.exists(path):
            Image.fromarray(pixels).save(path)
        return {"ref_uri": path}

    def add(item_id: str, pixels: np.ndarray, level: int, split: str, source: str, kind: str, ref: dict) -> None:
        path = os.path.join(root, f"{item_id}.png")
        Image.fromarray(pixels).save(path)
        rows.append({**ref, **label_row(item_id, path, level, split, source, kind)})

    for p, name in enumerate(train_photos):
        for side in train_sides:
            photo = resize_long_side(load_photo(name), side)
            ref = reference(f"ref-train-{name}-{side}", photo)
            for kind, level, pixels in versions(photo, (seed, p * 100 + side), train_kinds):
                add(f"train-{name}-{side}-{kind}-{level}", pixels, level, "train", name, kind, ref)

    for p, name in enumerate(eval_photos):
        photo = resize_long_side(load_photo(name), eval_side)
        boxes = _crop_boxes(photo, crop, eval_crops)
        for kind, level, pixels in versions(photo, (seed, 10_000 + p), DISTORTIONS):
            for c, (top, left) in enumerate(boxes):
                window = np.ascontiguousarray(pixels[top : top + crop, left : left + crop])
                ref = reference(
                    f"ref-eval-{name}-{c}", np.ascontiguousarray(photo[top : top + crop, left : left + crop])
                )
                add(f"eval-{name}-{c}-{kind}-{level}", window, level, "eval", name, kind, ref)
    return rows


def label_row(item_id: str, uri: str, level: int, split: str, source: str, kind: str) -> dict:
    """A labels/v2 row of a synthetic image: quality on 1..5, the MOS from the level; source, kind and level kept."""
    return {
        "id": item_id,
        "uri": uri,
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


def write_label_shard(rows: list[dict], url: str) -> str:
    """Validate rows as labels/v2 and write them as one Parquet shard (extra columns carried along)."""
    table = pa.Table.from_pylist(rows)
    columns = {f.name: table.column(f.name).cast(f.type) for f in LABELS_V2}
    # optional columns in their declared types (one of nothing but nulls would otherwise be typed null)
    columns.update({n: table.column(n).cast(t) for n, t in OPTIONAL.items() if n in table.column_names})
    extra = {name: table.column(name) for name in table.column_names if name not in columns}
    table = pa.table({**columns, **extra}).replace_schema_metadata(LABELS_V2.metadata)
    validate_labels(table, url)
    store.write_parquet(table, url)
    return url
