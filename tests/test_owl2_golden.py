"""The native mPLUG-Owl2 port against reference outputs of the original Q-Align code (a golden folder).

Written over the folder's cases.json and the rules of its README, not over particular case names or sizes: the
folder is ../shared/golden/owl2_tiny next to the repository, or the one the env var OWL2_GOLDEN names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from pipeline.models.owl2 import (
    IMAGE_TOKEN_INDEX,
    MPLUGOwl2Config,
    MPLUGOwl2LlamaForCausalLM,
    expand2square,
    load_image_processor,
    preprocess_frames,
    tokenize_prompt,
)

DEFAULT_GOLDEN = Path(__file__).resolve().parents[2] / "shared/golden/owl2_tiny"
GOLDEN = Path(os.environ.get("OWL2_GOLDEN") or DEFAULT_GOLDEN)
ATOL = 1e-5  # the README's tolerance: a wrong norm epsilon moves the logits by 3-5e-5
IMPLS = ("sdpa", "eager")

if not (GOLDEN / "cases.json").is_file():  # a golden test fails without its golden: a skip would pass unseen
    pytest.fail(f"no golden folder at {GOLDEN} (set OWL2_GOLDEN)", pytrace=False)

META = json.loads((GOLDEN / "cases.json").read_text())
CASES = list(META["cases"])


@pytest.fixture(scope="module")
def gold() -> dict[str, torch.Tensor]:
    return load_file(GOLDEN / "golden.safetensors")


_MODELS: dict[str, MPLUGOwl2LlamaForCausalLM] = {}


def golden_model(impl: str) -> MPLUGOwl2LlamaForCausalLM:
    if impl not in _MODELS:
        model = MPLUGOwl2LlamaForCausalLM.from_pretrained(GOLDEN, attn_implementation=impl)
        _MODELS[impl] = model.eval().float()
    return _MODELS[impl]


def case_inputs(gold: dict, name: str) -> tuple[torch.Tensor, object, torch.Tensor | None]:
    """input_ids, images (a [B,3,H,W] tensor, or one [n,3,H,W] tensor per row for videos), attention_mask."""
    ids = gold[f"{name}/input_ids"]
    if f"{name}/pixel_values" in gold:
        images = gold[f"{name}/pixel_values"]
    else:
        images = [gold[f"{name}/pixel_values_list{j}"] for j in range(ids.shape[0])]
    return ids, images, gold.get(f"{name}/attention_mask")


def row_images(images: object, rows: list[int]) -> object:
    return images[rows] if isinstance(images, torch.Tensor) else [images[r] for r in rows]


def levels() -> tuple[list[int], torch.Tensor, torch.Tensor]:
    return (
        META["level_ids"],
        torch.tensor(META["weights_scorer_py"]),
        torch.tensor(META["weights_model_score_method"]),
    )


def scores_from_level_logits(level_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _, w_scorer, w_1to5 = levels()
    probs = level_logits.float().softmax(-1)
    return probs, probs @ w_scorer, probs @ w_1to5


def target_rows(name: str, batch: int) -> list[int]:
    skip = set(META["cases"][name].get("not_a_target", {}).get("rows", []))
    return [r for r in range(batch) if r not in skip]


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, atol: float = ATOL) -> None:
    diff = (actual.float() - expected.float()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


# ------------------------------------------------------------------------------------------------------------
# Golden cases
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", CASES)
def test_golden_case(gold: dict, name: str, impl: str) -> None:
    case, model = META["cases"][name], golden_model(impl)
    ids, images, mask = case_inputs(gold, name)
    level_ids, _, _ = levels()
    with torch.no_grad():
        embeds, merged_mask, modality = model.merge_inputs(ids, images, mask)
        logits = model(input_ids=ids, images=images, attention_mask=mask).logits
        hidden = model.last_hidden(ids, images, mask)
    lengths = merged_mask.sum(-1)
    true_last = gold.get(f"{name}/true_last_index")

    for r in target_rows(name, ids.shape[0]):
        n = int(lengths[r])
        # Merged layout: the real positions are those of the reference; padding (if any) comes after them.
        expected_len = int(true_last[r]) + 1 if true_last is not None else case["seq_len_after_merge"]
        assert n == expected_len, f"row {r}: {n} real merged positions, expected {expected_len}"
        assert torch.equal(modality[r, :n], gold[f"{name}/modality_indicators"][r, :n]), f"row {r} modality"
        if f"{name}/inputs_embeds" in gold:
            close(embeds[r, :n], gold[f"{name}/inputs_embeds"][r, :n], f"row {r} inputs_embeds")
        if f"{name}/logits" in gold:
            close(logits[r, :n], gold[f"{name}/logits"][r, :n], f"row {r} logits")

        if f"{name}/logits_true_last" in gold:
            # The stored logits_last/probs/scores are read at index -1 (padding for a short row): compare at
            # the true last position and derive the levels from the reference logits there.
            ref_last = gold[f"{name}/logits_true_last"][r]
            ref_probs, ref_scorer, ref_1to5 = scores_from_level_logits(ref_last[level_ids])
        else:
            ref_last = gold[f"{name}/logits_last"][r]
            ref_probs = gold[f"{name}/probs_levels"][r]
            ref_scorer, ref_1to5 = gold[f"{name}/score_scorer"][r], gold[f"{name}/score_1to5"][r]
            close(logits[r, n - 1, level_ids], gold[f"{name}/logits_levels"][r], f"row {r} logits_levels")
            assert case["score_scorer"][r] == pytest.approx(ref_scorer.item(), abs=ATOL)
        close(logits[r, n - 1], ref_last, f"row {r} logits at the last real position")

        # The scorer's path: last hidden state times the five level rows of lm_head only.
        level_logits = hidden[r] @ model.lm_head.weight[level_ids].T
        probs, scorer, one_to_five = scores_from_level_logits(level_logits)
        close(model.lm_head(hidden[r]), ref_last, f"row {r} lm_head(last_hidden)")
        close(probs, ref_probs, f"row {r} probs_levels")
        close(scorer, ref_scorer, f"row {r} score_scorer")
        close(one_to_five, ref_1to5, f"row {r} score_1to5")


def test_debug_intermediates(gold: dict) -> None:
    """Vision tower and abstractor outputs where the golden set stores them (they localise a failure)."""
    model = golden_model("eager")
    checked = 0
    for key in gold:
        name, _, tensor = key.partition("/")
        if tensor not in ("vision_last_hidden_state", "image_features"):
            continue
        _, images, _ = case_inputs(gold, name)
        pixels = images if isinstance(images, torch.Tensor) else torch.cat(images)
        with torch.no_grad():
            vision = model.model.vision_model(pixels)
            actual = vision if tensor == "vision_last_hidden_state" else model.model.visual_abstractor(vision)
        close(actual, gold[key], key)
        checked += 1
    if not checked:
        pytest.skip("no intermediate tensors stored")


@pytest.mark.parametrize("name", [n for n in CASES if len(META["cases"][n]["input_ids"]) > 1])
def test_batch_rows_equal_solo_runs(gold: dict, name: str) -> None:
    """Every row of a batch (videos of different frame counts, padded text, including the rows the reference
    gets wrong) equals its own solo run: padding is masked."""
    model = golden_model("sdpa")
    ids, images, mask = case_inputs(gold, name)
    with torch.no_grad():
        batch = model.last_hidden(ids, images, mask)
        for r in range(ids.shape[0]):
            keep = mask[r].bool() if mask is not None else torch.ones_like(ids[r], dtype=torch.bool)
            solo = model.last_hidden(ids[r : r + 1, keep], row_images(images, [r]), None)
            close(batch[r], solo[0], f"{name} row {r} vs its solo run")


def test_left_padding_equals_right_padding(gold: dict) -> None:
    padded = [n for n in CASES if f"{n}/attention_mask" in gold]
    if not padded:
        pytest.skip("no padded case")
    model = golden_model("sdpa")
    for name in padded:
        ids, images, mask = case_inputs(gold, name)
        left_ids, left_mask = torch.zeros_like(ids), torch.zeros_like(mask)
        for r in range(ids.shape[0]):
            real = ids[r][mask[r].bool()]
            left_ids[r, ids.shape[1] - len(real) :] = real
            left_mask[r, ids.shape[1] - len(real) :] = 1
        with torch.no_grad():
            right = model.last_hidden(ids, images, mask)
            close(model.last_hidden(left_ids, images, left_mask), right, f"{name}: left-padded input_ids")
            # Left-padded merged embeddings into forward: explicit key mask, positions count real tokens.
            embeds, merged_mask, modality = model.merge_inputs(ids, images, mask)
            pads = (1 - merged_mask).sum(-1).tolist()
            left = [
                torch.stack([torch.roll(t[r], p, dims=0) for r, p in enumerate(pads)])
                for t in (embeds, merged_mask, modality)
            ]
            logits = model(inputs_embeds=left[0], attention_mask=left[1], modality_indicators=left[2]).logits
            close(logits[:, -1], model.lm_head(right), f"{name}: left-padded inputs_embeds")


def test_bf16_sdpa_close_to_float32(gold: dict) -> None:
    model = MPLUGOwl2LlamaForCausalLM.from_pretrained(GOLDEN, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    name = max(CASES, key=lambda n: len(META["cases"][n]["input_ids"]))  # the largest batch
    ids, images, mask = case_inputs(gold, name)
    level_ids, _, _ = levels()
    with torch.no_grad():
        low = model.last_hidden(ids, images, mask)
        high = golden_model("sdpa").last_hidden(ids, images, mask)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    low_probs = (low @ model.lm_head.weight[level_ids].T).float().softmax(-1)
    high_probs = (high @ golden_model("sdpa").lm_head.weight[level_ids].T).softmax(-1)
    close(low, high, "bf16 vs float32 last hidden", atol=0.05 * high.abs().max().item())
    close(low_probs, high_probs, "bf16 vs float32 level probabilities", atol=0.02)


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


def golden_copy(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(GOLDEN / "config.json", folder / "config.json")
    save_file(state, folder / "model.safetensors")
    return folder


def test_state_dict_names_and_shapes_are_the_references() -> None:
    model = golden_model("sdpa")
    expected = [line.split("\t") for line in (GOLDEN / "keys.txt").read_text().splitlines() if line.strip()]
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(actual) == [k for k, _, _ in expected]
    assert all(actual[k] == json.loads(shape) for k, shape, _ in expected)
    assert isinstance(model.config, MPLUGOwl2Config) and model.config.model_type == "mplug_owl2"
    assert type(model).__name__ in model.config.architectures


def test_strict_loading_rejects_a_missing_key(tmp_path: Path) -> None:
    state = load_file(GOLDEN / "model.safetensors")
    dropped = sorted(k for k in state if "multiway.1" in k)[0]
    del state[dropped]
    with pytest.raises(ValueError, match=re.escape(dropped)):
        MPLUGOwl2LlamaForCausalLM.from_pretrained(golden_copy(tmp_path / "missing", state))


def test_strict_loading_rejects_an_unexpected_key(tmp_path: Path) -> None:
    state = load_file(GOLDEN / "model.safetensors")
    state["model.visual_abstractor.extra.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match=re.escape("model.visual_abstractor.extra.weight")):
        MPLUGOwl2LlamaForCausalLM.from_pretrained(golden_copy(tmp_path / "extra", state))


def test_strict_loading_rejects_a_wrong_shape(tmp_path: Path) -> None:
    state = load_file(GOLDEN / "model.safetensors")
    state["lm_head.weight"] = state["lm_head.weight"][:-1].clone()
    with pytest.raises(ValueError, match="lm_head.weight"):
        MPLUGOwl2LlamaForCausalLM.from_pretrained(golden_copy(tmp_path / "shape", state))


def test_only_safetensors_are_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(GOLDEN / "config.json", folder / "config.json")
    torch.save(load_file(GOLDEN / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(OSError):
        MPLUGOwl2LlamaForCausalLM.from_pretrained(folder)


def test_sharded_checkpoint_loads(tmp_path: Path) -> None:
    model = golden_model("sdpa")
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    reloaded = MPLUGOwl2LlamaForCausalLM.from_pretrained(tmp_path)
    for (key, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), key


# ------------------------------------------------------------------------------------------------------------
# Preprocessing and prompts
# ------------------------------------------------------------------------------------------------------------


def test_expand2square_centres_with_the_fill() -> None:
    fill = tuple(META["expand2square_fill"])
    wide = Image.new("RGB", (7, 2), (1, 2, 3))
    tall = Image.new("RGB", (2, 7), (1, 2, 3))
    for img, (x, y) in ((wide, (0, 2)), (tall, (2, 0))):  # offset = (long - short) // 2, rounded down
        square = expand2square(img, fill)
        assert square.size == (7, 7)
        mask = [[square.getpixel((i, j)) == (1, 2, 3) for i in range(7)] for j in range(7)]
        inside = [[x <= i < x + img.size[0] and y <= j < y + img.size[1] for i in range(7)] for j in range(7)]
        assert mask == inside
        assert square.getpixel((6, 6)) == fill
    same = Image.new("RGB", (3, 3))
    assert expand2square(same, fill) is same


def test_preprocessing_matches_golden_pixel_values(gold: dict) -> None:
    processor = load_image_processor(str(GOLDEN))
    fill = tuple(META["expand2square_fill"])
    assert tuple(int(x * 255) for x in processor.image_mean) == fill  # the reference derives the fill so
    pngs = sorted((GOLDEN / "images").glob("*.png"))
    assert pngs, "no images in the golden folder"
    ours = {p.name: preprocess_frames([Image.open(p)], processor, fill=fill)[0] for p in pngs}

    def best(row: torch.Tensor) -> tuple[str, float]:
        diffs = {n: (t - row).abs().max().item() for n, t in ours.items() if t.shape == row.shape}
        name = min(diffs, key=diffs.get)
        return name, diffs[name]

    pixel_keys = [k for k in gold if re.search(r"/pixel_values(_list\d+)?$", k)]
    assert pixel_keys
    for key in pixel_keys:
        for r, row in enumerate(gold[key]):
            name, diff = best(row)
            assert diff <= ATOL, f"{key}[{r}]: no image preprocesses to it (closest {name}, {diff:.3g})"
    # Where a case's note names its image, that image is the one that matches.
    for name, case in META["cases"].items():
        named = re.findall(r"(\w+\.png)", case.get("note", ""))
        if len(named) == 1 and f"{name}/pixel_values" in gold:
            close(ours[named[0]], gold[f"{name}/pixel_values"][0], f"{name}: {named[0]}")
    # A video's frames go through the same path, from PIL images or HxWx3 uint8 arrays alike.
    frames = [Image.open(p) for p in pngs[:2]]
    arrays = [np.asarray(f.convert("RGB")) for f in frames]
    assert torch.equal(preprocess_frames(frames, processor), preprocess_frames(arrays, processor))


class StubTokenizer:
    """The golden folder's tokenizer stub: regex split, fixed ids, BOS added on every call (as LLaMA's)."""

    def __init__(self, spec: dict) -> None:
        self.spec, self.bos_token_id = spec, spec["bos_token_id"]

    def __call__(self, text: str) -> SimpleNamespace:
        words = re.findall(self.spec["split_regex"], text)
        return SimpleNamespace(input_ids=[self.bos_token_id] + [self.spec["vocab"][w] for w in words])


def row_prompts(prompt: str, batch: int) -> list[str]:
    """A case's prompt, or its per-row prompts when written as `row0: ... | row1: ...`."""
    parts = re.split(r"(?:^| \| )row\d+: ", prompt)[1:] if prompt.startswith("row0: ") else []
    return parts if len(parts) == batch else [prompt] * batch


@pytest.mark.skipif(not (GOLDEN / "tokenizer_stub.json").is_file(), reason="no tokenizer stub")
def test_tokenize_prompt_matches_golden_input_ids(gold: dict) -> None:
    tokenizer = StubTokenizer(json.loads((GOLDEN / "tokenizer_stub.json").read_text()))
    for name, case in META["cases"].items():
        ids = gold[f"{name}/input_ids"]
        mask = gold.get(f"{name}/attention_mask")
        for r, prompt in enumerate(row_prompts(case["prompt"], ids.shape[0])):
            real = ids[r][mask[r].bool()] if mask is not None else ids[r]
            assert tokenize_prompt(prompt, tokenizer) == real.tolist(), f"{name} row {r}"
            assert real.tolist().count(IMAGE_TOKEN_INDEX) == 1
    # Level ids: the second id of each word's tokenization (the first is BOS).
    assert [tokenizer(w).input_ids[1] for w in META["level_words"]] == META["level_ids"]
