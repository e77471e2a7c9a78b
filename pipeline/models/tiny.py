"""Tiny random models of each supported family, saved in the standard layout so they load like real checkpoints.

Weights cannot be downloaded here, so tests and the offline demo build a model of the same classes from a small config
(random weights, seeded) with a word-level tokenizer that holds the level words as single tokens.
"""

from __future__ import annotations

from pathlib import Path

import tokenizers
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pipeline.levels import DEFAULT_LEVELS

FAMILIES = ("llava", "idefics3", "owl2")

SPECIAL = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "<image>",
    "<|image|>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
    "<|im_start|>",
]
# Every word the prompts, chat templates and training answers use, so the tiny tokenizer never falls back to <unk>.
WORDS = (
    """\n : ? . , ! ' - USER ASSISTANT User Assistant How What would you rate the quality aesthetics of this
image video picture photo is are was Can evaluate Rate Please give your rating for judge I think it level overall its
visual a an in and on to as be do how well
The about""".split()
    + ["\n"]
)

TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)

LLAVA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}\n{% endif %}{% endfor %}"
    "{% else %}ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_tokenizer(extra_words: tuple[str, ...] = DEFAULT_LEVELS.words) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (BOS added like LLaMA's) whose vocabulary holds the prompts and the level words."""
    vocab: dict[str, int] = {}
    for word in [*SPECIAL, *WORDS, *extra_words]:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # keep newlines, words and punctuation as tokens; drop spaces
    tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"\n|\w+|[^\w\s]"), behavior="removed", invert=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tok.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def _llava(tokenizer: PreTrainedTokenizerFast, vision: dict = VISION, text: dict = TEXT):
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision, projection_dim=32),
        text_config=LlamaConfig(**text, vocab_size=len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(vision["image_size"] // vision["patch_size"]) ** 2,
    )
    size = vision["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(config), processor


def _idefics3(tokenizer: PreTrainedTokenizerFast, vision: dict = VISION, text: dict = TEXT):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    scale = 2
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**vision).to_dict(),
        text_config=LlamaConfig(**text, vocab_size=len(tokenizer)).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    edge = {"longest_edge": vision["image_size"]}
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size=edge, max_image_size=edge)
    seq_len = (vision["image_size"] // vision["patch_size"]) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=IDEFICS3_TEMPLATE,
    )
    return Idefics3ForConditionalGeneration(config), processor


def _owl2(tokenizer: PreTrainedTokenizerFast, vision: dict = VISION, text: dict = TEXT):
    # The owl2 tiny shapes are the golden ones (pipeline.models.owl2.tiny_config); only the defaults are supported.
    if vision is not VISION or text is not TEXT:
        raise ValueError("the tiny owl2 model has fixed (golden) shapes; vision/text overrides are for llava/idefics3")
    from transformers import CLIPImageProcessor

    from pipeline.models.owl2 import MPLUGOwl2LlamaForCausalLM, tiny_config

    config = tiny_config(vocab_size=len(tokenizer))
    size = config.visual_config["visual_model"]["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return MPLUGOwl2LlamaForCausalLM(config), (image_processor, tokenizer)


def make_tiny_model(
    family: str, out_dir: str | Path, seed: int = 0, vision: dict | None = None, text: dict | None = None
) -> Path:
    """Write a tiny random model of `family` to `out_dir` (config, safetensors, tokenizer, processor, template).

    `vision` / `text` override fields of VISION / TEXT (llava and idefics3 only), e.g. a larger image size for
    training experiments: `make_tiny_model("llava", out, vision={"image_size": 64})`. Without them, the defaults.
    """
    builders = {"llava": _llava, "idefics3": _idefics3, "owl2": _owl2}
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    overrides = {}
    if vision:
        overrides["vision"] = {**VISION, **vision}
    if text:
        overrides["text"] = {**TEXT, **text}
    model, processor = builders[family](tiny_tokenizer(), **overrides)
    model.save_pretrained(out, safe_serialization=True)
    for part in processor if isinstance(processor, tuple) else (processor,):
        part.save_pretrained(out)
    return out
