"""Pixel-space visual prompts: a learnable border added to every image of a completely frozen model.

The `visual-prompt` training method (shared/reference/visual-prompt-adaptation-readme.md): a padding prompt of P
pixels around the model's input square, bounded to [-1, 1] by tanh, added to the image in [0, 1] pixel space, the
sum clamped to [0, 1], and only then normalised. The model's processor has already resized and normalised the image,
so the prompt undoes the (affine) normalisation, adds itself, and normalises again: the same `prepare` path as the
scorer, with the prompt as one extra step on the pixel tensor.

Saved as its own small artifact (visual_prompt.safetensors + visual_prompt.json) beside the frozen model's files;
the Scorer applies it whenever a model folder has one, so the scoring job runs such a version as it was trained.
A visual-prompt parent keeps its prompt training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.methods import Addition, Attached, Method, Option, load_artifact, save_artifact

WEIGHTS = "visual_prompt.safetensors"
CONFIG = "visual_prompt.json"


def image_geometry(processor: Any) -> tuple[int, list[float], list[float]]:
    """(side, mean, std) of a processor that makes fixed-size square CLIP-style inputs; an error otherwise."""
    ip = getattr(processor, "image_processor", None)
    crop = getattr(ip, "crop_size", None) if ip is not None else None
    if ip is None or not getattr(ip, "do_center_crop", False) or not crop or crop.get("height") != crop.get("width"):
        raise ValueError(
            "the visual-prompt method needs a processor that makes fixed-size square images (CLIP-style: LLaVA, "
            f"mPLUG-Owl2); got {type(ip).__name__}"
        )
    if not getattr(ip, "do_normalize", False) or abs(getattr(ip, "rescale_factor", 0) - 1 / 255) > 1e-9:
        raise ValueError("the visual-prompt method needs an image processor that rescales by 1/255 and normalises")
    return int(crop["height"]), [float(m) for m in ip.image_mean], [float(s) for s in ip.image_std]


class VisualPrompt(Addition):
    """A border of `pixels` pixels around a `side` x `side` image: 3 * (side^2 - (side - 2 pixels)^2) parameters."""

    def __init__(self, side: int, pixels: int, mean: list[float], std: list[float]) -> None:
        super().__init__()
        if not 0 < 2 * pixels < side:
            raise ValueError(f"a border of {pixels} px does not fit a {side} px image (need 0 < 2 * pixels < side)")
        self.side, self.pixels = side, pixels
        inner = side - 2 * pixels
        # Zeros: tanh(0) = 0, so an untrained prompt leaves the model exactly as it was.
        self.top = nn.Parameter(torch.zeros(3, pixels, side))
        self.bottom = nn.Parameter(torch.zeros(3, pixels, side))
        self.left = nn.Parameter(torch.zeros(3, inner, pixels))
        self.right = nn.Parameter(torch.zeros(3, inner, pixels))
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def delta(self) -> torch.Tensor:
        """The prompt as a [3, side, side] image in [-1, 1], zero inside the border."""
        inner = self.side - 2 * self.pixels
        hole = self.top.new_zeros(3, inner, inner)
        middle = torch.cat([self.left, hole, self.right], dim=2)
        return torch.tanh(torch.cat([self.top, middle, self.bottom], dim=1))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [..., 3, side, side] -> normalised pixels of the prompted images."""
        if pixel_values.shape[-3:] != (3, self.side, self.side):
            raise ValueError(f"the prompt is for [3, {self.side}, {self.side}] images, got {tuple(pixel_values.shape)}")
        mean, std = self.mean.to(pixel_values), self.std.to(pixel_values)
        images = pixel_values * std + mean  # back to [0, 1] pixel space
        prompted = (images + self.delta().to(pixel_values)).clamp(0.0, 1.0)
        return (prompted - mean) / std

    def transform(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixels = inputs["pixel_values"]
        # The prompt's arithmetic in float32 (a bf16 model's pixels would round the small border values away).
        return {**inputs, "pixel_values": self(pixels.float()).to(pixels.dtype)}

    def save(self, folder: str, extra: dict | None = None) -> None:
        config = {
            "kind": "padding",
            "mode": "add",
            "bound": "tanh",
            "side": self.side,
            "pixels": self.pixels,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "parameters": sum(p.numel() for p in self.parameters()),
            **(extra or {}),
        }
        save_artifact(folder, WEIGHTS, self.state_dict(), CONFIG, config)

    @classmethod
    def load(cls, folder: str) -> VisualPrompt | None:
        """The prompt saved in a local `folder`, or None when the folder has none."""
        found = load_artifact(folder, WEIGHTS, CONFIG)
        if found is None:
            return None
        config, tensors = found
        prompt = cls(config["side"], config["pixels"], config["mean"], config["std"])
        prompt.load_state_dict(tensors)
        return prompt


class VisualPromptMethod(Method):
    name = "visual-prompt"
    default_lr = 1e-2  # a few thousand pixels steer a frozen model: a large step
    options = (Option("prompt_pixels", int, 30, "border width in pixels", minimum=1),)
    artifacts = (WEIGHTS, CONFIG)

    def attach(self, model: nn.Module, processor: Any, options: dict[str, Any], parent: str) -> Attached:
        model.requires_grad_(False).eval()
        prompt = VisualPrompt.load(parent)  # a visual-prompt parent: keep training its prompt
        if prompt is None:
            side, mean, std = image_geometry(processor)
            prompt = VisualPrompt(side, options["prompt_pixels"], mean, std)
        prompt.requires_grad_(True)
        return Attached(export=prompt.save, addition=prompt)

    def apply(self, model: nn.Module, folder: str) -> VisualPrompt | None:
        prompt = VisualPrompt.load(folder)
        if prompt is None:
            return None
        param = next(model.parameters())
        return prompt.to(param.device).eval()


METHOD = VisualPromptMethod()
