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
query by its own position is a fixed, position-dependent map that the learned prompts absorb).

Saved as its own small artifact (llama_adapter.safetensors + llama_adapter.json) beside the frozen model's files;
the Scorer puts it on the model whenever a folder has one. A llama-adapter parent keeps its adapter training.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, repeat_kv, rotate_half

from pipeline.methods import Addition, Attached, Method, Option, load_artifact, save_artifact
from pipeline.models.owl2 import MPLUGOwl2Attention

WEIGHTS = "llama_adapter.safetensors"
CONFIG = "llama_adapter.json"
# LLaMA-style decoder attention: q/k/v/o projections, standard rotary on q and k. Idefics3's and LLaVA's text models
# are Llama; mPLUG-Owl2's is its own, with multiway k/v. (Qwen3's per-head q/k norms and Qwen2-VL's multimodal
# rotary would need their own handling of the prompt keys and queries: not supported yet.)
SUPPORTED = (LlamaAttention, MPLUGOwl2Attention)


def decoder_attentions(model: nn.Module) -> list[nn.Module]:
    """The language model's self-attention modules, bottom layer first."""
    found = [m for m in model.modules() if isinstance(m, SUPPORTED)]
    if not found:
        kinds = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Attention")})
        raise ValueError(f"the llama-adapter method needs a LLaMA-style decoder; this model's attention: {kinds}")
    return found


def text_branch(projection: nn.Module) -> nn.Module:
    """The projection a prompt goes through.

    mPLUG-Owl2's k/v projections are modality-adaptive (`multiway`: [text, visual]). The prompts take the text branch:
    they are learned tokens on the language side, like LLaMA-Adapter's (which are learned in the LLM's word space and
    go through the LLaMA's own wk/wv); the visual branch only ever sees the visual abstractor's tokens, while the text
    branch is the LLaMA's original projection that the question and answer tokens, which attend to the prompts, use.
    """
    return projection.multiway[0] if hasattr(projection, "multiway") else projection


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
        n = min(adapter_layers, len(attentions))
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
                f"{len(attentions)} layers of width {attentions[0].config.hidden_size}"
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
        self._pending[slot] = {"rotary": kwargs["position_embeddings"]}  # both decoders pass it by keyword

    def _keep_queries(self, slot: int, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._pending[slot]["queries"] = output

    def _add_prompt_attention(self, slot: int, attention: nn.Module, module: nn.Module, args: tuple) -> tuple:
        pending = self._pending.pop(slot)  # dropped at once: no activations outlive the forward
        (context,) = args  # [B, L, heads * head_dim], what o_proj would project
        return (context + self.prompt_attention(slot, attention, pending["queries"], *pending["rotary"]),)

    def prompt_attention(
        self, slot: int, attention: nn.Module, queries: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """The gated attention of the queries over the slot's prompts: [B, L, heads * head_dim]."""
        config, head_dim = attention.config, attention.head_dim
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        batch, length, _ = queries.shape
        q = queries.view(batch, length, heads, head_dim).transpose(1, 2)  # [B, H, L, D]
        q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)  # rotated, as the layer's (module docstring)
        prompts = self.prompts[slot].to(q.dtype)
        # Keys and values of the prompts: the layer's projections, no rotary; kv heads repeated as the layer does.
        keys = text_branch(attention.k_proj)(prompts).view(1, -1, kv_heads, head_dim).transpose(1, 2)
        values = text_branch(attention.v_proj)(prompts).view(1, -1, kv_heads, head_dim).transpose(1, 2)
        keys, values = repeat_kv(keys, heads // kv_heads), repeat_kv(values, heads // kv_heads)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * head_dim**-0.5  # [B, H, L, K]
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # over the prompts alone
        gated = self.gates[slot].to(q.dtype)[None, :, None, None] * probs
        out = torch.matmul(gated, values)  # [B, H, L, D]
        return out.transpose(1, 2).reshape(batch, length, heads * head_dim)

    # -- the artifact ------------------------------------------------------------------------------------------

    def save(self, folder: str) -> None:
        config = {
            "method": "llama-adapter",
            "layers": self.layers,
            "adapter_len": self.adapter_len,
            "hidden_size": self.prompts.shape[-1],
            "num_heads": self.gates.shape[-1],
            "gate": "one per head, zero-init, multiplies the prompt attention",
            "queries": "rotated (as the layer's own), prompt keys unrotated",
            "kv_projection": "the layer's own k_proj/v_proj (mPLUG-Owl2: the text branch, multiway.0)",
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
        Option("adapter_layers", int, 30, "adapted layers: the top L of the LLM (all when fewer)", minimum=1),
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
