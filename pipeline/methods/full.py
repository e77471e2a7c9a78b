"""`full`: fine-tune every weight of the model (the Q-Align reference recipe); the version is the whole model."""

from __future__ import annotations

from typing import Any

from torch import nn

from pipeline.methods import Attached, Method


class Full(Method):
    name = "full"
    default_lr = 2e-5  # the reference recipe

    def attach(self, model: nn.Module, processor: Any, options: dict[str, Any], parent: str) -> Attached:
        model.requires_grad_(True)
        return Attached(export=lambda folder: model.save_pretrained(folder, safe_serialization=True))


METHOD = Full()
