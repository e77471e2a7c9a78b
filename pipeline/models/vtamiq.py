"""VTAMIQ: full-reference IQA with a Vision Transformer on sparse patches (Chubarau & Clark 2021, arXiv:2110.01655).

Structure, as in the paper and its code (github.com/ch-andrei/VTAMIQ; the release the published weights came with is
commit 055a4e3, April 2022, tests/goldens/vtamiq_tiny/README.md):

1. Reference and distorted images are cut into the same set of N 16x16 patches (positions drawn once per pair). With
   `num_scales` > 1 some are cut from 2x, 4x, ... average-pooled copies of the pair (multi-scale patches: each a
   P 2^s square of the image pooled to P x P), as many scales as the image allows, fewer patches at coarser scales.
2. A ViT-B/16 (transformers' `ViTModel`) embeds each patch with its own patch projection, adds the position embedding
   of the patch's location and, with `scale_embeddings`, the embedding of its scale (MUSIQ's); the CLS token gets
   slot 0 of each table. The encoder and the final layernorm run; the CLS output is the image's feature vector.
3. The difference-modulation network (DMN) takes d = f_ref - f_dist. With `reference_modulation` (the paper's
   "difference embedding"), a residual group first reads the reference features and its output re-weights the
   difference element-wise, d <- d * G(f_ref); then residual groups of residual channel-attention blocks (RCAN-style)
   and a final linear layer calibrate it.
4. A regressor Dropout -> Linear(H, H/4) -> PReLU -> Dropout -> Linear(H/4, 1) gives the raw score; whether higher
   means better is the config's `higher_is_better` (the published weights regress distortion: lower is better).

The DMN acts on one vector per image: VTAMIQ's code runs 1x1 convolutions on a Bx768x1x1 map, where a 1x1 convolution
is a linear layer and the channel attention's global pooling is the identity, so linear layers are used here.

Position mapping, as the original computes it: a patch at top-left (y, x) of an H x W image (the pooled image at its
scale) is at u = clamp((y + P//2) / (H - P//2), 0, 1 - 1e-6), likewise v, in float32; its cell on the ViT's G x G grid
(G = image_size / patch_size: 24 for the published 384 px) is floor(G u), floor(G v). `positions` hold row * G + col.

Which embeddings a patch gets (`embedding_order`): "patch", each patch its own position and scale; "sampling", as the
2022 release does (data/patch_sampling.py get_iqa_patches): the patches' pixels are shuffled into random slots while
positions and scales stay in sampling order, so a patch is given another patch's position and scale. The published
weights were trained and tested that way; a later release (May 2022) pairs each patch with its own.

Pixels cross the wire as uint8 (float32 0..255 averages with several scales); the model scales them to [0, 1] and
normalises with `image_mean` / `image_std` (ImageNet's for the published weights).

Parameter names (model.safetensors):

    vit.*                               transformers ViTModel (no pooler): embeddings, layers, layernorm
    scale_embeddings                    [1 + S, H] (row 0 the CLS token's), with scale_embeddings = S > 0
    dmn.modulation.blocks.{b}.*         reference-reading group whose output multiplies the difference (optional)
    dmn.modulation.tail.*
    dmn.groups.{g}.blocks.{b}.act       RCAB: PReLU -> Linear -> channel attention, plus skip
    dmn.groups.{g}.blocks.{b}.linear
    dmn.groups.{g}.blocks.{b}.attention.squeeze / .act / .excite   squeeze-excite with reduction r
    dmn.groups.{g}.tail                 group: blocks -> Linear, plus group skip
    dmn.tail                            final Linear of the DMN
    regressor.{1,2,4}                   Linear(H, H/4), PReLU, Linear(H/4, 1) (0 and 3 are dropouts)

The authors' own checkpoints import with pipeline.models.vtamiq_original.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import ViTConfig, ViTModel

MODEL_TYPE = "vtamiq"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Training draws: VTAMIQ mixes a centre-bias map (DeepGaze II's, weight 2), a difference map (weight 5) and a uniform
# map (weight 0.25). Without the saliency template or the pair here, a Gaussian centre bias (sigma = a quarter of the
# side) mixed with uniform draws is used; 0.75 is about the centre-bias share of the published centre/uniform weights.
CENTRE_BIAS = 0.75
CENTRE_SIGMA = 0.25
EMBEDDING_ORDERS = ("patch", "sampling")


@dataclass
class VTAMIQConfig:
    """Model configuration; the backbone's depth is `vit["num_hidden_layers"]`."""

    vit: dict = field(default_factory=lambda: ViTConfig().to_dict())  # ViT-B/16 at 224 (transformers defaults)
    num_patches: int = 256  # VTAMIQ trains on 256 patches per image (512 for validation, 1024 for testing)
    patch_size: int = 16
    num_groups: int = 4
    blocks_per_group: int = 4
    reduction: int = 16
    reference_modulation: bool = True
    regressor_hidden: int | None = None  # None: hidden_size // 4 (192 at 768)
    dropout: float = 0.2
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # The scale of the labels the regressor was trained on (training targets are the MOS mapped onto 0..1 from
    # it; pipeline.training.vtamiq); the scorer maps outputs back onto it.
    score_scale: tuple[float, float] = (0.0, 1.0)
    higher_is_better: bool = True  # False: the regressor was trained on a distortion (the published weights)
    num_scales: int = 1  # patch scales asked for (the original's patch_num_scales: 5 published), capped per image
    scale_samples_ratio: float = 1.5  # patches per scale grow as 2^(ratio k) from the coarsest scale to scale 0
    scale_embeddings: int = 0  # rows of the scale-embedding table besides the CLS token's (0: none; 5 published)
    embedding_order: str = "patch"  # "patch" | "sampling" (the 2022 release's pairing; see the module docstring)

    def __post_init__(self) -> None:
        if self.embedding_order not in EMBEDDING_ORDERS:
            raise ValueError(f"embedding_order {self.embedding_order!r}: one of {EMBEDDING_ORDERS}")
        if self.num_scales < 1:
            raise ValueError(f"num_scales must be at least 1, got {self.num_scales}")

    def vit_config(self) -> ViTConfig:
        return ViTConfig.from_dict(self.vit)

    @property
    def grid_size(self) -> int:
        """Side of the ViT's (square) position-embedding grid."""
        vit = self.vit_config()
        return vit.image_size // vit.patch_size

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> VTAMIQConfig:
        data = {k: v for k, v in data.items() if k != "model_type"}
        for key in ("image_mean", "image_std", "score_scale"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


class ChannelAttention(nn.Module):
    """Squeeze-excite on a feature vector: x * sigmoid(W2 prelu(W1 x))."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        self.squeeze = nn.Linear(dim, max(1, dim // reduction))
        self.act = nn.PReLU()
        self.excite = nn.Linear(max(1, dim // reduction), dim)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.excite(self.act(self.squeeze(x))))


class ResidualChannelAttentionBlock(nn.Module):
    """RCAB as VTAMIQ uses it: x + CA(Linear(PReLU(x)))."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        self.act = nn.PReLU()
        self.linear = nn.Linear(dim, dim)
        self.attention = ChannelAttention(dim, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attention(self.linear(self.act(x)))


class ResidualGroup(nn.Module):
    """Several RCABs and a tail linear layer, with a skip over the whole group."""

    def __init__(self, dim: int, num_blocks: int, reduction: int):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualChannelAttentionBlock(dim, reduction) for _ in range(num_blocks))
        self.tail = nn.Linear(dim, dim)

    def body(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.tail(x)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ModulationGroup(ResidualGroup):
    """VTAMIQ's reference-aware first stage: the group reads f_ref and its output weights the difference."""

    def forward(self, diff: Tensor, ref: Tensor) -> Tensor:  # type: ignore[override]
        return diff * self.body(ref)


class DifferenceModulation(nn.Module):
    """DMN: (optional reference modulation) -> residual groups -> linear."""

    def __init__(self, config: VTAMIQConfig, dim: int):
        super().__init__()
        groups = (config.blocks_per_group, config.reduction)
        self.modulation = ModulationGroup(dim, *groups) if config.reference_modulation else None
        self.groups = nn.ModuleList(ResidualGroup(dim, *groups) for _ in range(config.num_groups))
        self.tail = nn.Linear(dim, dim)

    def forward(self, diff: Tensor, ref: Tensor) -> Tensor:
        x = self.modulation(diff, ref) if self.modulation is not None else diff
        for group in self.groups:
            x = group(x)
        return self.tail(x)


class VTAMIQ(nn.Module):
    """ViT features of sparse patch sets -> difference modulation -> raw quality score (see `higher_is_better`)."""

    def __init__(self, config: VTAMIQConfig):
        super().__init__()
        vit_config = config.vit_config()
        if vit_config.patch_size != config.patch_size:
            raise ValueError(f"patch_size {config.patch_size} differs from the ViT's {vit_config.patch_size}")
        self.config = config
        self.vit = ViTModel(vit_config, add_pooling_layer=False)
        dim = vit_config.hidden_size
        hidden = config.regressor_hidden or dim // 4
        if config.scale_embeddings:
            self.scale_embeddings = nn.Parameter(torch.zeros(1 + config.scale_embeddings, dim))
        self.dmn = DifferenceModulation(config, dim)
        self.regressor = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(dim, hidden),
            nn.PReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(hidden, 1),
        )
        self.register_buffer("mean", torch.tensor(config.image_mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.image_std).view(1, 1, 3, 1, 1), persistent=False)

    def _layers(self) -> nn.ModuleList:
        # transformers 5 keeps the blocks on the model itself, 4.x under .encoder
        return self.vit.layers if hasattr(self.vit, "layers") else self.vit.encoder.layer

    def embed(self, patches: Tensor, grid_positions: Tensor, scales: Tensor | None = None) -> Tensor:
        """Token embeddings [B, 1 + N, H] (CLS first) of uint8 (or 0..255 float) patches [B, N, 3, P, P] at
        `grid_positions` [B, N] and, with scale embeddings, `scales` [B, N] (None: all at full resolution)."""
        emb = self.vit.embeddings
        b, n = patches.shape[:2]
        weight = emb.patch_embeddings.projection.weight
        x = (patches.to(weight.dtype) / 255.0 - self.mean.to(weight.dtype)) / self.std.to(weight.dtype)
        tokens = emb.patch_embeddings.projection(x.flatten(0, 1)).view(b, n, -1)
        table = emb.position_embeddings[0]  # [1 + G*G, H]: slot 0 is the CLS token's
        tokens = tokens + table[grid_positions.long() + 1]
        cls = emb.cls_token[0, 0] + table[0]
        if self.config.scale_embeddings:
            scale_index = torch.zeros_like(grid_positions) if scales is None else scales
            # the original clamps to its table, whose row 0 is the CLS token's
            tokens = tokens + self.scale_embeddings[scale_index.long().clamp(0, self.config.scale_embeddings - 1) + 1]
            cls = cls + self.scale_embeddings[0]
        return emb.dropout(torch.cat([cls.expand(b, 1, -1), tokens], dim=1))

    def features(self, patches: Tensor, grid_positions: Tensor, scales: Tensor | None = None) -> Tensor:
        """CLS feature [B, H] after the encoder and the final layernorm."""
        hidden = self.embed(patches, grid_positions, scales)
        for layer in self._layers():
            hidden = layer(hidden)
        return self.vit.layernorm(hidden)[:, 0]

    def forward(self, ref: Tensor, dist: Tensor, grid_positions: Tensor, scales: Tensor | None = None) -> Tensor:
        """Raw scores [B] (float32) of pairs of patch sets [B, N, 3, P, P] cut at the same `grid_positions` [B, N]
        (and `scales` [B, N]; None: all at full resolution)."""
        if ref.shape != dist.shape:
            raise ValueError(f"reference and distorted patches differ in shape: {ref.shape} vs {dist.shape}")
        # one pass through the backbone for both images of every pair
        both_scales = None if scales is None else torch.cat([scales, scales])
        both = self.features(torch.cat([ref, dist]), torch.cat([grid_positions, grid_positions]), both_scales)
        f_ref, f_dist = both.chunk(2)
        x = self.dmn(f_ref - f_dist, f_ref)
        return self.regressor(x).squeeze(-1).float()

    def save(self, folder: str | Path) -> None:
        """Write config.json (model_type "vtamiq") and model.safetensors."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> VTAMIQ:
        """A saved model, in eval mode, on `device` in `dtype`."""
        folder = Path(folder)
        config = VTAMIQConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_vit(cls, vit_folder: str | Path, num_hidden_layers: int | None = None, **overrides) -> VTAMIQ:
        """A VTAMIQ whose backbone is a pretrained ViT folder (google/vit-base-patch16-224 layout); DMN and regressor
        start random. `num_hidden_layers` keeps only the first k blocks (VTAMIQ's run config kept 6 of ViT-B's 12)."""
        extra = {} if num_hidden_layers is None else {"num_hidden_layers": num_hidden_layers}
        vit = ViTModel.from_pretrained(str(vit_folder), add_pooling_layer=False, **extra)
        preprocessor = Path(vit_folder) / "preprocessor_config.json"
        if preprocessor.is_file() and "image_mean" not in overrides:
            pre = json.loads(preprocessor.read_text())
            if "image_mean" in pre and "image_std" in pre:
                overrides = {**overrides, "image_mean": tuple(pre["image_mean"]), "image_std": tuple(pre["image_std"])}
        config = VTAMIQConfig(vit=vit.config.to_dict(), patch_size=vit.config.patch_size, **overrides)
        model = cls(config)
        model.vit.load_state_dict(vit.state_dict())
        return model


def is_vtamiq_folder(path: str | Path) -> bool:
    """Whether `path` is a folder saved by `VTAMIQ.save`."""
    folder = Path(path)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE and (folder / WEIGHTS_NAME).is_file()


def build_tiny(folder: str | Path, seed: int = 0) -> str:
    """A tiny random VTAMIQ saved to folder (hidden 32, 2 layers, 2 heads, 224/16 grid, 32 patches, 1 x 1 RCAB)."""
    vit = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=16,
    )
    config = VTAMIQConfig(vit=vit.to_dict(), num_patches=32, num_groups=1, blocks_per_group=1, reduction=4)
    torch.manual_seed(seed)
    VTAMIQ(config).save(folder)
    return str(folder)


def sample_positions(
    height: int,
    width: int,
    num_patches: int,
    patch_size: int,
    rng: np.random.Generator | None = None,
    seed: int = 0,
    centre_bias: float = CENTRE_BIAS,
) -> np.ndarray:
    """Top-left pixels (y, x) [N, 2] of N patches inside a height x width image.

    With `rng` (training): each patch is drawn independently, with probability `centre_bias` from a Gaussian around
    the image centre (sigma a quarter of the side; draws outside the image become uniform ones), otherwise uniformly.
    Without `rng` (inference): a regular grid of cells over the valid top-left range, with rows x cols chosen for the
    image's aspect ratio, N cells taken evenly from it, each patch placed at a seeded random offset in its cell -- the
    same pair and seed always give the same positions. Patches may overlap (and repeat in training draws), so an image
    holding fewer than N non-overlapping patches still yields N.
    """
    if height < patch_size or width < patch_size:
        raise ValueError(f"image {height}x{width} is smaller than one {patch_size}x{patch_size} patch")
    if num_patches < 1:
        raise ValueError(f"num_patches must be positive, got {num_patches}")
    span = np.array([height - patch_size + 1, width - patch_size + 1])  # number of valid top-left rows / columns
    if rng is not None:
        uniform = rng.random((num_patches, 2)) * span
        centred = rng.normal(span / 2.0, CENTRE_SIGMA * span, (num_patches, 2))
        inside = np.all((centred >= 0) & (centred < span), axis=1)
        use_centre = (rng.random(num_patches) < centre_bias) & inside
        points = np.where(use_centre[:, None], centred, uniform)
    else:
        rows = max(1, round(math.sqrt(num_patches * span[0] / span[1])))
        cols = math.ceil(num_patches / rows)
        cells = np.round(np.linspace(0, rows * cols - 1, num_patches)).astype(np.int64)
        cell = np.stack([cells // cols, cells % cols], axis=1)
        # integer cell edges, so that a patch never leaves its cell by rounding
        start = np.ceil(cell * span / np.array([rows, cols]))
        end = np.ceil((cell + 1) * span / np.array([rows, cols]))
        jitter = np.random.default_rng(seed).random((num_patches, 2))
        points = start + np.floor(jitter * np.maximum(end - start, 1))
    return np.minimum(np.floor(points).astype(np.int64), span - 1)


def grid_index(positions: np.ndarray, height: int, width: int, patch_size: int, grid_size: int) -> np.ndarray:
    """Index row * G + col [N] on the ViT's G x G position-embedding grid of patches at top-left `positions` [N, 2]
    of a height x width image, as the original computes it (data/patch_sampling.py, UvPosEmbedding): the patch
    centre over (side - P//2), clamped below 1, in float32, times G, floored."""
    half = patch_size // 2
    uv = (positions.astype(np.float64) + half) / np.array([height - half, width - half], np.float64)
    # the original clamps in float64, stores the result in a float32 tensor and multiplies by G there
    uv = np.clip(uv, 0.0, 1.0 - 1e-6).astype(np.float32)
    cell = np.floor(uv * np.float32(grid_size)).astype(np.int64)
    return cell[:, 0] * grid_size + cell[:, 1]


def scale_count(num_scales: int, height: int, width: int, patch_size: int) -> int:
    """How many of `num_scales` scales an image allows: as the 2022 release's compute_patch_scales, the count of
    times (side - P) / 2 can be taken from the shorter side before it falls to 1 or below, plus one; and, where
    the original would fail (a pooled copy smaller than one patch: shorter sides of 21-31 px at P = 16), fewer."""
    if num_scales <= 1:
        return 1
    side, allowed = float(min(height, width)), 1
    while (side := (side - patch_size) / 2) > 1:
        allowed += 1
    while allowed > 1 and min(height, width) >> (allowed - 1) < patch_size:
        allowed -= 1
    return min(allowed, num_scales)


def patches_per_scale(num_patches: int, num_scales: int, ratio: float) -> list[int]:
    """Patches at scales 0 (full resolution), 1, ...: the 2022 release's compute_num_samples, in which the counts
    grow as 2^(ratio k) from the coarsest scale, are rounded up and trimmed from the coarsest to add up to N."""
    counts = 2 ** (ratio * np.arange(num_scales))
    counts = np.ceil(counts * num_patches / np.sum(counts)).astype(int)
    total = np.cumsum(counts)
    for i in range(num_scales):
        if num_patches <= total[i]:
            counts[i] -= total[i] - num_patches
            counts[i + 1 :] = 0
            break
    return [int(c) for c in counts[::-1]]


def cut_patches(image: np.ndarray, positions: np.ndarray, patch_size: int, scale: int = 0) -> np.ndarray:
    """Patches [N, 3, P, P] of an HxWx3 (or HxW grey) uint8 image at top-left `positions` [N, 2] of its scale-s
    copy (2^s x 2^s average pooling, as the original's repeated AvgPool2d(2), which drops odd last rows and
    columns): uint8 at scale 0, float32 averages (exact: sums of 4^s bytes over 4^s) above."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    factor = 1 << scale
    offsets = np.arange(patch_size * factor)
    rows = positions[:, 0, None] * factor + offsets  # [N, P 2^s]
    cols = positions[:, 1, None] * factor + offsets
    patches = image[rows[:, :, None], cols[:, None, :]]  # [N, P 2^s, P 2^s, 3]
    if scale:
        n = len(positions)
        blocks = patches.reshape(n, patch_size, factor, patch_size, factor, 3).astype(np.float64)
        patches = blocks.mean(axis=(2, 4)).astype(np.float32)
    return np.ascontiguousarray(patches.transpose(0, 3, 1, 2))


def sample_scales(
    height: int,
    width: int,
    config: VTAMIQConfig,
    rng: np.random.Generator | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Top-left pixels [N_s, 2] of the patches at each scale s the image allows, in the pixels of its scale-s copy;
    drawn as `sample_positions` does (scale s of the inference grid with seed + s)."""
    scales = scale_count(config.num_scales, height, width, config.patch_size)
    counts = patches_per_scale(config.num_patches, scales, config.scale_samples_ratio)
    samples = []
    for s, count in enumerate(counts):
        h, w = height >> s, width >> s  # the pooled copy's size: each halving drops an odd last row or column
        if count:
            samples.append(sample_positions(h, w, count, config.patch_size, rng=rng, seed=seed + s))
        else:
            samples.append(np.zeros((0, 2), np.int64))
    return samples


def patch_set(
    ref: np.ndarray,
    dist: np.ndarray,
    samples: list[np.ndarray],
    config: VTAMIQConfig,
    slots: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The model inputs of a pair from its samples (top-left pixels per scale, `sample_scales`): {"ref", "dist":
    [N, 3, P, P] patches, "positions": [N] grid indices, "scales": [N] scale indices}. With embedding_order
    "sampling", the pixels of sample n go to slot `slots[n]` (a permutation) while positions and scales stay in
    sampling order, as the 2022 release does; with "patch", every slot holds one sample's pixels and embeddings."""
    if ref.shape != dist.shape:
        raise ValueError(f"reference and distorted sizes differ: {ref.shape} vs {dist.shape}")
    height, width = ref.shape[:2]
    patches: dict[str, list[np.ndarray]] = {"ref": [], "dist": []}
    positions, scales = [], []
    for s, points in enumerate(samples):
        for key, image in (("ref", ref), ("dist", dist)):
            patches[key].append(cut_patches(image, points, config.patch_size, s))
        positions.append(grid_index(points, height >> s, width >> s, config.patch_size, config.grid_size))
        scales.append(np.full(len(points), s, np.int64))
    # one dtype for every pair of a model: a batch stacks them
    dtype = np.uint8 if config.num_scales == 1 else np.float32
    out = {key: np.concatenate(parts).astype(dtype, copy=False) for key, parts in patches.items()}
    if config.embedding_order == "sampling":
        if slots is None:
            raise ValueError('embedding_order "sampling" needs the slots the samples\' pixels go to')
        for key in ("ref", "dist"):
            shuffled = np.empty_like(out[key])
            shuffled[slots] = out[key]
            out[key] = shuffled
    return {**out, "positions": np.concatenate(positions), "scales": np.concatenate(scales)}


def prepare_pair(
    ref: np.ndarray,
    dist: np.ndarray,
    config: VTAMIQConfig,
    rng: np.random.Generator | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Patches of a reference / distorted pair cut at the same positions (`patch_set`). `rng` draws training
    positions; None uses the grid seeded with `seed`, so a pair and a seed always give the same patches."""
    if ref.shape != dist.shape:
        raise ValueError(f"reference and distorted sizes differ: {ref.shape} vs {dist.shape}")
    samples = sample_scales(ref.shape[0], ref.shape[1], config, rng=rng, seed=seed)
    slots = None
    if config.embedding_order == "sampling":
        order_rng = rng if rng is not None else np.random.default_rng([seed, 1])  # not the grid's own stream
        slots = order_rng.permutation(sum(len(points) for points in samples))
    return patch_set(ref, dist, samples, config, slots)


def collate(prepared: list[dict]) -> dict[str, Tensor]:
    """Stack prepared pairs into a batch: ref / dist [B, N, 3, P, P], positions and scales [B, N] int64."""
    keys = ("ref", "dist", "positions", "scales")
    return {key: torch.from_numpy(np.stack([item[key] for item in prepared])) for key in keys}


def _rank_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """VTAMIQ's pairwise rank loss: mean over pairs i < j of relu(-sign(t_i - t_j) (p_i - p_j)) / max(|p_i|, |p_j|)
    (the repository's form; the division makes the term scale-free, eps keeps it finite at zero predictions)."""
    i, j = torch.triu_indices(len(pred), len(pred), offset=1, device=pred.device)
    order = torch.sign(target[i] - target[j])
    wrong = torch.relu(-order * (pred[i] - pred[j]))
    scale = torch.maximum(pred[i].abs(), pred[j].abs()) + eps
    return (wrong / scale).mean()


def _pearson_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """1 - r with r clamped to [0, 1], as VTAMIQ's training code does."""
    p = pred - pred.mean()
    t = target - target.mean()
    r = (p / (p.norm() + eps) * (t / (t.norm() + eps))).sum()
    return 1.0 - r.clamp(0.0, 1.0)


def vtamiq_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L1 + rank + 0.2 (1 - Pearson), VTAMIQ's training loss (weights 1, 1, 0.2). A batch of one has no pairs and no
    correlation: only the L1 term counts."""
    pred = pred.float().flatten()
    target = target.to(pred).flatten()
    loss = (pred - target).abs().mean()
    if len(pred) < 2:
        return loss
    return loss + _rank_loss(pred, target) + 0.2 * _pearson_loss(pred, target)
