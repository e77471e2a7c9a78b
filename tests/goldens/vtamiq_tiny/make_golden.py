"""Remake tests/goldens/vtamiq_tiny/ by running VTAMIQ's own code (github.com/ch-andrei/VTAMIQ at commit 055a4e3,
the release the published KADIS-700k weights came with), unmodified, on two tiny configurations.

    python make_golden.py --src /path/to/VTAMIQ-055a4e3 --out tests/goldens/vtamiq_tiny

Run it outside qcurate's tree (a scratch venv with torch, numpy, scipy, scikit-image, pillow, safetensors); see
README.md. The original's own modules do all the work: data.utils.transform (normalisation), data.patch_sampling
(CAPS sampling, multi-scale patches, positions, scales), modules.vtamiq.vtamiq.VTAMIQ (ViT, difference modulation,
regressor). This script only makes the seeded weights and images, records what the original sampled, and writes what
each stage of the original gives.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def install_stand_ins() -> None:
    """What cannot exist here, replaced by what gives the same numbers (README.md says why).

    torchvision does not load in this environment; data.utils imports torchvision.transforms.functional and uses
    to_tensor (uint8 HxWxC -> float32 CxHxW / 255) and normalize ((x - mean) / std, per channel, in float32) on this
    path. numpy 2 removed the alias np.int (= the builtin int) that data.patch_sampling uses as an array dtype."""
    functional = types.ModuleType("torchvision.transforms.functional")

    def to_tensor(img: Image.Image) -> torch.Tensor:
        array = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    def normalize(tensor: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
        mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
        std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
        return tensor.sub(mean_t).div(std_t)

    def unused(*args, **kwargs):
        raise NotImplementedError("not on the path the golden runs")

    functional.to_tensor = to_tensor
    functional.normalize = normalize
    functional.crop = functional.hflip = functional.rgb_to_grayscale = unused
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.update(
        {
            "torchvision": torchvision,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )
    if not hasattr(np, "int"):
        np.int = int


# Two tiny configurations of the 2022 release. ViT: the original's config dict (get_b16_config's keys) at hidden 64
# with 2 heads; the grid is the original's fixed 384 / 16 = 24. "single": one scale, the
# reference-aware difference embedding on (the class default). "multi": the published choices (scale embeddings,
# 5 scales asked for, difference embedding off), with fewer layers and groups.
VIT = OrderedDict(
    vit_weights_path="unused",
    patch_size=16,
    hidden_size=64,
    mlp_dim=128,
    num_heads=2,
    num_layers=4,
    attention_dropout_rate=0.0,
    dropout_rate=0.1,
    batch_norm=True,
    num_scales=5,
)
CONFIGS = {
    "single": dict(
        model=dict(
            vit_num_keep_layers=2,
            vit_use_scale_embedding=False,
            num_residual_groups=2,
            num_rcabs_per_group=2,
            dropout=0.2,
            use_diff_embedding=True,
        ),
        patch_count=12,
        patch_num_scales=1,
        higher_is_better=True,
        seed=11,
    ),
    "multi": dict(
        model=dict(
            vit_num_keep_layers=2,
            vit_use_scale_embedding=True,
            num_residual_groups=1,
            num_rcabs_per_group=2,
            dropout=0.2,
            use_diff_embedding=False,
        ),
        patch_count=24,
        patch_num_scales=5,
        higher_is_better=False,  # as the published weights: the output is a distortion
        seed=12,
    ),
}
# (name, height, width): landscape, odd portrait (the pooled sizes round down), and one large enough for 4 scales
PAIRS = [("a", 96, 128), ("b", 131, 97), ("c", 150, 200)]
# CAPS as published but without the centre-bias term, whose DeepGaze II template (centerbias.npy) is not in the
# stored repository: the difference-based and uniform terms keep the sampler's full code path (stratified cells,
# Halton offsets, per-scale downsampled difference maps).
SAMPLER = dict(centerbias_weight=0.0, diffbased_weight=2.0, uniform_weight=0.5)


def make_images(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth reference (gradients, a disc, a stripe pattern) and a distorted copy (noise, a dark block, a colour
    shift), uint8 HxWx3; smooth so that the PNGs stay small."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, min(height, width) / 4
    disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2).astype(np.float64)
    ref = np.stack(
        [
            255 * x / width * 0.8 + 40 * disc,
            255 * y / height * 0.6 + 60 * np.sin(x / 7.0) ** 2,
            120 + 80 * np.cos((x + y) / 11.0) - 50 * disc,
        ],
        axis=2,
    )
    dist = ref + rng.normal(0, 9, ref.shape)
    dist[height // 3 : height // 2, width // 4 : width // 2] *= 0.5
    dist[..., 2] += 25
    return np.clip(ref, 0, 255).round().astype(np.uint8), np.clip(dist, 0, 255).round().astype(np.uint8)


def seeded_model(vtamiq_cls, config: dict, seed: int) -> torch.nn.Module:
    """The original VTAMIQ with every parameter moved off its initial value by seeded noise (zero-initialised
    embeddings and biases included), so that each weight matters to the golden."""
    torch.manual_seed(seed)
    model = vtamiq_cls(copy.deepcopy(VIT), vit_load_pretrained=False, is_full_reference=True, **config["model"])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            scale = 0.3 if "embeddings" in name or "cls_token" in name else 0.05
            param.add_(scale * torch.randn(param.shape, generator=generator))
    return model.eval()


def embedding_indices(module: torch.nn.Module, values: torch.Tensor) -> torch.Tensor:
    """Which row of its table the original's position / scale embedding module picks for each value: a copy whose
    table holds each row's own index is run on them."""
    probe = copy.deepcopy(module)
    table = next(probe.parameters())
    with torch.no_grad():
        table.zero_()
        table[0, :, 0] = torch.arange(table.shape[1], dtype=table.dtype)
    return probe(values)[0, :, 0].round().long()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="checkout of ch-andrei/VTAMIQ at 055a4e3")
    parser.add_argument("--out", required=True, help="golden folder to write")
    args = parser.parse_args()
    install_stand_ins()
    sys.path.insert(0, str(Path(args.src).resolve()))
    from data.patch_sampling import PatchSampler, get_iqa_patches
    from data.utils import transform as transform_pil
    from modules.vtamiq.vtamiq import VTAMIQ

    out = Path(args.out)
    (out / "pairs").mkdir(parents=True, exist_ok=True)
    for k, (name, height, width) in enumerate(PAIRS):
        ref, dist = make_images(height, width, seed=100 + k)
        Image.fromarray(ref).save(out / "pairs" / f"{name}_ref.png")
        Image.fromarray(dist).save(out / "pairs" / f"{name}_dist.png")

    class RecordingSampler(PatchSampler):
        """The original sampler; what it returns for each scale is kept."""

        def get_sample_params(self, *a, **kw):
            samples = super().get_sample_params(*a, **kw)
            self.record.append([[int(i), int(j)] for i, j in samples])
            return samples

    tensors, record = {}, {"source": "ch-andrei/VTAMIQ@055a4e3", "vit": VIT, "sampler": SAMPLER, "configs": {}}
    for cname, config in CONFIGS.items():
        model = seeded_model(VTAMIQ, config, config["seed"])
        # The original's checkpoint layout (run_main.store_checkpoint): epoch, test_accuracy (a numpy float64, as
        # scipy's spearmanr gives it) and the model's state dict.
        torch.save(
            {
                "epoch": 3,
                "test_accuracy": np.float64(0.5),
                "model_state_dict": OrderedDict((k, v) for k, v in model.state_dict().items()),
            },
            out / f"{cname}.pth",
        )
        # The run configuration in the original's own names (run_config.py's vit / vtamiq / dataset configs and the
        # test patch count), which qcurate's import takes (jobs/import_model.py --original-config).
        run_configuration = {
            "vit_config": {
                k: VIT[k] for k in ("patch_size", "hidden_size", "mlp_dim", "num_heads", "num_layers", "num_scales")
            },
            "vtamiq_config": config["model"],
            "dataset_config": {
                "patch_num_scales": config["patch_num_scales"],
                "normalize": True,
                "normalize_imagenet": True,
            },
            "patch_count": config["patch_count"],
            "higher_is_better": config["higher_is_better"],
            "score_scale": [0.0, 1.0],
        }
        (out / f"{cname}.json").write_text(json.dumps(run_configuration, indent=1) + "\n")
        entry = {k: v for k, v in config.items()}
        entry["pairs"] = {}
        embeddings = model.transformer.embeddings
        for k, (name, _, _) in enumerate(PAIRS):
            img_ref = Image.open(out / "pairs" / f"{name}_ref.png").convert("RGB")
            img_dist = Image.open(out / "pairs" / f"{name}_dist.png").convert("RGB")
            norm = (IMAGENET_MEAN, IMAGENET_STD)  # PatchDataset.get_norm_mean_std with normalize_imagenet
            t_ref, t_dist = transform_pil(img_ref, None, False, norm), transform_pil(img_dist, None, False, norm)
            sampler = RecordingSampler(**SAMPLER)
            sampler.record = []
            seed = config["seed"] * 10 + k
            np.random.seed(seed)
            p_ref, p_dist, pos, scales = get_iqa_patches(
                (img_ref, img_dist),
                (t_ref, t_dist),
                config["patch_count"],
                (16, 16),
                sampler,
                config["patch_num_scales"],
            )
            # get_iqa_patches' first draw is np.random.shuffle(np.arange(patch_count)): the slot each sample's pixels
            # go to (its positions and scales stay in sampling order).
            np.random.seed(seed)
            slots = np.arange(config["patch_count"])
            np.random.shuffle(slots)
            with torch.no_grad():
                b_ref, b_dist, b_pos, b_scales = p_ref[None], p_dist[None], pos[None], scales[None]
                f_ref = model.transformer(b_ref, b_pos, b_scales)
                f_dist = model.transformer(b_dist, b_pos, b_scales)
                feats = (f_ref - f_dist).view(1, -1, 1, 1)
                if model.use_diff_embedding:
                    feats = model.diff_embedding(feats, f_ref.view(1, -1, 1, 1))
                modulated = feats.view(1, -1)
                dmn = model.diff_net(feats).view(1, -1)
                staged = model.q_predictor(dmn).flatten()
                score = model((b_ref, b_dist), b_pos, b_scales)
            assert torch.equal(staged, score), "the stages do not add up to the original's forward"
            key = f"{cname}/{name}"
            pos_index = embedding_indices(embeddings.positional_embeddings, pos)
            tensors.update(
                {
                    f"{key}/patches_ref": p_ref,
                    f"{key}/patches_dist": p_dist,
                    f"{key}/positions": pos,
                    f"{key}/scales": scales,
                    f"{key}/position_index": pos_index,
                    f"{key}/vit_ref": f_ref[0],
                    f"{key}/vit_dist": f_dist[0],
                    f"{key}/modulated": modulated[0],
                    f"{key}/dmn": dmn[0],
                    f"{key}/score": score,
                }
            )
            if config["model"]["vit_use_scale_embedding"]:
                tensors[f"{key}/scale_index"] = embedding_indices(embeddings.scale_embeddings, scales)
            entry["pairs"][name] = {
                "numpy_seed": seed,
                "samples": sampler.record,  # top-left (row, col) per scale, in that scale's pixels
                "slots": slots.tolist(),
                "score": float(score[0]),
            }
            print(f"{key}: scales {[len(s) for s in sampler.record]} score {float(score[0]):.6f}")
        record["configs"][cname] = entry
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "expected.safetensors"))
    (out / "expected.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
