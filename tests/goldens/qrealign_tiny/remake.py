"""Remake the Q-ReAlign golden: a tiny Qwen3.5 checkpoint in the published layout, a handful of images and videos,
and the numbers the Q-ReAlign toolkit's own scorer gives for them (expected.json).

Run in a scratch environment, never inside qcurate (see README.md for the exact environment):

    PYTHONPATH=<transformers 5.2.0 --target dir>:<Q-ReAlign checkout> python remake.py OUT_DIR

Steps, each deterministic:
1. `model/`: a Qwen3_5ForConditionalGeneration from a small config (seeded random weights) with a byte-level BPE
   tokenizer whose special tokens sit at the real Qwen3.5 ids (ms-swift's qwen3_5 template hard-codes
   `<|image_pad|>` = 248056 and `<|video_pad|>` = 248057) and whose vocabulary holds every prompt word, alone and after
   a space, as one token (so " excellent" after " The quality of the image is" is one token, as in the real one).
   The processor files are the published ones' (patch 16, merge 2, temporal patch 2, mean/std 0.5).
2. `inputs/`: scikit-image photographs resized to several sizes and aspect ratios (one greyscale, a 64x48, a tall
   one), and two H.264 videos written with PyAV (5 frames 320x240; 30 frames 640x360, long side over 448).
3. The toolkit: `qalign.model.load(cfg)` (ms-swift `get_model_processor` + `get_template('qwen3_5')`,
   enable_thinking=False), `qalign.scorer.level_token_ids`, records built as `qalign.infer.run` builds them
   (`TaskPrompts.for_task(task).prompts[0]` and its stem), and `qalign.scorer.score_record`, all unmodified. The
   toolkit returns the score only; the five probabilities are read from the same forward pass (a forward hook on the
   model keeps its logits; the softmax over the level ids is recomputed exactly as score_record does it).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SEED = 0
LEVELS = ("excellent", "good", "fair", "poor", "bad")
# Qwen3.5's special tokens at their ids in the published tokenizer (vocab_size 248320)
SPECIAL_IDS = {
    "<|endoftext|>": 248044,
    "<|im_start|>": 248045,
    "<|im_end|>": 248046,
    "<|vision_start|>": 248053,
    "<|vision_end|>": 248054,
    "<|vision_pad|>": 248055,
    "<|image_pad|>": 248056,
    "<|video_pad|>": 248057,
    "<think>": 248068,
    "</think>": 248069,
}
VOCAB_SIZE = 248320
# every word the toolkit's prompts and stems (and qcurate's) use
WORDS = (
    """user assistant system Can can How What Could Rate Please you rate the The quality aesthetics aesthetic of this
image video picture photo is are was evaluate assess judge would your rating for think about on opinion What's
pleasing aesthetically appeal level overall its visual a an in and to as be do how well it I give
\n : ? . , ! ' -""".split()
    + ["\n", "\n\n"]
    + list(LEVELS)
)
# Qwen3.5's chat template, the part a scorer uses: ChatML turns, an image as
# <|vision_start|><|image_pad|><|vision_end|>, and an empty think block when thinking is off (a bare <think>
# otherwise: the model's default is to think).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n"
    "{% endif %}{% endif %}"
)
# Qwen3.5's published image / video processor settings (patch 16, 2x2 merge: 32 px per visual token)
PIXELS = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
IMAGE_SIZE = {"shortest_edge": 65536, "longest_edge": 16777216}
VIDEO_SIZE = {"shortest_edge": 4096, "longest_edge": 25165824}


# --------------------------------------------------------------------------- model
def build_tokenizer():
    import tokenizers
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Qwen's pre-tokenizer (a space belongs to the next word: ' good' is another token than 'good')
    pretokenize = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(tokenizers.Regex(pretokenize), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    corpus = [*WORDS, *(" " + w for w in WORDS)]
    trainer = trainers.BpeTrainer(
        vocab_size=4096, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus * 4, trainer)
    # the special tokens at their published ids: in the BPE vocabulary at those ids (the gap between the trained
    # vocabulary and them is never produced), and marked special as added tokens
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"].update(SPECIAL_IDS)
    spec["added_tokens"] = [
        dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for t, i in SPECIAL_IDS.items()
    ]
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )


def build_model(out: Path) -> None:
    from transformers import Qwen2VLImageProcessor, Qwen3_5Config, Qwen3_5ForConditionalGeneration

    tokenizer = build_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        # one linear-attention (gated delta net) layer and one full-attention layer, as the real model interleaves
        layer_types=["linear_attention", "full_attention"],
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=1,
        linear_num_value_heads=2,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        initializer_range=0.5,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [2, 1, 1],
            "mrope_interleaved": True,
        },
        pad_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=16,
        num_position_embeddings=64,
        initializer_range=0.5,
    )
    config = Qwen3_5Config(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(SEED)
    model = Qwen3_5ForConditionalGeneration(config).eval()
    # weights stored in bf16 as the published checkpoints are; config dtype float32 so that every loader (ms-swift
    # on CPU follows config.json's dtype) runs the same float32 numbers (a bf16 value is exact in float32)
    model.to(torch.bfloat16)
    model.config.dtype = torch.float32
    model.save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg["dtype"] = "float32"
    cfg["text_config"]["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    image = Qwen2VLImageProcessor(**PIXELS, size=IMAGE_SIZE)
    image.save_pretrained(out)
    pre = json.loads((out / "preprocessor_config.json").read_text())
    pre["processor_class"] = "Qwen3VLProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    video = {
        "video_processor_type": "Qwen3VLVideoProcessor",
        "processor_class": "Qwen3VLProcessor",
        "size": VIDEO_SIZE,
        "fps": 2,
        "min_frames": 4,
        "max_frames": 768,
        "do_sample_frames": True,
        **PIXELS,
    }
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2, sort_keys=True) + "\n")
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen3VLProcessor"}) + "\n")


# --------------------------------------------------------------------------- inputs
IMAGES = {
    # name: (scikit-image photo, width, height, greyscale)
    "astronaut_512x512.png": ("astronaut", 512, 512, False),
    "coffee_400x300.png": ("coffee", 400, 300, False),
    "chelsea_64x48.png": ("chelsea", 64, 48, False),
    "rocket_90x360.png": ("rocket", 90, 360, False),
    "camera_grey_200x130.png": ("camera", 200, 130, True),
    "coins_wide_500x96.png": ("coins", 500, 96, True),
}
VIDEOS = {
    # name: (frames, width, height)
    "short_5f_320x240.mp4": (5, 320, 240),
    "long_30f_640x360.mp4": (30, 640, 360),
}


def build_images(out: Path) -> None:
    import skimage.data

    for name, (photo, w, h, grey) in IMAGES.items():
        arr = getattr(skimage.data, photo)()
        img = Image.fromarray(arr)
        img = img.convert("L") if grey else img.convert("RGB")
        img.resize((w, h), Image.Resampling.LANCZOS).save(out / name)


def build_videos(out: Path) -> None:
    import av
    import skimage.data

    base = Image.fromarray(skimage.data.astronaut()).convert("RGB")
    for name, (n, w, h) in VIDEOS.items():
        with av.open(str(out / name), "w") as container:
            stream = container.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "18"}
            for i in range(n):
                # a pan over the photograph, brighter each frame: every frame differs
                box = (8 * i, 4 * i, 8 * i + 256, 4 * i + 144)
                frame = np.asarray(base.crop(box).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
                frame = np.clip(frame * (0.6 + 0.4 * i / max(n - 1, 1)), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


# --------------------------------------------------------------------------- the toolkit
def install_torchvision_stand_in() -> None:
    """torchvision does not load beside this CPU torch. qwen_vl_utils.vision_process imports it at module level, but
    the path the Q-ReAlign scorer takes (fetch_image: PIL open, to_rgb, smart_resize, PIL resize) never calls it. So a
    stand-in module satisfies the import and fails loudly on any use; transformers' own check (cached first) still
    sees no torchvision, so it takes its PIL/numpy image processor, the path the published processor's slow class is."""
    import enum
    import importlib.machinery
    import types

    from transformers.utils import import_utils

    assert not import_utils.is_torchvision_available()  # cached: transformers keeps its no-torchvision paths

    def refuse(module: str):
        def __getattr__(name: str):
            if name.startswith("__"):
                raise AttributeError(name)  # the import system's probes (__path__, ...)
            raise RuntimeError(f"torchvision stand-in: {module}.{name} is not available")

        return __getattr__

    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.0.0+stand-in"
    tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)  # datasets' find_spec check needs one
    tv.io = types.ModuleType("torchvision.io")
    tv.io.__getattr__ = refuse("torchvision.io")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
    tv.transforms.__getattr__ = refuse("torchvision.transforms")
    sys.modules.update({"torchvision": tv, "torchvision.io": tv.io, "torchvision.transforms": tv.transforms})


def install_video_processor_stand_in() -> None:
    """Qwen3VLProcessor cannot be built without its video processor, which needs torchvision (transformers 5.2 leaves
    every video processor class unnamed when torchvision is missing, and AutoProcessor then fails). The toolkit
    never calls it: it gives a video as 8 frames-as-images (`<image>` tags), and ms-swift's Qwen3VLTemplate sends
    images to `processor.image_processor` only. So a stand-in class of that name is registered; calling it fails."""
    import transformers
    from transformers.models.auto import video_processing_auto as vpa
    from transformers.utils import PushToHubMixin
    from transformers.utils.import_utils import DummyObject

    # the processor checks its video processor against transformers.BaseVideoProcessor, which without torchvision is
    # a dummy class that refuses every attribute; the stand-in is a subclass that answers only what loading asks
    class StandIn(DummyObject):
        def __getattribute__(cls, key):
            return type.__getattribute__(cls, key)

    class Qwen3VLVideoProcessor(transformers.BaseVideoProcessor, PushToHubMixin, metaclass=StandIn):
        def __init__(self, **kwargs):
            self.config = kwargs

        @classmethod
        def from_pretrained(cls, path, *args, **kwargs):
            return cls(**json.loads((Path(path) / "video_preprocessor_config.json").read_text()))

        def to_dict(self) -> dict:  # the processor's repr and logging serialise it
            return dict(self.config)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("video processor stand-in: the toolkit's path gives frames as images")

    for model_type, name in list(vpa.VIDEO_PROCESSOR_MAPPING_NAMES.items()):
        if name is None:  # the names transformers blanked for want of torchvision: none of them is looked up here
            vpa.VIDEO_PROCESSOR_MAPPING_NAMES[model_type] = ""
    vpa.VIDEO_PROCESSOR_MAPPING._extra_content["stand-in"] = Qwen3VLVideoProcessor


CASES = [
    # (case, task, media): the toolkit's tasks iqa (image quality), iaa (image aesthetics), vqa (video quality)
    *((f"iqa/{n}", "iqa", n) for n in IMAGES),
    *((f"iaa/{n}", "iaa", n) for n in IMAGES),
    *((f"vqa/{n}", "vqa", n) for n in VIDEOS),
]


def run_toolkit(model_dir: Path, inputs: Path) -> dict:
    from qalign import scorer
    from qalign.config import Config
    from qalign.levels import LevelScheme
    from qalign.model import load
    from qalign.prompts import TaskPrompts

    install_torchvision_stand_in()
    install_video_processor_stand_in()
    cfg = Config()  # the toolkit's defaults: qwen3_5 model type and template, thinking off, 8 frames, long side 448
    cfg.model.path = str(model_dir)
    scheme = LevelScheme.from_cfg(cfg.levels)
    model, template, tok = load(cfg)
    assert next(model.parameters()).dtype == torch.float32
    lvl_ids = scorer.level_token_ids(tok, scheme.names)

    seen = {}

    def keep(_module, _args, kwargs, output):
        seen.update(logits=output.logits, input_ids=kwargs["input_ids"], grid=kwargs.get("image_grid_thw"))

    model.register_forward_hook(keep, with_kwargs=True)
    cases = {}
    for case, task, name in CASES:
        tp = TaskPrompts.for_task(task)
        rec = {
            "modality": "video" if task == "vqa" else "image",
            "src": str(inputs / name),
            "prompt": tp.prompts[0],
            "stem": tp.stem,
        }  # as qalign.infer.run builds a record
        score = scorer.score_record(
            model,
            template,
            tok,
            lvl_ids,
            scheme.weights,
            rec,
            n_frames=cfg.data.frames_per_video,
            resize_long=cfg.data.resize_long,
        )
        # the same softmax score_record takes, on the logits of the forward pass it just ran
        probs = seen["logits"][0, -1][lvl_ids].float().softmax(-1).numpy()
        assert abs(float((probs * np.asarray(scheme.weights)).sum()) - score) < 1e-7
        cases[case] = {
            "task": task,
            "media": name,
            "prompt": rec["prompt"],
            "stem": rec["stem"],
            "probs": dict(zip(scheme.names, map(float, probs))),
            "score": score,
            # what the model was given, for diagnosis: sequence length and each image's (t, h, w) patches
            "input_tokens": int(seen["input_ids"].shape[-1]),
            "image_grid_thw": seen["grid"].tolist(),
        }
        print(f"{case:40s} {score:.6f} {np.round(probs, 4)}", file=sys.stderr)
    return {"levels": scheme.names, "weights": scheme.weights, "level_token_ids": lvl_ids, "cases": cases}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(out: str) -> None:
    root = Path(out)
    (root / "model").mkdir(parents=True, exist_ok=True)
    (root / "inputs").mkdir(parents=True, exist_ok=True)
    build_model(root / "model")
    build_images(root / "inputs")
    build_videos(root / "inputs")
    result = run_toolkit(root / "model", root / "inputs")
    result["files"] = {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "expected.json" and p.suffix != ".py" and p.name != "README.md"
    }
    (root / "expected.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
