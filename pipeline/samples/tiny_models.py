"""Tiny random models of each supported family, saved in the standard layout so they load like real checkpoints.

Weights cannot be downloaded here, so tests and the offline demo build a model of the same classes from a small config
(random weights, seeded) with a word-level tokenizer that holds the level words as single tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pipeline.qalign.levels import DEFAULT_LEVELS

FAMILIES = ("llava", "idefics3", "owl2", "qwen3_5", "qwen3_vl", "qwen2_5_vl", "llava_onevision", "instructblip")

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


# Qwen's special tokens and a ChatML template like the published ones (Qwen3.5's opens an empty think block when
# thinking is disabled, and a bare one otherwise: its default is to think).
QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
)
QWEN3_5_TEMPLATE = QWEN_TEMPLATE + (
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n"
    "{% endif %}{% endif %}"
)
QWEN_VL_TEMPLATE = QWEN_TEMPLATE + "{% endif %}"


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


def qwen_tokenizer(extra_words: tuple[str, ...] = DEFAULT_LEVELS.words) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like Qwen's (its pre-tokenizer; a space belongs to the next word, so 'Ġgood' is
    another token than 'good'), trained here on the prompt words so that each word, alone or after a space, is one
    token. It is a real BPE (vocabulary and merges), so transformers' own Qwen tokenizer classes rebuild it."""
    from tokenizers import decoders, normalizers, trainers
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    words = ["user", "assistant", "system", *WORDS, *extra_words]
    corpus = ["\n\n", *words, *(" " + w for w in words)]
    trainer = trainers.BpeTrainer(
        vocab_size=4096,
        special_tokens=QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


# 8 px patches merged 2x2: 16 px per visual token; at most 48x48 px, so a photograph gives a few tokens, and images of
# other shapes give other counts (as in the real models)
QWEN_PIXELS = dict(patch_size=8, merge_size=2, temporal_patch_size=2)
QWEN_SIZE = {"shortest_edge": 16 * 16, "longest_edge": 48 * 48}  # Qwen's size is in pixels: min and max area


@dataclass
class QwenProcessorFiles:
    """A Qwen VL processor's files as a checkpoint ships them. The processor object itself cannot be built here
    (its video processor needs torchvision), so its parts are saved one by one, and the video processor's config is
    written for machines that have torchvision (AutoProcessor loads the whole processor there)."""

    tokenizer: PreTrainedTokenizerFast
    processor_class: str
    video_processor_class: str
    chat_template: str

    def save_pretrained(self, out: Path) -> None:
        from transformers import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil(**QWEN_PIXELS, size=QWEN_SIZE).save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "chat_template.jinja").write_text(self.chat_template)
        (out / "processor_config.json").write_text(json.dumps({"processor_class": self.processor_class}))
        video = {"video_processor_type": self.video_processor_class, "size": QWEN_SIZE}
        (out / "video_preprocessor_config.json").write_text(json.dumps({**video, **QWEN_PIXELS}))


def _qwen_ids(tokenizer: PreTrainedTokenizerFast) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_text(tokenizer: PreTrainedTokenizerFast, **extra) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


QWEN_VISION = dict(hidden_size=32, intermediate_size=64, num_heads=2, patch_size=8, out_hidden_size=64)


def _qwen3_5(tokenizer: PreTrainedTokenizerFast):
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    text = _qwen_text(
        tokenizer,
        # one linear-attention (gated delta net) layer and one full-attention layer, as the real model interleaves
        layer_types=["linear_attention", "full_attention"],
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
    )
    vision = dict(QWEN_VISION, depth=2, num_position_embeddings=64)
    config = Qwen3_5Config(text_config=text, vision_config=vision, **_qwen_ids(tokenizer))
    model = Qwen3_5ForConditionalGeneration(config)
    return model, QwenProcessorFiles(tokenizer, "Qwen3VLProcessor", "Qwen3VLVideoProcessor", QWEN3_5_TEMPLATE)


def _qwen3_vl(tokenizer: PreTrainedTokenizerFast):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    text = _qwen_text(tokenizer, rope_parameters=rope)
    vision = dict(QWEN_VISION, depth=2, num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tokenizer))
    model = Qwen3VLForConditionalGeneration(config)
    return model, QwenProcessorFiles(tokenizer, "Qwen3VLProcessor", "Qwen3VLVideoProcessor", QWEN_VL_TEMPLATE)


def _qwen2_5_vl(tokenizer: PreTrainedTokenizerFast):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    text = _qwen_text(tokenizer, rope_parameters=rope)
    # window attention over 32 px windows in the first block, full attention in the second
    vision = dict(QWEN_VISION, depth=2, window_size=32, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tokenizer))
    model = Qwen2_5_VLForConditionalGeneration(config)
    return model, QwenProcessorFiles(tokenizer, "Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor", QWEN_VL_TEMPLATE)


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


# Modelled on llava-hf/llava-onevision-qwen2-*-ov-hf: images, then videos, then the text of each turn
ONEVISION_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% for c in m['content'] if c['type'] == 'image' %}<image>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'video' %}<video>{% endfor %}"
    "{% for c in m['content'] if c['type'] == 'text' %}\n{{ c['text'] }}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class ProcessorFiles:
    """Files of a processor that cannot be built here (its video processor needs torchvision), as it ships them."""

    files: dict[str, str]

    def save_pretrained(self, out: Path) -> None:
        for name, text in self.files.items():
            (out / name).write_text(text)


def _llava_onevision(tokenizer: PreTrainedTokenizerFast):
    """SigLIP + Qwen2 as the published OneVision checkpoints, at 32 px tiles; images of other shapes are cut into
    more tiles (anyres), so their token counts differ as in the real model."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)
    tile = VISION["image_size"]
    pinpoints = [[tile * h, tile * w] for h in (1, 2, 3) for w in (1, 2, 3)]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**VISION),
        text_config=Qwen2Config(**_qwen_text(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor_config = {
        "processor_class": "LlavaOnevisionProcessor",
        "image_token": "<image>",
        "video_token": "<video>",
        "num_image_tokens": (tile // VISION["patch_size"]) ** 2,  # SigLIP: no class token
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
    }
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": tile, "width": tile}}
    files = ProcessorFiles(
        {
            "chat_template.jinja": ONEVISION_TEMPLATE,
            "processor_config.json": json.dumps(processor_config, indent=2),
            "video_preprocessor_config.json": json.dumps(video, indent=2),
        }
    )
    return LlavaOnevisionForConditionalGeneration(config), (image_processor, tokenizer, files)


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


# InstructBLIP (Vicuna) is prompted with plain text; its processor puts the query tokens before everything.
INSTRUCTBLIP_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}\n{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _instructblip(tokenizer: PreTrainedTokenizerFast, vision: dict = VISION, text: dict = TEXT):
    from transformers import (
        BlipImageProcessorPil,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        LlamaConfig,
    )

    queries = 4  # the Q-Former's learned queries: the image's tokens in the language model
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_hidden_size=vision["hidden_size"],
        pad_token_id=0,
    )
    config = InstructBlipConfig(
        # (its default initializer_range, 1e-10, leaves a random tower blind to the pixels)
        vision_config=InstructBlipVisionConfig(**vision, initializer_range=0.02).to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=LlamaConfig(**text, vocab_size=len(tokenizer)).to_dict(),
        num_query_tokens=queries,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    size = vision["image_size"]
    image_processor = BlipImageProcessorPil(size={"height": size, "width": size})
    # the Q-Former reads the prompt too, with its own (BERT) tokenizer; the tiny one is a second word-level copy
    processor = InstructBlipProcessor(image_processor, tokenizer, tiny_tokenizer(), num_query_tokens=queries)
    processor.chat_template = INSTRUCTBLIP_TEMPLATE
    return InstructBlipForConditionalGeneration(config), processor


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
    builders = {
        "llava": _llava,
        "idefics3": _idefics3,
        "owl2": _owl2,
        "qwen3_5": _qwen3_5,
        "qwen3_vl": _qwen3_vl,
        "qwen2_5_vl": _qwen2_5_vl,
        "llava_onevision": _llava_onevision,
        "instructblip": _instructblip,
    }
    # each family builds its own tokenizer: Qwen's is byte-level, the others are LLaMA-like
    own_tokenizer = {f: qwen_tokenizer for f in ("qwen3_5", "qwen3_vl", "qwen2_5_vl", "llava_onevision")}
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    out = Path(out_dir)
    torch.manual_seed(seed)
    overrides = {}
    if vision:
        overrides["vision"] = {**VISION, **vision}
    if text:
        overrides["text"] = {**TEXT, **text}
    if overrides and family in own_tokenizer:
        raise ValueError("vision/text overrides are for llava and idefics3")
    model, processor = builders[family](own_tokenizer.get(family, tiny_tokenizer)(), **overrides)
    model.save_pretrained(out, safe_serialization=True)
    for part in processor if isinstance(processor, tuple) else (processor,):
        part.save_pretrained(out)
    return out
