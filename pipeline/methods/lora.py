"""`lora`: low-rank adapters (peft) on the language model's projections, merged into the weights on export, so the
version is a plain model that any loader runs."""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from pipeline.methods import Attached, Method, Option

# The language model's projections only (as Q-Align's LoRA variant); the towers stay frozen.
TARGETS = r"^(?!.*(vision|visual)).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)(\.multiway\.\d+)?$"


class Lora(Method):
    name = "lora"
    default_lr = 2e-4  # far fewer weights move than in full fine-tuning: a larger step
    options = (
        Option("lora_r", int, 128, "LoRA rank (Q-Align's LoRA variant uses 128)", minimum=1),
        Option("lora_alpha", int, None, "LoRA alpha (default: 2 * lora-r)", minimum=1),
    )

    def attach(self, model: nn.Module, processor: Any, options: dict[str, Any], parent: str) -> Attached:
        from peft import LoraConfig, get_peft_model

        model.requires_grad_(False)
        # Linear layers only: mPLUG-Owl2's k/v projections are containers of one Linear per modality.
        targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(TARGETS, n)]
        config = LoraConfig(
            r=options["lora_r"],
            lora_alpha=options["lora_alpha"] or 2 * options["lora_r"],
            lora_dropout=0.05,
            target_modules=targets,
            bias="none",
        )
        peft_model = get_peft_model(model, config)  # injects the adapters into `model` itself

        def export(folder: str) -> None:
            peft_model.merge_and_unload().save_pretrained(folder, safe_serialization=True)

        return Attached(export=export)


METHOD = Lora()
