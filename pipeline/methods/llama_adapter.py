"""`llama-adapter`: zero-init gated adaption prompts in the top layers of the language model (Zhang et al. 2023).

For each adapted layer l, K learnable prompts P_l [K, C]. Their keys and values come from the layer's own key/value
projections, with no rotary position (a prompt has no place in the sequence). The query positions' scores over the K
prompt keys (scaled by 1/sqrt(head_dim)) are softmaxed on their own, multiplied by a gate with one value per head that
starts at 0, and that weighted sum of the prompt values is added to the layer's attention output before o_proj:

    out_l = attention_l(x) + gate_l[h] * softmax(q_h P_l k_h^T / sqrt(d)) (P_l v_h)      (per head h, then o_proj)

At initialisation the gates are 0, so the adapted model is exactly the pre-trained one; training moves only the
prompts and gates (everything else, vision tower included, is frozen).

How it sits in the model: hooks, not a copy of the attention code, so the layer's own attention (SDPA, masks, GQA)
runs untouched and the model's state dict stays the base model's. Per adapted layer: a pre-hook on the attention
module reads the rotary (cos, sin) it is given, a hook on q_proj keeps the layer's queries, and a pre-hook on o_proj
adds the gated prompt attention to o_proj's input (the heads' concatenated outputs).

Queries: ROTATED, as the layer rotates them for its own keys. The original LLaMA-Adapter code scores the rotated
query `xq` against the unrotated prompt keys; we follow it, so the method is the published one (a rotation of the
query by its own position is a fixed, position-dependent map that the learned prompts absorb). The rotary is the
(cos, sin) the layer is handed, applied to its first cos.shape[-1] dims (all of them for LLaMA, the partial rotary
part for Qwen3.5), so Qwen3.5's multimodal rotary (mrope) sections come with it: the query is the one the layer uses.

Qwen3.5's language model differs in three ways (the per-class functions in LAYOUTS below):
- its layers are hybrid: Gated DeltaNet (linear attention) layers interleaved with full-attention layers. A linear
  layer has no softmax over keys to extend, so "the top L layers" are the top L FULL-attention layers (layer indices
  count those, bottom = 0); a request for more than there are takes all of them (clamped, as for LLaMA);
- per-head RMS norms on q and k before rotary: the query is q_norm'ed as the layer does, and a prompt's key goes
  through k_proj then k_norm (the layer's own, as a real key would), still with no rotary; its value through v_proj;
- q_proj makes the query AND an output gate (per head [query | gate]); the layer multiplies its attention output by
  sigmoid(gate) before o_proj. The prompt attention is added BEFORE that gate (o_proj's input gets sigmoid(gate) *
  (attention + prompt attention)): the prompts extend the layer's attention, so their output is gated like the rest
  of it. At a zero adapter gate the added term is exactly 0 either way.
Its GQA (fewer kv heads) is LLaMA's: the prompt keys/values are repeated over the query heads.

Saved as its own small artifact (llama_adapter.safetensors + llama_adapter.json) beside the frozen model's files;
the Scorer puts it on the model whenever a folder has one. A llama-adapter parent keeps its adapter training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, repeat_kv, rotate_half
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5Attention

from pipeline.methods import Addition, Attached, Method, Option, load_artifact, save_artifact
from pipeline.models.owl2 import MPLUGOwl2Attention

WEIGHTS = "llama_adapter.safetensors"
CONFIG = "llama_adapter.json"


def text_branch(projection: nn.Module) -> nn.Module:
    """The projection a prompt goes through.

    mPLUG-Owl2's k/v projections are modality-adaptive (`multiway`: [text, visual]). The prompts take the text branch:
    they are learned tokens on the language side, like LLaMA-Adapter's (which are learned in the LLM's word space and
    go through the LLaMA's own wk/wv); the visual branch only ever sees the visual abstractor's tokens, while the text
    branch is the LLaMA's original projection that the question and answer tokens, which attend to the prompts, use.
    """
    return projection.multiway[0] if hasattr(projection, "multiway") else projection


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[..., n * head_dim] -> [..., n, head_dim]."""
    return x.view(*x.shape[:-1], -1, head_dim)


def plain_queries(attention: nn.Module, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q_proj's output as per-head queries [B, L, H, D] before rotary; no output gate."""
    return split_heads(projected, attention.head_dim), None


def plain_keys(attention: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
    """The prompts' keys [K, kv heads, D]: the layer's k_proj (mPLUG-Owl2: its text branch)."""
    return split_heads(text_branch(attention.k_proj)(prompts), attention.head_dim)


def plain_values(attention: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
    """The prompts' values [K, kv heads, D]: the layer's v_proj (mPLUG-Owl2: its text branch)."""
    return split_heads(text_branch(attention.v_proj)(prompts), attention.head_dim)


def qwen3_5_queries(attention: nn.Module, projected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3.5: q_proj gives per head [query | gate]; the query is q_norm'ed (before rotary), the gate [B, L, H * D]
    is the one the layer multiplies its attention output by (through a sigmoid) before o_proj."""
    query, gate = torch.chunk(split_heads(projected, 2 * attention.head_dim), 2, dim=-1)
    return attention.q_norm(query), gate.reshape(*projected.shape[:-1], -1)


def qwen3_5_keys(attention: nn.Module, prompts: torch.Tensor) -> torch.Tensor:
    """Qwen3.5: k_proj, then the layer's per-head k_norm, as for its own keys (no rotary)."""
    return attention.k_norm(split_heads(attention.k_proj(prompts), attention.head_dim))


@dataclass(frozen=True)
class Layout:
    """How an attention class makes the queries it scores with and the prompts' keys and values."""

    queries: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    keys: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    values: Callable[[nn.Module, torch.Tensor], torch.Tensor] = plain_values


# The decoder attentions the method supports. Idefics3's and LLaVA's text models are Llama; mPLUG-Owl2's is its own,
# with multiway k/v; Qwen3.5's full-attention layers have q/k norms and an output gate (its Gated DeltaNet layers are
# another class, so they are never adapted). (Qwen2-VL's and Qwen3-VL's attentions would need their own entries.)
LAYOUTS: dict[type[nn.Module], Layout] = {
    LlamaAttention: Layout(plain_queries, plain_keys),
    MPLUGOwl2Attention: Layout(plain_queries, plain_keys),
    Qwen3_5Attention: Layout(qwen3_5_queries, qwen3_5_keys),
}
SUPPORTED = tuple(LAYOUTS)


def layout(attention: nn.Module) -> Layout:
    return next(v for k, v in LAYOUTS.items() if isinstance(attention, k))


def rotate(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary on queries [B, H, L, D] with the layer's (cos, sin) [B, L, R]: the first R dims (R = D for LLaMA, the
    partial rotary part for Qwen3.5), the rest passed through, as the layers' own apply_rotary_pos_emb."""
    cos, sin, dim = cos.unsqueeze(1), sin.unsqueeze(1), cos.shape[-1]
    turned, kept = q[..., :dim], q[..., dim:]
    return torch.cat([turned * cos + rotate_half(turned) * sin, kept], dim=-1)


def decoder_attentions(model: nn.Module) -> list[nn.Module]:
    """The language model's softmax self-attention modules, bottom layer first (Qwen3.5: its full-attention
    layers only; the adapter's layer indices count these)."""
    found = [m for m in model.modules() if isinstance(m, SUPPORTED)]
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
        raise ValueError(f"the llama-adapter method needs a LLaMA-style decoder; this model's attention: {kinds}")
    return found


class LlamaAdapter(Addition):
    """Prompts [n_layers, K, C] and gates [n_layers, heads] for the decoder layers `layers` (indices, bottom = 0)."""

    def __init__(self, layers: list[int], adapter_len: int, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.layers, self.adapter_len = list(layers), adapter_len
        # N(0, 1), as the reference's nn.Embedding: about the scale of the RMS-normed states the projections see.
        self.prompts = nn.Parameter(torch.randn(len(layers), adapter_len, hidden_size))
        self.gates = nn.Parameter(torch.zeros(len(layers), num_heads))  # zero: the model starts as it was
        self._handles: list[Any] = []
        self._pending: dict[int, dict[str, torch.Tensor]] = {}  # per slot: what this forward's hooks captured

    @classmethod
    def for_model(cls, model: nn.Module, adapter_len: int, adapter_layers: int) -> LlamaAdapter:
        attentions = decoder_attentions(model)
        config = attentions[0].config
        n = min(adapter_layers, len(attentions))  # clamped: all of them when fewer (Qwen3.5: full-attention ones)
        top = list(range(len(attentions) - n, len(attentions)))
        return cls(top, adapter_len, config.hidden_size, config.num_attention_heads)

    # -- on the model ------------------------------------------------------------------------------------------

    def attach_to(self, model: nn.Module) -> LlamaAdapter:
        """Hook the adapted layers of `model` (again: hooks from an earlier attach are removed first)."""
        self.detach()
        attentions = decoder_attentions(model)
        if max(self.layers) >= len(attentions) or attentions[0].config.hidden_size != self.prompts.shape[-1]:
            raise ValueError(
                f"this adapter is for layers {self.layers} of width {self.prompts.shape[-1]}; the model has "
                f"{len(attentions)} attention layers of width {attentions[0].config.hidden_size}"
            )
        for slot, index in enumerate(self.layers):
            attention = attentions[index]
            self._handles += [
                attention.register_forward_pre_hook(partial(self._keep_positions, slot), with_kwargs=True),
                attention.q_proj.register_forward_hook(partial(self._keep_queries, slot)),
                attention.o_proj.register_forward_pre_hook(partial(self._add_prompt_attention, slot, attention)),
            ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._pending = [], {}

    def _keep_positions(self, slot: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending[slot] = {"rotary": kwargs["position_embeddings"]}  # every supported decoder passes it by keyword

    def _keep_queries(self, slot: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pending[slot]["queries"] = output  # q_proj's output (Qwen3.5: queries and output gate)

    def _add_prompt_attention(self, slot: int, attention: nn.Module, module: nn.Module, args: tuple) -> tuple:
        pending = self._pending.pop(slot)  # dropped at once: no activations outlive the forward
        (context,) = args  # [B, L, heads * head_dim], what o_proj would project
        return (context + self.prompt_attention(slot, attention, pending["queries"], *pending["rotary"]),)

    def prompt_attention(
        self, slot: int, attention: nn.Module, projected: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """The gated attention of the layer's queries (from q_proj's output `projected`) over the slot's prompts, as
        it enters o_proj: [B, L, heads * head_dim] (Qwen3.5: times the layer's sigmoid output gate, as its own)."""
        config, head_dim, shape = attention.config, attention.head_dim, layout(attention)
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        batch, length, _ = projected.shape
        queries, output_gate = shape.queries(attention, projected)  # [B, L, H, D]
        q = rotate(queries.transpose(1, 2), cos, sin)  # [B, H, L, D], rotated as the layer's (module docstring)
        prompts = self.prompts[slot].to(q.dtype)
        # Keys and values of the prompts: the layer's projections, no rotary; kv heads repeated as the layer does.
        keys = shape.keys(attention, prompts).transpose(0, 1)[None]  # [1, kv heads, K, D]
        values = shape.values(attention, prompts).transpose(0, 1)[None]
        keys, values = repeat_kv(keys, heads // kv_heads), repeat_kv(values, heads // kv_heads)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * head_dim**-0.5  # [B, H, L, K]
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # over the prompts alone
        gated = self.gates[slot].to(q.dtype)[None, :, None, None] * probs
        out = torch.matmul(gated, values).transpose(1, 2).reshape(batch, length, heads * head_dim)
        return out if output_gate is None else out * torch.sigmoid(output_gate)

    # -- the artifact ------------------------------------------------------------------------------------------

    def save(self, folder: str) -> None:
        config = {
            "method": "llama-adapter",
            "layers": self.layers,
            "adapter_len": self.adapter_len,
            "hidden_size": self.prompts.shape[-1],
            "num_heads": self.gates.shape[-1],
            "gate": "one per head, zero-init, multiplies the prompt attention",
            "layer_index": "among the decoder's softmax-attention layers (Qwen3.5: full-attention layers only)",
            "queries": "rotated (as the layer's own; Qwen3.5: after q_norm), prompt keys unrotated",
            "kv_projection": "the layer's own k_proj/v_proj (mPLUG-Owl2: the text branch, multiway.0; Qwen3.5: "
            "keys k_norm'ed)",
            "output_gate": "Qwen3.5: the prompt attention is added before the layer's sigmoid output gate",
            "parameters": sum(p.numel() for p in self.parameters()),
        }
        tensors = {"prompts": self.prompts.float(), "gates": self.gates.float()}
        save_artifact(folder, WEIGHTS, tensors, CONFIG, config)

    @classmethod
    def load(cls, folder: str) -> LlamaAdapter | None:
        """The adapter saved in a local `folder`, or None when the folder has none."""
        found = load_artifact(folder, WEIGHTS, CONFIG)
        if found is None:
            return None
        config, tensors = found
        adapter = cls(config["layers"], config["adapter_len"], config["hidden_size"], config["num_heads"])
        adapter.load_state_dict(tensors)
        return adapter


class LlamaAdapterMethod(Method):
    name = "llama-adapter"
    default_lr = 9e-3  # the paper's base learning rate; only prompts and gates move
    options = (
        Option("adapter_len", int, 10, "prompt tokens per adapted layer (K)", minimum=1),
        Option(
            "adapter_layers", int, 30, "adapted layers: the top L (full-)attention layers (all when fewer)", minimum=1
        ),
    )
    artifacts = (WEIGHTS, CONFIG)

    def attach(self, model: nn.Module, processor: Any, options: dict[str, Any], parent: str) -> Attached:
        model.requires_grad_(False).eval()
        adapter = LlamaAdapter.load(parent)  # a llama-adapter parent: keep training its adapter (its shape wins)
        if adapter is None:
            adapter = LlamaAdapter.for_model(model, options["adapter_len"], options["adapter_layers"])
        adapter.requires_grad_(True).attach_to(model)
        return Attached(export=adapter.save, addition=adapter)

    def apply(self, model: nn.Module, folder: str) -> LlamaAdapter | None:
        adapter = LlamaAdapter.load(folder)
        if adapter is None:
            return None
        param = next(model.parameters())
        return adapter.to(param.device, param.dtype).eval().attach_to(model)


METHOD = LlamaAdapterMethod()
