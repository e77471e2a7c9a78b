"""A tiny mPLUG-Owl2 in exactly the layout of the published Q-Align-family hub repositories.

Published (q-future/one-align, q-align-*, DeQA-Score): two pickled bf16 shards + pytorch_model.bin.index.json,
a transformers 4.31 config.json with auto_map and remote-code files beside it, a nested visual_config whose two
sub-configs carry the whole old PretrainedConfig field set, the old per-layer rotary_emb.inv_freq buffers, a LLaMA
SentencePiece tokenizer (tokenizer.model) and a CLIP-448 preprocessor_config.json. Sizes are tiny except where token
counts come from: the 448 px input, patch 14 (1025 vision tokens) and 64 queries (65 LLM tokens per image).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import AutoTokenizer

from pipeline.models.owl2 import ABSTRACTOR_DEFAULTS, VISION_DEFAULTS, MPLUGOwl2Config, MPLUGOwl2LlamaForCausalLM
from pipeline.qalign.levels import DEFAULT_LEVELS
from pipeline.samples.tiny_models import WORDS

# The field set that transformers 4.31's PretrainedConfig.to_dict() writes for every (sub-)config.
_OLD_PRETRAINED_FIELDS = dict(
    return_dict=True,
    output_hidden_states=False,
    output_attentions=False,
    torchscript=False,
    torch_dtype=None,
    use_bfloat16=False,
    tf_legacy_loss=False,
    pruned_heads={},
    tie_word_embeddings=True,
    is_encoder_decoder=False,
    is_decoder=False,
    cross_attention_hidden_size=None,
    add_cross_attention=False,
    tie_encoder_decoder=False,
    max_length=20,
    min_length=0,
    do_sample=False,
    early_stopping=False,
    num_beams=1,
    num_beam_groups=1,
    diversity_penalty=0.0,
    temperature=1.0,
    top_k=50,
    top_p=1.0,
    typical_p=1.0,
    repetition_penalty=1.0,
    length_penalty=1.0,
    no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0,
    bad_words_ids=None,
    num_return_sequences=1,
    chunk_size_feed_forward=0,
    output_scores=False,
    return_dict_in_generate=False,
    forced_bos_token_id=None,
    forced_eos_token_id=None,
    remove_invalid_values=False,
    exponential_decay_length_penalty=None,
    suppress_tokens=None,
    begin_suppress_tokens=None,
    architectures=None,
    finetuning_task=None,
    id2label={"0": "LABEL_0", "1": "LABEL_1"},
    label2id={"LABEL_0": 0, "LABEL_1": 1},
    tokenizer_class=None,
    prefix=None,
    bos_token_id=None,
    pad_token_id=None,
    eos_token_id=None,
    sep_token_id=None,
    decoder_start_token_id=None,
    task_specific_params=None,
    problem_type=None,
    _name_or_path="",
    transformers_version="4.31.0",
)
# The reference defaults (the published sizes: 448 px, patch 14, 64 queries, grid 32) with tiny widths and depths.
HUB_VISION = {
    **VISION_DEFAULTS,
    **dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2, num_attention_heads=4),
}
HUB_ABSTRACTOR = {
    **ABSTRACTOR_DEFAULTS,
    **dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=88, encoder_hidden_size=32),
    "add_v2t_pos_emb": False,
    "use_cls_token": True,
}
CLIP_448 = {
    "crop_size": 448,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 448,
}
REMOTE_CODE_FILES = ("configuration_mplug_owl2.py", "modeling_mplug_owl2.py", "modeling_llama2.py", "visual_encoder.py")
REMOTE_CODE_MARKER = "REMOTE_CODE_WAS_IMPORTED"


def sentencepiece_tokenizer(out_dir: Path, vocab_size: int = 640) -> None:
    """Train a LLaMA-style SentencePiece BPE model offline (byte fallback, dummy prefix, <unk>/<s>/</s> = 0/1/2)
    on the prompt vocabulary, and write tokenizer.model, tokenizer_config.json and special_tokens_map.json as the
    published mPLUG-Owl2 checkpoints have them."""
    words = [w for w in WORDS if w.strip()] + list(DEFAULT_LEVELS.words)
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(words) for _ in range(16)) for _ in range(4000)]
    # every word often enough, alone, to become one piece
    corpus += [f"The quality of the image is {w}." for w in words for _ in range(40)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {
            "__type": "AddedToken",
            "content": "<s>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "clean_up_tokenization_spaces": False,
        "eos_token": {
            "__type": "AddedToken",
            "content": "</s>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": {
            "__type": "AddedToken",
            "content": "<unk>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        },
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def make_owl2_hub_checkpoint(out_dir: str | Path, seed: int = 0, shards: int = 2) -> MPLUGOwl2LlamaForCausalLM:
    """Write a tiny random mPLUG-Owl2 in the published hub layout (see above). Returns the model (bf16 weights in
    float32, as the scorer loads them on CPU), so a test can save the same weights in another layout to compare."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentencepiece_tokenizer(out)
    vocab = len(AutoTokenizer.from_pretrained(out))
    llama = dict(
        architectures=["MPLUGOwl2LlamaForCausalLM"],
        auto_map={
            "AutoConfig": "configuration_mplug_owl2.MPLUGOwl2Config",
            "AutoModel": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM",
            "AutoModelForCausalLM": "modeling_mplug_owl2.MPLUGOwl2LlamaForCausalLM",
        },
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
        hidden_size=64,
        image_aspect_ratio="pad",
        initializer_range=0.02,
        intermediate_size=128,
        max_position_embeddings=4096,
        model_type="mplug_owl2",
        num_attention_heads=4,
        num_hidden_layers=2,
        num_key_value_heads=4,
        pretraining_tp=1,
        rms_norm_eps=1e-5,
        rope_scaling=None,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        transformers_version="4.31.0",
        use_cache=True,
        vocab_size=vocab,
        visual_config={
            "visual_model": {**_OLD_PRETRAINED_FIELDS, **HUB_VISION, "model_type": "mplug_owl_vision_model"},
            "visual_abstractor": {
                **_OLD_PRETRAINED_FIELDS,
                **HUB_ABSTRACTOR,
                "model_type": "mplug_owl_visual_abstract",
            },
        },
    )
    (out / "config.json").write_text(json.dumps(llama, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.31.0"}, indent=2) + "\n"
    )
    (out / "preprocessor_config.json").write_text(json.dumps(CLIP_448, indent=2) + "\n")
    # Remote code that must never run: importing any of it leaves a marker file beside the checkpoint.
    marker = (out / REMOTE_CODE_MARKER).resolve()
    for name in REMOTE_CODE_FILES:
        (out / name).write_text(f"open({str(marker)!r}, 'w').write({name!r})\n")

    torch.manual_seed(seed)
    model = MPLUGOwl2LlamaForCausalLM(MPLUGOwl2Config.from_pretrained(out)).to(torch.bfloat16)
    state = dict(model.state_dict())
    head_dim = llama["hidden_size"] // llama["num_attention_heads"]
    inv_freq = 1.0 / (llama["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(llama["num_hidden_layers"]):  # what transformers < 4.38 saved
        state[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    keys = list(state)
    per_shard = -(-len(keys) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k].clone() for k in keys[i * per_shard : (i + 1) * per_shard]}
        torch.save(part, out / name)
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return model.float().eval()
