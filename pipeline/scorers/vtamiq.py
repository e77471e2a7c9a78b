"""`vtamiq`: a VTAMIQ model folder (pipeline.models.vtamiq) scoring each item against its reference.

Preparation loads the pair (pipeline.scorers.full_reference), computes PSNR and SSIM, and cuts both images into the
same sparse patches, at the scales the model's config asks for, drawn with a fixed seed (the same pair always gets
the same score); the patches cross to the device step, which runs the ViT, the difference modulation and the
regressor.

The regressor's output is on 0..1 of the scale its labels were given on (`score_scale` in the model's config.json),
clamped to it; a model trained on a distortion (`higher_is_better` false: the authors' published weights) is turned
around (1 - output), so `fr_score` is always higher = better, in the range the schema declares.

What the scores are (DEFINITION) is part of every row's `model_revision` and of the output's identity: an output
written under another definition refuses a rerun.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import registry
from pipeline.infra.media import MediaOptions
from pipeline.registry import checkpoint
from pipeline.scorers import Prepared, ScorerArgs
from pipeline.scorers.full_reference import load_pair, pair_metrics
from schemas.scores import ScoreColumns, fr_columns

GRID_SEED = 0  # the inference grid's jitter: one fixed seed, so a score depends on the pair alone
# v1: one scale; patch centres on floor(G (y + P/2) / H). v2: the original's positions (2022 release:
# floor(G clamp((y + P/2) / (H - P/2), 0, 1 - 1e-6))), its scales and embedding order, outputs turned to higher-better.
DEFINITION = "vtamiq/v2: original positions, multi-scale, seeded sampling"


@dataclass
class VTAMIQScorer:
    model: str
    model_path: str
    model_revision: str | None
    score_scale: tuple[float, float]
    higher_is_better: bool = True
    name: str = "vtamiq"
    reads: tuple[str, ...] = ("ref_uri",)
    references: tuple[str, ...] = ("ref_uri",)
    prepared_columns: tuple[str, ...] = ("psnr", "ssim")
    constants: dict[str, str] = field(default_factory=dict)
    videos_allowed: bool = True  # a video is a row error (video_not_supported)
    runs_on_device: bool = True

    @property
    def revision(self) -> str:
        """The rows' `model_revision`: the model's revision and what its scores are (DEFINITION)."""
        return f"{self.model_revision} ({DEFINITION})"

    @property
    def columns(self) -> ScoreColumns:
        return fr_columns(self.name, self.score_scale)

    def identity(self) -> dict:
        return {"scorer": self.name, "model": self.model, "model_revision": self.revision}

    def _config(self):
        from pipeline.models.vtamiq import CONFIG_NAME, VTAMIQConfig

        path = Path(registry.local_path(self.model_path)) / CONFIG_NAME
        return VTAMIQConfig.from_dict(json.loads(path.read_text()))

    def preparer(self, options: MediaOptions, crop: int | None = None) -> Callable[[dict], Prepared]:
        from pipeline.models.vtamiq import prepare_pair

        config = self._config()

        def prepare(row: dict) -> Prepared:
            reference, item = load_pair(row, options, crop)
            return Prepared(prepare_pair(reference, item, config, seed=GRID_SEED), pair_metrics(reference, item))

        return prepare

    def device_step(self, device: str) -> Callable[[list[Any]], dict[str, np.ndarray]]:
        from pipeline.models.vtamiq import VTAMIQ, collate

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = VTAMIQ.load(registry.local_path(self.model_path), device, dtype)
        lo, hi = self.score_scale

        @torch.inference_mode()
        def step(inputs: list[Any]) -> dict[str, np.ndarray]:
            batch = {k: v.to(device) for k, v in collate(inputs).items()}
            raw = model(batch["ref"], batch["dist"], batch["positions"], batch["scales"])
            unit = raw.clamp(0.0, 1.0).cpu().numpy().astype(np.float64)
            if not self.higher_is_better:
                unit = 1.0 - unit
            return {"fr_score": lo + unit * (hi - lo)}

        return step


def create(name: str, args: ScorerArgs) -> VTAMIQScorer:
    from pipeline.models.vtamiq import CONFIG_NAME, MODEL_TYPE

    if not args.model_path:
        raise ValueError("--scorer vtamiq needs --model (a VTAMIQ model folder or registry entry)")
    if args.task != "quality":
        raise ValueError(f"--scorer vtamiq measures quality against a reference: --task {args.task} does not apply")
    # Only config.json: the weights are the actors' to fetch, on their own nodes.
    config = json.loads((Path(checkpoint.metadata_folder(args.model_path)) / CONFIG_NAME).read_text())
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(
            f"--model {args.model}: not a VTAMIQ folder (config.json model_type {config.get('model_type')!r})"
        )
    scale = tuple(float(v) for v in config.get("score_scale", (0.0, 1.0)))
    higher = bool(config.get("higher_is_better", True))
    return VTAMIQScorer(args.model or args.model_path, args.model_path, args.revision, scale, higher)
