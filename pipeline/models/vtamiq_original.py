"""The authors' VTAMIQ checkpoints (github.com/ch-andrei/VTAMIQ) as qcurate VTAMIQ folders (pipeline.models.vtamiq).

The published weights (README "Pretrained on KADIS-700k", April 2022) are a pickled `.pth` written by the 2022
release's run_main.store_checkpoint: {"epoch", "test_accuracy", "model_state_dict"}. It is read with
`torch.load(weights_only=True)` (pipeline.registry.checkpoint.load_training_checkpoint: tensors, plain containers and
numpy scalars only; nothing in it runs) and imported with `jobs/import_model.py --source weights.pth` (pipeline.
registry.import_checkpoint). A `.pth` carries no configuration: what the weights were run with is the original's run
configuration, given in its own names (ORIGINAL_PUBLISHED is run_config.py's, commit 055a4e3).

Configuration, the original's name -> VTAMIQConfig:

    vit_config.patch_size / hidden_size / mlp_dim / num_heads  -> vit patch_size / hidden_size / intermediate_size /
                                                                  num_attention_heads
    vtamiq_config.vit_num_keep_layers (<= 0: vit num_layers)    -> vit num_hidden_layers
    (fixed in the original) Embeddings img_dim 384              -> vit image_size (grid 384 / patch_size = 24)
    (fixed in the original) LayerNorm eps 1e-6, exact GELU      -> vit layer_norm_eps, hidden_act "gelu"
    vtamiq_config.vit_use_scale_embedding, vit num_scales       -> scale_embeddings (num_scales rows, else 0)
    vtamiq_config.num_residual_groups / num_rcabs_per_group     -> num_groups / blocks_per_group (reduction 16, fixed)
    vtamiq_config.use_diff_embedding                            -> reference_modulation
    vtamiq_config.dropout                                       -> dropout
    dataset_config.patch_num_scales                             -> num_scales
    dataset_config.normalize_imagenet                           -> image_mean / image_std = ImageNet's
    patch_count (the test split's)                              -> num_patches
    get_iqa_patches' scale_num_samples_ratio 1.5                -> scale_samples_ratio
    get_iqa_patches' slot shuffle                               -> embedding_order "sampling"
    higher_is_better, score_scale (what the targets were)       -> the same (published: a distortion on 0..1)

Weights, the original's name -> qcurate's (1x1 convolutions [o, i, 1, 1] become linear weights [o, i]):

    transformer.embeddings.cls_token                            -> vit.embeddings.cls_token
    transformer.embeddings.patch_embeddings.*                   -> vit.embeddings.patch_embeddings.projection.*
    transformer.embeddings.positional_embeddings.positional_embeddings -> vit.embeddings.position_embeddings
    transformer.embeddings.scale_embeddings.scale_embeddings    -> scale_embeddings ([1, 1 + S, H] -> [1 + S, H])
    transformer.encoder.layer.{i}.attention_norm / ffn_norm     -> ViT layer {i} layernorm_before / layernorm_after
    transformer.encoder.layer.{i}.attn.query / key / value / out -> ViT layer {i} attention q / k / v / output
    transformer.encoder.layer.{i}.ffn.fc1 / fc2                 -> ViT layer {i} MLP fc1 / fc2
    transformer.encoder.encoder_norm                            -> vit.layernorm
    diff_embedding.body.{b}.body.1 / .2 / .4.conv_du.{0,1,2}    -> dmn.modulation.blocks.{b}.act / linear /
                                                                   attention.squeeze / act / excite
    diff_embedding.body.{B}                                     -> dmn.modulation.tail
    diff_net.{g}.body...  (as diff_embedding)                   -> dmn.groups.{g}...
    diff_net.{G}                                                -> dmn.tail
    q_predictor.{1,2,4}                                         -> regressor.{1,2,4}
"""

from __future__ import annotations

import re

from torch import Tensor

from pipeline.models.vtamiq import VTAMIQ, VTAMIQConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ORIGINAL_IMAGE_SIZE = 384  # UvPosEmbedding's img_dim: fixed in the 2022 release
ORIGINAL_REDUCTION = 16  # the channel attention's reduction: fixed in the 2022 release
ORIGINAL_SCALE_RATIO = 1.5  # get_iqa_patches' scale_num_samples_ratio default in the 2022 release

# The run configuration the published weights came with (commit 055a4e3 run_config.py and modules/Attention/ViT/
# transformer.py get_b16_config), in the original's names. The KADIS-700k targets were VTAMIQ's own predictions of
# a distortion (trained on KADID-10k with qs_reverse: 1 - MOS on 0..1), so lower is better.
ORIGINAL_PUBLISHED = {
    "vit_config": {
        "patch_size": 16,
        "hidden_size": 768,
        "mlp_dim": 3072,
        "num_heads": 12,
        "num_layers": 12,
        "num_scales": 5,
    },
    "vtamiq_config": {
        "num_residual_groups": 4,
        "num_rcabs_per_group": 4,
        "dropout": 0.2,
        "use_diff_embedding": False,
        "vit_num_keep_layers": 6,
        "vit_use_scale_embedding": True,
    },
    "dataset_config": {"patch_num_scales": 5, "normalize": True, "normalize_imagenet": True},
    "patch_count": 1024,
    "higher_is_better": False,
    "score_scale": [0.0, 1.0],
}


def config_from_original(original: dict) -> VTAMIQConfig:
    """The VTAMIQConfig of an original run configuration (ORIGINAL_PUBLISHED's keys; see the module docstring)."""
    vit, model, data = original["vit_config"], original["vtamiq_config"], original["dataset_config"]
    if not (data.get("normalize", True) and data.get("normalize_imagenet", True)):
        raise ValueError("only the ImageNet normalisation (normalize and normalize_imagenet) is supported")
    keep = model.get("vit_num_keep_layers", -1)
    layers = vit["num_layers"] if keep <= 0 else max(1, min(keep, vit["num_layers"]))
    vit_config = {
        "hidden_size": vit["hidden_size"],
        "intermediate_size": vit["mlp_dim"],
        "num_attention_heads": vit["num_heads"],
        "num_hidden_layers": layers,
        "patch_size": vit["patch_size"],
        "image_size": ORIGINAL_IMAGE_SIZE,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "qkv_bias": True,
    }
    from transformers import ViTConfig

    return VTAMIQConfig(
        vit=ViTConfig(**vit_config).to_dict(),
        num_patches=original["patch_count"],
        patch_size=vit["patch_size"],
        num_groups=model["num_residual_groups"],
        blocks_per_group=model["num_rcabs_per_group"],
        reduction=ORIGINAL_REDUCTION,
        reference_modulation=model["use_diff_embedding"],
        dropout=model["dropout"],
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        score_scale=tuple(original.get("score_scale", (0.0, 1.0))),
        higher_is_better=original["higher_is_better"],
        num_scales=data["patch_num_scales"],
        scale_samples_ratio=ORIGINAL_SCALE_RATIO,
        scale_embeddings=vit["num_scales"] if model["vit_use_scale_embedding"] else 0,
        embedding_order="sampling",
    )


def _layer_names(model: VTAMIQ) -> tuple[str, dict[str, str]]:
    """The prefix of ViT layer i (format with i) and the original's layer parameter names -> qcurate's, for the
    installed transformers (5.x: vit.layers.{i}.attention.q_proj ...; 4.x: vit.encoder.layer.{i}.attention...)."""
    if hasattr(model.vit, "layers"):
        return "vit.layers.{}.", {
            "attention_norm": "layernorm_before",
            "ffn_norm": "layernorm_after",
            "attn.query": "attention.q_proj",
            "attn.key": "attention.k_proj",
            "attn.value": "attention.v_proj",
            "attn.out": "attention.o_proj",
            "ffn.fc1": "mlp.fc1",
            "ffn.fc2": "mlp.fc2",
        }
    return "vit.encoder.layer.{}.", {
        "attention_norm": "layernorm_before",
        "ffn_norm": "layernorm_after",
        "attn.query": "attention.attention.query",
        "attn.key": "attention.attention.key",
        "attn.value": "attention.attention.value",
        "attn.out": "attention.output.dense",
        "ffn.fc1": "intermediate.dense",
        "ffn.fc2": "output.dense",
    }


_RCAB = {"body.1": "act", "body.2": "linear", "body.4.conv_du.0": "attention.squeeze",
         "body.4.conv_du.1": "attention.act", "body.4.conv_du.2": "attention.excite"}  # fmt: skip


def _group_name(rest: str, prefix: str, num_blocks: int) -> str:
    """A residual group's parameter (`body.{b}.<RCAB part>.<param>` or `body.{B}.<param>`) under `prefix`."""
    block, part = re.fullmatch(r"body\.(\d+)\.(.+)", rest).groups()
    if int(block) == num_blocks:
        return f"{prefix}tail.{part}"
    inner, param = part.rsplit(".", 1)
    return f"{prefix}blocks.{block}.{_RCAB[inner]}.{param}"


def qcurate_name(name: str, model: VTAMIQ) -> str:
    """qcurate's name of the original's parameter `name` (the module docstring's table)."""
    config = model.config
    fixed = {
        "transformer.embeddings.cls_token": "vit.embeddings.cls_token",
        "transformer.embeddings.patch_embeddings.weight": "vit.embeddings.patch_embeddings.projection.weight",
        "transformer.embeddings.patch_embeddings.bias": "vit.embeddings.patch_embeddings.projection.bias",
        "transformer.embeddings.positional_embeddings.positional_embeddings": "vit.embeddings.position_embeddings",
        "transformer.embeddings.scale_embeddings.scale_embeddings": "scale_embeddings",
        "transformer.encoder.encoder_norm.weight": "vit.layernorm.weight",
        "transformer.encoder.encoder_norm.bias": "vit.layernorm.bias",
    }
    if name in fixed:
        return fixed[name]
    if m := re.fullmatch(r"transformer\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name):
        prefix, names = _layer_names(model)
        return prefix.format(m[1]) + f"{names[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"diff_embedding\.(.+)", name):
        return _group_name(m[1], "dmn.modulation.", config.blocks_per_group)
    if m := re.fullmatch(r"diff_net\.(\d+)\.(.+)", name):
        if int(m[1]) == config.num_groups:
            return f"dmn.tail.{m[2]}"
        return _group_name(m[2], f"dmn.groups.{m[1]}.", config.blocks_per_group)
    if m := re.fullmatch(r"q_predictor\.([124])\.(weight|bias)", name):
        return f"regressor.{m[1]}.{m[2]}"
    raise ValueError(f"{name}: not a parameter of the 2022 release's VTAMIQ")


def state_from_original(state: dict[str, Tensor], model: VTAMIQ) -> dict[str, Tensor]:
    """The original's state dict in qcurate's names and shapes, checked against `model`: every parameter present,
    none left over, each of the model's shape (a wrong run configuration fails here, naming the parameter)."""
    target = model.state_dict()
    out = {}
    for name, value in state.items():
        ours = qcurate_name(name, model)
        if ours not in target:
            raise ValueError(f"{name} -> {ours}: the configuration has no such parameter")
        if ours == "scale_embeddings" or value.dim() == 4 and value.shape[2:] == (1, 1) and "patch" not in name:
            value = value.reshape(target[ours].shape)  # [1, 1 + S, H] table, 1x1 convolutions -> linear
        if value.shape != target[ours].shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)}, the configuration needs {tuple(target[ours].shape)}")
        out[ours] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"the checkpoint lacks {missing[:4]}{' ...' if len(missing) > 4 else ''} (a configuration "
                         "with more layers, groups or scale embeddings than the weights?)")  # fmt: skip
    return out


def from_original(state: dict[str, Tensor], original: dict | None = None) -> VTAMIQ:
    """A VTAMIQ holding the original's `model_state_dict` (read safely: pipeline.registry.checkpoint
    .load_training_checkpoint), configured by `original`, the run configuration in the original's names (default
    ORIGINAL_PUBLISHED)."""
    model = VTAMIQ(config_from_original(original or ORIGINAL_PUBLISHED))
    model.load_state_dict(state_from_original(state, model))
    return model.eval()
