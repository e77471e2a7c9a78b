"""mPLUG-Owl2 (the model behind Q-Align, OneAlign and DeQA-Score), native on current transformers and torch.

The published code (github.com/Q-Future/Q-Align, `q_align/model/*`) runs only on transformers 4.36-4.37.
This is an independent implementation of the same architecture with the same state-dict key names, so the
released checkpoints (`q-future/one-align`, ...) load as they are, from safetensors, without
`trust_remote_code`:

- a CLIP-like ViT (`model.vision_model`): fused per-head-interleaved `query_key_value`, quick-GELU, pre-norm;
- a visual abstractor (`model.visual_abstractor`): learnable queries cross-attend to
  `[queries; image tokens]` with fixed sin-cos positions, then a projection to the LLM width and one learned
  end token (`vit_eos`);
- a LLaMA-2 decoder (`model.layers`, `model.norm`, `lm_head`) whose `k_proj`, `v_proj`, `input_layernorm` and
  `post_attention_layernorm` have separate text (`multiway.0`) and visual (`multiway.1`) weights, picked per
  token by a modality indicator (modality-adaptive module).

Differences from the reference, on purpose: rows whose merged lengths differ are right-padded and the padding
is masked (the reference pads video batches with unmasked zeros); text padding is dropped before merging, so
left- and right-padded inputs both give each row its solo result; there is no KV cache / `generate` (scoring
needs one forward pass).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    repeat_kv,
)

from pipeline.models import last_real

logger = logging.getLogger("qcurate.owl2")

IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<|image|>"
IGNORE_INDEX = -100
# OpenAI CLIP's normalisation, which every published mPLUG-Owl2 processor uses.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIP mean x 255, truncated as the reference does: tuple(int(x * 255) for x in image_processor.image_mean)
CLIP_MEAN_FILL = (122, 116, 104)

# Defaults of the reference's MplugOwlVisionConfig / MplugOwlVisualAbstractorConfig (the one-align sizes).
VISION_DEFAULTS: dict[str, Any] = dict(
    hidden_size=1024,
    intermediate_size=4096,
    projection_dim=768,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_channels=3,
    image_size=448,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-6,
    attention_dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    use_flash_attn=False,
)
ABSTRACTOR_DEFAULTS: dict[str, Any] = dict(
    num_learnable_queries=64,
    hidden_size=1024,
    num_hidden_layers=6,
    num_attention_heads=16,
    intermediate_size=2816,
    attention_probs_dropout_prob=0.0,
    initializer_range=0.02,
    layer_norm_eps=1e-6,
    encoder_hidden_size=1024,
    grid_size=32,
)


class MPLUGOwl2Config(LlamaConfig):
    """LLaMA fields plus `visual_config = {"visual_model": {...}, "visual_abstractor": {...}}`, the layout
    of the checkpoints' config.json.

    It subclasses `LlamaConfig` (a `PretrainedConfig`) as the reference does, so that the legacy
    `rope_theta`/`rope_scaling` fields are understood by whichever transformers version is installed.
    """

    model_type = "mplug_owl2"
    # LLaMA's tensor/pipeline-parallel plans take `k_proj`/`v_proj` for Linear layers; here they are multiway.
    base_model_tp_plan = None
    base_model_pp_plan = None

    def __init__(self, visual_config: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        visual_config = dict(visual_config or {})
        # Fill the reference defaults so that a config naming only a few fields still builds; an explicit
        # `grid_size: null` means 32, as in the reference.
        abstractor = {**ABSTRACTOR_DEFAULTS, **(visual_config.get("visual_abstractor") or {})}
        abstractor["grid_size"] = abstractor["grid_size"] or ABSTRACTOR_DEFAULTS["grid_size"]
        visual_config["visual_model"] = {**VISION_DEFAULTS, **(visual_config.get("visual_model") or {})}
        visual_config["visual_abstractor"] = abstractor
        self.visual_config = visual_config
        super().__init__(**kwargs)

    @property
    def vision_settings(self) -> SimpleNamespace:
        return SimpleNamespace(**self.visual_config["visual_model"])

    @property
    def abstractor_settings(self) -> SimpleNamespace:
        return SimpleNamespace(**self.visual_config["visual_abstractor"])


def tiny_config(vocab_size: int = 512, **overrides: Any) -> MPLUGOwl2Config:
    """A tiny config of this architecture (the golden `owl2_tiny` shapes) for tests and the demo."""
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        image_aspect_ratio="pad",
        architectures=["MPLUGOwl2LlamaForCausalLM"],
        visual_config={
            "visual_model": dict(
                hidden_size=32,
                intermediate_size=64,
                projection_dim=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=56,
                patch_size=14,
                layer_norm_eps=1e-6,
            ),
            "visual_abstractor": dict(
                num_learnable_queries=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=88,
                encoder_hidden_size=32,
                grid_size=4,
                layer_norm_eps=1e-6,
            ),
        },
    )
    fields.update(overrides)
    return MPLUGOwl2Config(**fields)


# ------------------------------------------------------------------------------------------------------------
# Attention shared by the three towers
# ------------------------------------------------------------------------------------------------------------


def _use_eager(config: MPLUGOwl2Config) -> bool:
    return getattr(config, "_attn_implementation", None) == "eager"


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    eager: bool,
    is_causal: bool = False,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over [batch, heads, seq, head_dim]; `mask` is boolean (True = attend).

    Eager is the reference's math (softmax in float32); SDPA is the default and agrees with it to rounding.
    """
    if not eager:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, scale=scale)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if is_causal:
        q_len, k_len = scores.shape[-2:]
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    return torch.matmul(probs, value)


# ------------------------------------------------------------------------------------------------------------
# Vision tower (model.vision_model)
# ------------------------------------------------------------------------------------------------------------


class MplugOwlVisionEmbeddings(nn.Module):
    def __init__(self, vision: SimpleNamespace) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, vision.hidden_size))
        self.patch_embed = nn.Conv2d(
            vision.num_channels, vision.hidden_size, vision.patch_size, vision.patch_size, bias=False
        )
        num_positions = (vision.image_size // vision.patch_size) ** 2 + 1
        self.position_embedding = nn.Parameter(torch.zeros(1, num_positions, vision.hidden_size))
        self.pre_layernorm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(patches.shape[0], 1, -1).to(patches.dtype)
        embeddings = torch.cat([cls, patches], dim=1)
        embeddings = embeddings + self.position_embedding[:, : embeddings.shape[1]].to(patches.dtype)
        return self.pre_layernorm(embeddings)


class MplugOwlVisionAttention(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        vision = config.vision_settings
        self.config = config
        self.num_heads = vision.num_attention_heads
        self.head_dim = vision.hidden_size // self.num_heads
        self.query_key_value = nn.Linear(vision.hidden_size, 3 * vision.hidden_size)
        self.dense = nn.Linear(vision.hidden_size, vision.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bsz, seq_len, width = hidden_states.shape
        # The fused projection is laid out per head as [q_h; k_h; v_h] (interleaved), not as [q; k; v] blocks.
        qkv = self.query_key_value(hidden_states).reshape(bsz, seq_len, self.num_heads, 3, self.head_dim)
        query, key, value = qkv.permute(3, 0, 2, 1, 4).unbind(0)
        context = attention(query, key, value, None, self.head_dim**-0.5, _use_eager(self.config))
        return self.dense(context.transpose(1, 2).reshape(bsz, seq_len, width))


class MplugOwlMLP(nn.Module):
    def __init__(self, vision: SimpleNamespace) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision.hidden_size, vision.intermediate_size)
        self.fc2 = nn.Linear(vision.intermediate_size, vision.hidden_size)
        self.act = ACT2FN[vision.hidden_act]  # quick_gelu: x * sigmoid(1.702 x)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class MplugOwlVisionEncoderLayer(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        vision = config.vision_settings
        self.self_attn = MplugOwlVisionAttention(config)
        self.input_layernorm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.mlp = MplugOwlMLP(vision)
        self.post_attention_layernorm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states))
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class MplugOwlVisionEncoder(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        num_layers = config.vision_settings.num_hidden_layers
        self.layers = nn.ModuleList(MplugOwlVisionEncoderLayer(config) for _ in range(num_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class MplugOwlVisionModel(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        vision = config.vision_settings
        self.embeddings = MplugOwlVisionEmbeddings(vision)
        self.encoder = MplugOwlVisionEncoder(config)
        self.post_layernorm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, S, S] -> last hidden state [n, 1 + (S/patch)^2, width], post-layernorm on every token."""
        return self.post_layernorm(self.encoder(self.embeddings(pixel_values)))


# ------------------------------------------------------------------------------------------------------------
# Visual abstractor (model.visual_abstractor)
# ------------------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE-style 1-D sin-cos embedding: [sin(p * w_i) | cos(p * w_i)], w_i = 10000^(-i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1, 1).double() * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_with_cls(dim: int, grid_size: int) -> torch.Tensor:
    """MAE-style 2-D sin-cos embedding of a grid (row-major): first half from the column index, second half
    from the row index, with a zero row in front for the CLS token."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)


class MplugOwlVisualAbstractorMLP(nn.Module):
    def __init__(self, abstractor: SimpleNamespace) -> None:
        super().__init__()
        width, inner = abstractor.hidden_size, abstractor.intermediate_size
        self.w1 = nn.Linear(width, inner)
        self.w2 = nn.Linear(inner, width)
        self.w3 = nn.Linear(width, inner)
        self.ffn_ln = nn.LayerNorm(inner, eps=abstractor.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # SwiGLU with a LayerNorm on the gated activations before the down projection.
        return self.w2(self.ffn_ln(F.silu(self.w1(hidden_states)) * self.w3(hidden_states)))


class MplugOwlVisualAbstractorMultiHeadAttention(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        abstractor = config.abstractor_settings
        self.config = config
        self.num_heads = abstractor.num_attention_heads
        self.head_dim = abstractor.hidden_size // self.num_heads
        self.query = nn.Linear(abstractor.hidden_size, abstractor.hidden_size)
        self.key = nn.Linear(abstractor.encoder_hidden_size, abstractor.hidden_size)
        self.value = nn.Linear(abstractor.encoder_hidden_size, abstractor.hidden_size)
        # Fixed positions; they are in the released checkpoints, so they are (persistent) buffers.
        self.register_buffer("q_pos_embed", self.query_positions(abstractor))
        self.register_buffer("k_pos_embed", self.key_positions(abstractor))

    @staticmethod
    def query_positions(abstractor: SimpleNamespace) -> torch.Tensor:
        return sincos_1d(abstractor.hidden_size, torch.arange(abstractor.num_learnable_queries)).float()

    @staticmethod
    def key_positions(abstractor: SimpleNamespace) -> torch.Tensor:
        return sincos_2d_with_cls(abstractor.hidden_size, abstractor.grid_size).float()

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        """queries: normed queries [n, q, d]; keys_values: [queries; normed image tokens] [n, q + k, d]."""
        dtype = queries.dtype
        # Keys get the query positions then the image-grid positions; values get none; queries get theirs.
        key_positions = torch.cat([self.q_pos_embed, self.k_pos_embed], dim=0).to(dtype)
        key = self._heads(self.key(keys_values + key_positions))
        value = self._heads(self.value(keys_values))
        query = self._heads(self.query(queries + self.q_pos_embed.to(dtype)))
        context = attention(query, key, value, None, self.head_dim**-0.5, _use_eager(self.config))
        return context.transpose(1, 2).reshape(queries.shape)


class MplugOwlVisualAbstractorCrossOutput(nn.Module):
    def __init__(self, abstractor: SimpleNamespace) -> None:
        super().__init__()
        self.out_proj = nn.Linear(abstractor.hidden_size, abstractor.hidden_size)
        self.norm2 = nn.LayerNorm(abstractor.hidden_size)  # torch default eps 1e-5, as the reference
        self.mlp = MplugOwlVisualAbstractorMLP(abstractor)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        hidden_states = residual + self.out_proj(context)
        return hidden_states + self.mlp(self.norm2(hidden_states))


class MplugOwlVisualAbstractorAttention(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        abstractor = config.abstractor_settings
        self.attention = MplugOwlVisualAbstractorMultiHeadAttention(config)
        self.output = MplugOwlVisualAbstractorCrossOutput(abstractor)
        self.norm1 = nn.LayerNorm(abstractor.hidden_size)  # eps 1e-5 (torch default), not the config's 1e-6
        self.normk = nn.LayerNorm(abstractor.hidden_size)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        queries = self.norm1(queries)
        keys_values = torch.cat([queries, self.normk(image_tokens)], dim=1)
        # The residual branch starts from the *normed* queries.
        return self.output(self.attention(queries, keys_values), queries)


class MplugOwlVisualAbstractorLayer(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.crossattention = MplugOwlVisualAbstractorAttention(config)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.crossattention(queries, image_tokens)


class MplugOwlVisualAbstractorEncoder(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        num_layers = config.abstractor_settings.num_hidden_layers
        self.layers = nn.ModuleList(MplugOwlVisualAbstractorLayer(config) for _ in range(num_layers))

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer(queries, image_tokens)  # every layer attends to the same vision output
        return queries


class MplugOwlVisualAbstractorModel(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        abstractor = config.abstractor_settings
        self.encoder = MplugOwlVisualAbstractorEncoder(config)
        self.visual_fc = nn.Linear(abstractor.hidden_size, config.hidden_size)
        num_queries = abstractor.num_learnable_queries
        self.query_embeds = nn.Parameter(torch.zeros(1, num_queries, abstractor.hidden_size))
        self.vit_eos = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """[n, 1 + grid^2, vision width] -> [n, queries + 1, LLM width]; the last row is `vit_eos`."""
        n = image_tokens.shape[0]
        queries = self.query_embeds.expand(n, -1, -1).to(image_tokens.dtype)
        features = self.visual_fc(self.encoder(queries, image_tokens))
        return torch.cat([features, self.vit_eos.expand(n, -1, -1).to(features.dtype)], dim=1)


# ------------------------------------------------------------------------------------------------------------
# Modality-adaptive LLaMA decoder (model.layers, model.norm)
# ------------------------------------------------------------------------------------------------------------


def modality_groups(modality_indicators: torch.Tensor, num_ways: int = 2) -> list[torch.Tensor]:
    """Flat token indices of each modality (0 text, 1 visual), computed once per forward for all layers."""
    flat = modality_indicators.reshape(-1)
    return [flat.eq(way).nonzero().squeeze(1) for way in range(num_ways)]


class MultiwayNetwork(nn.Module):
    """One copy of a module per modality; each token goes through the copy its modality indicator names."""

    def __init__(self, module_factory: Callable[[], nn.Module], num_ways: int = 2) -> None:
        super().__init__()
        self.multiway = nn.ModuleList(module_factory() for _ in range(num_ways))

    def forward(self, hidden_states: torch.Tensor, groups: Sequence[torch.Tensor]) -> torch.Tensor:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        output: torch.Tensor | None = None
        # Gather each modality's tokens, run its module, scatter back: no FLOPs spent on the other weights.
        for module, index in zip(self.multiway, groups, strict=True):
            if index.numel() == 0:
                continue
            part = module(flat.index_select(0, index))
            if output is None:
                output = part.new_zeros(flat.shape[0], part.shape[-1])
            output = output.index_copy(0, index, part)
        if output is None:  # an empty batch
            output = self.multiway[0](flat)
        return output.view(*hidden_states.shape[:-1], output.shape[-1])


class MPLUGOwl2Attention(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads
        width, bias = config.hidden_size, config.attention_bias
        kv_width = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = MultiwayNetwork(lambda: nn.Linear(width, kv_width, bias=bias))
        self.v_proj = MultiwayNetwork(lambda: nn.Linear(width, kv_width, bias=bias))
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, width, bias=bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        groups: Sequence[torch.Tensor],
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        bsz, seq_len, _ = hidden_states.shape
        query = self.q_proj(hidden_states).view(bsz, seq_len, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states, groups).view(bsz, seq_len, -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states, groups).view(bsz, seq_len, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        groups_per_kv = self.num_heads // self.num_kv_heads
        key, value = repeat_kv(key, groups_per_kv), repeat_kv(value, groups_per_kv)
        context = attention(
            query,
            key,
            value,
            mask,
            1.0 / math.sqrt(self.head_dim),
            _use_eager(self.config),
            is_causal=mask is None,
        )
        return self.o_proj(context.transpose(1, 2).reshape(bsz, seq_len, -1))


class MPLUGOwl2DecoderLayer(nn.Module):
    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.self_attn = MPLUGOwl2Attention(config)
        self.mlp = LlamaMLP(config)

        def rms_norm() -> LlamaRMSNorm:
            return LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

        self.input_layernorm = MultiwayNetwork(rms_norm)
        self.post_attention_layernorm = MultiwayNetwork(rms_norm)

    def forward(
        self,
        hidden_states: torch.Tensor,
        groups: Sequence[torch.Tensor],
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states, groups)
        # position_embeddings by keyword, as LlamaDecoderLayer passes them: hooks read them there (the llama-adapter)
        attended = self.self_attn(normed, groups, position_embeddings=position_embeddings, mask=mask)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states, groups))


class MPLUGOwl2LlamaModel(nn.Module):
    """The LLaMA body plus the two visual modules, under the reference's attribute names."""

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(MPLUGOwl2DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.vision_model = MplugOwlVisionModel(config)
        self.visual_abstractor = MplugOwlVisualAbstractorModel(config)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        modality_indicators: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Decoder over merged embeddings; returns (final-normed hidden states, per-layer states if asked)."""
        bsz, seq_len, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if modality_indicators is None:
            modality_indicators = torch.zeros(bsz, seq_len, dtype=torch.long, device=device)
        mask = None  # plain causal attention
        keep = attention_mask.bool() if attention_mask is not None else None
        if keep is not None and not bool((keep[:, 1:] <= keep[:, :-1]).all()):
            # Padding that is not only on the right (merge_inputs only ever right-pads, and with right padding
            # causality alone keeps every real token from seeing it): mask keys explicitly. Each query also
            # sees itself, so a padding row never softmaxes over nothing.
            causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
            diagonal = torch.eye(seq_len, dtype=torch.bool, device=device)
            mask = (causal & keep[:, None, None, :]) | diagonal
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(seq_len, device=device).expand(bsz, -1)
            else:
                # Positions count real tokens, so a padded row sees the positions of its solo run.
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        groups = modality_groups(modality_indicators, len(self.layers[0].input_layernorm.multiway))

        hidden_states = inputs_embeds
        all_hidden: tuple[torch.Tensor, ...] = ()
        for layer in self.layers:
            if output_hidden_states:
                all_hidden += (hidden_states,)
            hidden_states = layer(hidden_states, groups, position_embeddings, mask)
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden += (hidden_states,)
        return hidden_states, (all_hidden if output_hidden_states else None)


# ------------------------------------------------------------------------------------------------------------
# The causal LM (the checkpoint's `architectures` entry)
# ------------------------------------------------------------------------------------------------------------


def _guarded_copy(tensor: torch.Tensor, value: torch.Tensor) -> None:
    # transformers marks loaded tensors `_is_hf_initialized`; never overwrite those.
    if not getattr(tensor, "_is_hf_initialized", False):
        with torch.no_grad():
            tensor.copy_(value.to(tensor.dtype))


def _guarded_normal(tensor: torch.Tensor, std: float) -> None:
    if not getattr(tensor, "_is_hf_initialized", False):
        with torch.no_grad():
            tensor.normal_(mean=0.0, std=std)


class MPLUGOwl2LlamaForCausalLM(PreTrainedModel):
    """mPLUG-Owl2 with the reference's state-dict names; strict safetensors loading; SDPA or eager."""

    config_class = MPLUGOwl2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = [
        "MPLUGOwl2DecoderLayer",
        "MplugOwlVisionEncoderLayer",
        "MplugOwlVisualAbstractorLayer",
    ]
    # Checkpoints saved by transformers < 4.38 (all published ones) still hold each layer's rotary buffer; rotary
    # positions are recomputed here.
    _keys_to_ignore_on_load_unexpected = [r"\.rotary_emb\.inv_freq$"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def __init__(self, config: MPLUGOwl2Config) -> None:
        super().__init__(config)
        self.model = MPLUGOwl2LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # -- transformers plumbing -------------------------------------------------------------------------------

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # Linear, Conv, Embedding, norms, rotary buffers
        if isinstance(module, MplugOwlVisionEmbeddings):
            std = self.config.vision_settings.initializer_range
            _guarded_normal(module.cls_token, std)
            _guarded_normal(module.position_embedding, std)
        elif isinstance(module, MplugOwlVisualAbstractorModel):
            std = self.config.abstractor_settings.initializer_range
            _guarded_normal(module.query_embeds, std)
            _guarded_normal(module.vit_eos, std)
        elif isinstance(module, MplugOwlVisualAbstractorMultiHeadAttention):
            abstractor = self.config.abstractor_settings
            _guarded_copy(module.q_pos_embed, module.query_positions(abstractor))
            _guarded_copy(module.k_pos_embed, module.key_positions(abstractor))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """transformers' loading (local folder or hub id; single or sharded safetensors; `torch_dtype` /
        `dtype`, `attn_implementation`, `device_map`), made strict: any missing, unexpected or mis-shaped key
        raises, naming the keys. Only safetensors weights are read."""
        if kwargs.get("use_safetensors") is False:
            raise ValueError("MPLUGOwl2LlamaForCausalLM loads safetensors weights only")
        kwargs["use_safetensors"] = True
        # Let shape mismatches reach the report below (transformers' own error does not name the keys).
        kwargs["ignore_mismatched_sizes"] = True
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = []
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
            found = info.get(name) or []
            if found:
                problems.append(f"{name.replace('_', ' ')} ({len(found)}): {sorted(map(str, found))}")
        if problems:
            raise ValueError(
                f"checkpoint {pretrained_model_name_or_path} does not match {cls.__name__}: " + "; ".join(problems)
            )
        return (model, info) if want_info else model

    # -- inputs ----------------------------------------------------------------------------------------------

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n, 3, S, S] frames -> [n, queries + 1, hidden] visual tokens (incl. the `vit_eos` row)."""
        vision = self.model.vision_model
        pixel_values = pixel_values.to(
            device=vision.post_layernorm.weight.device, dtype=vision.post_layernorm.weight.dtype
        )
        return self.model.visual_abstractor(vision(pixel_values))

    @staticmethod
    def _slots_per_row(images: Any, input_ids: torch.Tensor) -> list[list[torch.Tensor]]:
        """Normalise `images` to, per row, one [n_frames, 3, S, S] tensor per `<|image|>` slot of the row."""
        counts = (input_ids == IMAGE_TOKEN_INDEX).sum(-1).tolist()
        bsz = input_ids.shape[0]
        if images is None:
            rows: list[Any] = [None] * bsz
        elif isinstance(images, torch.Tensor):
            if images.dim() not in (4, 5):
                raise ValueError(f"images tensor must be [B, 3, H, W] or [B, n, 3, H, W], got {tuple(images.shape)}")
            rows = list(images.unsqueeze(1) if images.dim() == 4 else images)
        else:
            rows = list(images)
        if len(rows) != bsz:
            raise ValueError(f"got images for {len(rows)} rows but input_ids has {bsz} rows")
        slots = []
        for row, (entry, count) in enumerate(zip(rows, counts, strict=True)):
            if entry is None:
                entry = []
            elif isinstance(entry, torch.Tensor):
                entry = [entry]
            entry = [t.unsqueeze(0) if t.dim() == 3 else t for t in entry]
            if len(entry) != count:
                raise ValueError(f"row {row} has {count} {DEFAULT_IMAGE_TOKEN} slot(s) but {len(entry)} image(s)")
            slots.append(entry)
        return slots

    def _merge(
        self,
        input_ids: torch.Tensor,
        images: Any,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        embed = self.model.embed_tokens
        device = embed.weight.device
        input_ids = input_ids.to(device)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.to(device).bool()
        slots = self._slots_per_row(images, input_ids)

        # One vision pass over every frame of the batch; a slot gets its frames' tokens in frame order.
        frames = [t for row in slots for t in row]
        slot_features: list[torch.Tensor] = []
        if frames:
            features = self.encode_images(torch.cat(frames, dim=0)).to(embed.weight.dtype)
            slot_features = [f.flatten(0, 1) for f in features.split([t.shape[0] for t in frames], dim=0)]
        next_slot = iter(slot_features)

        text_embeds = embed(input_ids.clamp(min=0))  # the placeholder rows are dropped below
        rows_embeds, rows_modality, rows_labels = [], [], []
        for b in range(input_ids.shape[0]):
            ids, row_embeds = input_ids[b][keep[b]], text_embeds[b][keep[b]]
            row_labels = labels[b].to(device)[keep[b]] if labels is not None else None
            pieces, modality, label_pieces, start = [], [], [], 0
            for slot in (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist():
                feats = next(next_slot)
                pieces += [row_embeds[start:slot], feats]
                modality += [0] * (slot - start) + [1] * feats.shape[0]
                if row_labels is not None:
                    ignore = row_labels.new_full((feats.shape[0],), IGNORE_INDEX)
                    label_pieces += [row_labels[start:slot], ignore]
                start = slot + 1
            pieces.append(row_embeds[start:])
            modality += [0] * (ids.shape[0] - start)
            rows_embeds.append(torch.cat(pieces, dim=0))
            rows_modality.append(torch.tensor(modality, dtype=torch.long, device=device))
            if row_labels is not None:
                rows_labels.append(torch.cat([*label_pieces, row_labels[start:]], dim=0))

        # Right-pad to the longest merged row; padding is zeros, masked out, text modality, label ignored.
        lengths = [e.shape[0] for e in rows_embeds]
        bsz, width, longest = len(rows_embeds), text_embeds.shape[-1], max(lengths)
        merged = text_embeds.new_zeros(bsz, longest, width)
        merged_mask = torch.zeros(bsz, longest, dtype=torch.long, device=device)
        merged_modality = torch.zeros(bsz, longest, dtype=torch.long, device=device)
        merged_labels = (
            torch.full((bsz, longest), IGNORE_INDEX, dtype=labels.dtype, device=device) if labels is not None else None
        )
        for b, length in enumerate(lengths):
            merged[b, :length] = rows_embeds[b]
            merged_mask[b, :length] = 1
            merged_modality[b, :length] = rows_modality[b]
            if merged_labels is not None:
                merged_labels[b, :length] = rows_labels[b]
        return merged, merged_mask, merged_modality, merged_labels

    def merge_inputs(
        self,
        input_ids: torch.LongTensor,
        images: list[torch.Tensor] | torch.Tensor | None,
        attention_mask: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replace each row's `-200` placeholder with the visual tokens of its image (or of all its video
        frames, in frame order), drop text padding, and right-pad the rows: (inputs_embeds [B, L, H],
        attention_mask [B, L], modality_indicators [B, L] with 0 text, 1 visual)."""
        embeds, mask, modality, _ = self._merge(input_ids, images, attention_mask)
        return embeds, mask, modality

    # -- forward ---------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        images: list[torch.Tensor] | torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        modality_indicators: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits over the merged sequence [B, L, V]. Give either `input_ids` (+ `images`,
        `attention_mask`, and `labels` aligned with `input_ids`) or the outputs of `merge_inputs`
        (`inputs_embeds`, `attention_mask`, `modality_indicators`)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds, attention_mask, modality_indicators, labels = self._merge(
                input_ids, images, attention_mask, labels
            )
        hidden_states, all_hidden = self.model(
            inputs_embeds,
            attention_mask,
            modality_indicators,
            position_ids,
            output_hidden_states=bool(output_hidden_states),
        )
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # Next-token cross-entropy; visual positions and padding carry IGNORE_INDEX.
            targets = labels[:, 1:].flatten().to(logits.device)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX)
        if return_dict is False:
            return tuple(v for v in (loss, logits, all_hidden) if v is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=all_hidden)

    def hidden_states(
        self,
        input_ids: torch.LongTensor,
        images: list[torch.Tensor] | torch.Tensor | None,
        attention_mask: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-normed hidden states of the merged sequence [B, L, H] and its mask of real positions [B, L]."""
        embeds, mask, modality = self.merge_inputs(input_ids, images, attention_mask)
        hidden_states, _ = self.model(embeds, mask, modality)
        return hidden_states, mask

    def last_hidden(
        self,
        input_ids: torch.LongTensor,
        images: list[torch.Tensor] | torch.Tensor | None,
        attention_mask: torch.LongTensor | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden state at each row's last real position, [B, hidden]: the scorer multiplies it
        with the level rows of `lm_head.weight` only, so no full-vocabulary logits are made."""
        return last_real(*self.hidden_states(input_ids, images, attention_mask))


AutoConfig.register(MPLUGOwl2Config.model_type, MPLUGOwl2Config, exist_ok=True)
AutoModelForCausalLM.register(MPLUGOwl2Config, MPLUGOwl2LlamaForCausalLM, exist_ok=True)


# ------------------------------------------------------------------------------------------------------------
# Preprocessing and prompts, as the reference's q_align/mm_utils.py
# ------------------------------------------------------------------------------------------------------------


def expand2square(img: Image.Image, fill: tuple[int, ...] = CLIP_MEAN_FILL) -> Image.Image:
    """Pad to a square canvas of the longer side filled with `fill`, the image centred (offset rounded down);
    a square image is returned as is."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def _as_rgb_image(frame: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(frame, np.ndarray):
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be HxWx3 uint8 arrays, got {frame.shape} {frame.dtype}")
        return Image.fromarray(frame)
    # The CLIP processor converts to RGB anyway; doing it first keeps the RGB fill valid for L/P/RGBA input.
    return frame if frame.mode == "RGB" else frame.convert("RGB")


def preprocess_frames(
    frames: Sequence[Image.Image | np.ndarray],
    image_processor: Any,
    fill: tuple[int, ...] | None = None,
    raw: bool = False,
) -> torch.Tensor:
    """expand2square (fill: the processor's mean x 255 truncated, as the reference) then the checkpoint's
    CLIP processor (bicubic resize of the shortest edge, centre crop, rescale, CLIP mean/std): [n,3,S,S].

    raw: the geometric steps only (pad to square, resize, crop), values 0..255; rescale and normalise are left to
    the scorer's device (pipeline.models.normalise)."""
    if fill is None:
        fill = tuple(int(x * 255) for x in image_processor.image_mean)
    squares = [expand2square(_as_rgb_image(frame), fill) for frame in frames]
    options = {"do_rescale": False, "do_normalize": False} if raw else {}
    # The channel axis is stated, never inferred (a 1x1 or 3x3 square would be ambiguous to a shape-based guess).
    out = image_processor(images=squares, return_tensors="pt", input_data_format="channels_last", **options)
    return out["pixel_values"]


def load_image_processor(path: str, **kwargs: Any) -> Any:
    """The checkpoint's CLIP image processor on the PIL backend: the reference's resize (the torchvision
    backend, which transformers 5 prefers when torchvision is installed, resizes differently).

    A checkpoint without `preprocessor_config.json` (`q-future/q-align-vqa`) gets the family's documented
    preprocessing: CLIP at the vision tower's input size (448 for the published models), bicubic, CLIP mean/std.
    """
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as processor_class
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "preprocessor_config.json")):
        size = MPLUGOwl2Config.from_pretrained(path).vision_settings.image_size
        logger.warning(
            "%s has no preprocessor_config.json: using the mPLUG-Owl2 defaults (CLIP at %d px, bicubic, CLIP mean/std)",
            path,
            size,
        )
        return processor_class(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            resample=Image.Resampling.BICUBIC,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
    return processor_class.from_pretrained(path, **kwargs)


def tokenize_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """The reference's `tokenizer_image_token`: tokenize the text around each `<|image|>` separately, keep
    one BOS (only when the first chunk starts with it) and put IMAGE_TOKEN_INDEX (-200) in each slot."""
    chunks = [_encode_chunk(tokenizer, chunk) if chunk else [] for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    # As the reference: when the first chunk starts with BOS, the first token of *every* chunk (its BOS) is
    # dropped and one BOS leads; otherwise (e.g. the prompt starts with the image) chunks are kept whole.
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids: list[int] = chunks[0][:offset]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def _encode_chunk(tokenizer: Any, chunk: str) -> list[int]:
    """One chunk as the reference's slow SentencePiece tokenizer encodes it. That tokenizer always puts its dummy
    prefix '▁' before the text; the tokenizers-backed LLaMA tokenizer of transformers 5 (Metaspace, prepend_scheme
    "first") adds it only when the text does not already start with a space. So a chunk that starts with one (the
    evaluation scripts' `<|image|> ASSISTANT:`) gets one more space, the one the slow tokenizer's prefix stands for:
    without it the ids lose a token (tests/goldens/deqa_tiny)."""
    pre_tokenizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if (
        chunk.startswith(" ")
        and type(pre_tokenizer).__name__ == "Metaspace"
        and pre_tokenizer.prepend_scheme == "first"
    ):
        chunk = " " + chunk
    return tokenizer(chunk).input_ids
