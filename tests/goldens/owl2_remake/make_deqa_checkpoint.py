"""A tiny random DeQA-Score checkpoint in the published layout of zhiyuanyou/DeQA-Score-Mix3, written by the
reference's own model class (DeQA-Score src/model, transformers 4.36.1) with save_pretrained:
config.json (model_type mplug_owl2, architectures, auto_map), two pickled bf16 shards
pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json, generation_config.json, the LLaMA-style
tokenizer (tokenizer.model, tokenizer_config.json, special_tokens_map.json) and DeQA-Score's own CLIP-448
preprocessor_config.json (DeQA-Score/preprocessor/, verbatim). Tiny widths and depths; the published sizes where
token counts come from (448 px, patch 14: 1025 vision tokens; 64 queries: 65 LLM tokens per image).
usage: PYTHONPATH=TF436:DEQA_ROOT python make_deqa_checkpoint.py OUT TOKENIZER_DIR DEQA_PREPROCESSOR_DIR
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from src.model.configuration_mplug_owl2 import MPLUGOwl2Config, MplugOwlVisionConfig, MplugOwlVisualAbstractorConfig
from src.model.modeling_mplug_owl2 import MPLUGOwl2LlamaForCausalLM

out, tok, pre = (Path(a) for a in sys.argv[1:4])
out.mkdir(parents=True, exist_ok=True)
vision = MplugOwlVisionConfig(
    hidden_size=32,
    intermediate_size=64,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=448,
    patch_size=14,
).to_dict()
abstractor = MplugOwlVisualAbstractorConfig(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=88, encoder_hidden_size=32
).to_dict()
assert abstractor["num_learnable_queries"] == 64 and abstractor["grid_size"] == 32
config = MPLUGOwl2Config(
    visual_config={"visual_model": vision, "visual_abstractor": abstractor},
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
    image_aspect_ratio="pad",
    architectures=["MPLUGOwl2LlamaForCausalLM"],
)
torch.manual_seed(28)
model = MPLUGOwl2LlamaForCausalLM(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        # Every norm gain and bias re-drawn to distinct values (so swapped text/visual weights show), and the
        # LLM's weights widened from 0.02 so that the level probabilities are far from uniform.
        if name.endswith("bias"):
            p.copy_(torch.randn_like(p) * 0.1)
        elif "norm" in name or "ln" in name.split(".")[-2]:
            p.copy_(1 + torch.randn_like(p) * 0.2)
        else:
            p.copy_(torch.randn_like(p) * 0.08)
model = model.to(torch.bfloat16)
total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
model.save_pretrained(out, safe_serialization=False, max_shard_size=f"{total // 2 // 1000 + 8}KB")
cfg = json.loads((out / "config.json").read_text())
cfg["auto_map"] = {  # as the published config.json: remote code beside it (never needed here)
    "AutoConfig": "configuration_mplug_owl2.MPLUGOwl2Config",
    "AutoModel": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM",
    "AutoModelForCausalLM": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM",
}
(out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(tok / f, out / f)
shutil.copy(pre / "preprocessor_config.json", out / "preprocessor_config.json")
print(sorted(p.name for p in out.iterdir()), total, "bytes of weights")
