"""Retraining: the label schema, the Q-Align syllabus and objective (checked against the models' own losses and the
scorer's own logits), the three methods, and the Ray Train job end to end on the session cluster: versions,
promotion, idempotent reruns, and a killed driver resuming from its last checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from skimage import data

from pipeline import methods, models, registry
from pipeline.corpora.shards import write_manifest
from pipeline.infra import store
from pipeline.infra.media import Media, load_media
from pipeline.methods.llama_adapter import LlamaAdapter, decoder_attentions
from pipeline.methods.visual_prompt import VisualPrompt, image_geometry
from pipeline.qalign import recipes
from pipeline.qalign.syllabus import Syllabus, answer_sentence, level_target, questions
from pipeline.samples.corpus import load_photo, pan_zoom_frames, write_video
from pipeline.samples.synthetic import build_learning_set, write_label_shard
from pipeline.samples.tiny_models import make_tiny_model
from pipeline.scorers.lmm_model import Scorer, prompt_for
from pipeline.scoring.job import JobConfig
from pipeline.scoring.job import run as run_scoring
from pipeline.training.evaluation import correlations, predict, rate
from pipeline.training.lmm import ExampleBuilder, QAlignObjective, Recipe, Scaling, collate_examples, setup_method
from pipeline.training.retrain import Plan, RetrainConfig, decide, read_label_shards, retrain
from schemas import LABELS_V1, SchemaError, validate_labels

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["llava", "idefics3", "owl2", "qwen3_5", "instructblip"]
# the decoders the llama-adapter method supports: LLaMA-style ones, and Qwen3.5's hybrid (its full-attention layers)
ADAPTER_FAMILIES = ["llava", "idefics3", "owl2", "qwen3_5"]


# ------------------------------------------------------------------------------------------------------------
# Label shards


def labels_table(**overrides) -> pa.Table:
    rows = {
        "id": ["a", "b", "c"],
        "uri": ["/x/a.png", "/x/b.png", "/x/c.mp4"],
        "media_type": ["image", "image", "video"],
        "task": ["quality", "aesthetics", "quality"],
        "mos": [1.0, 55.0, 4.2],
        "scale_min": [1.0, 0.0, 1.0],
        "scale_max": [5.0, 100.0, 5.0],
        "split": ["train", "eval", "train"],
        "mos_std": [0.5, None, 0.3],
    }
    rows.update(overrides)
    return pa.table(rows)


def test_label_schema_accepts_valid_shards():
    validate_labels(labels_table(), "good.parquet")
    validate_labels(labels_table().drop(["mos_std"]), "no-std.parquet")  # mos_std is optional
    assert LABELS_V1.metadata[b"qcurate.schema"] == b"labels/v1"


@pytest.mark.parametrize(
    "overrides, column, problem",
    [
        ({"mos": ["1", "2", "3"]}, "mos", "type"),
        ({"split": ["train", "test", "train"]}, "split", "not one of"),
        ({"mos": [0.5, 55.0, 4.2]}, "mos", "outside"),
        ({"scale_max": [1.0, 100.0, 5.0]}, "scale_max", "scale_max <= scale_min"),
        ({"task": ["quality", "aesthetics", "aesthetics"]}, "task", "video"),
        ({"media_type": ["image", "audio", "video"]}, "media_type", "not one of"),
        ({"id": ["a", "a", "c"]}, "id", "duplicate"),
        ({"mos_std": [0.5, -1.0, 0.3]}, "mos_std", "negative"),
        ({"mos": [1.0, float("nan"), 4.2]}, "mos", "non-finite"),
        ({"id": ["a", "", "c"]}, "id", "empty or blank"),
        ({"id": ["a", "b", "c" * 1025]}, "id", "longer than 1024 bytes"),
        ({"score": [3.0, 4.0, 5.0]}, "score", r"\['score'\] have the names of score output columns"),
        ({"p_good": [0.1, 0.2, 0.3], "error": ["", "", ""]}, "p_good", r"\['p_good', 'error'\]"),
    ],
)
def test_label_schema_names_the_bad_column(overrides, column, problem):
    with pytest.raises(SchemaError, match=problem) as err:
        validate_labels(labels_table(**overrides), "bad.parquet")
    assert err.value.column == column and "bad.parquet" in str(err.value)


def test_unreadable_label_shards_are_named(tmp_path):
    good = write_label_shard(labels_table().to_pylist(), str(tmp_path / "labels" / "a" / "part-0.parquet"))
    data = Path(good).read_bytes()
    (tmp_path / "labels" / "b").mkdir()
    bad = tmp_path / "labels" / "b" / "part-0.parquet"
    for content in [b"id,uri\n1,/x.png\n", data[: len(data) // 2], b""]:  # CSV named .parquet, truncated, empty
        bad.write_bytes(content)
        with pytest.raises(SchemaError, match="not a readable Parquet file") as err:
            read_label_shards(str(tmp_path / "labels"))
        assert err.value.source == str(bad)


def test_label_schema_missing_column_and_custom_eval_split():
    with pytest.raises(SchemaError, match="missing") as err:
        validate_labels(labels_table().drop(["scale_max"]), "s")
    assert err.value.column == "scale_max"
    validate_labels(labels_table(split=["train", "test", "train"]), "s", splits=("train", "test"))


# ------------------------------------------------------------------------------------------------------------
# The syllabus


def test_level_targets_follow_eq1_and_the_rating_spread():
    for mos, level in [(5.0, 0), (4.21, 0), (4.2, 1), (3.0, 2), (1.81, 3), (1.8, 4), (1.0, 4)]:
        target = level_target(mos, 1.0, 5.0)
        assert target.tolist() == np.eye(5)[level].tolist(), mos
    soft = level_target(3.0, 1.0, 5.0, mos_std=0.5, soft=True)
    assert soft.sum() == pytest.approx(1.0) and soft.argmax() == 2
    assert soft[1] == pytest.approx(soft[3]) and soft[1] > 0.05  # symmetric spread to good and poor
    assert level_target(3.0, 1.0, 5.0, mos_std=1e-6, soft=True).tolist() == np.eye(5)[2].tolist()
    assert level_target(3.0, 1.0, 5.0, mos_std=None, soft=True).tolist() == np.eye(5)[2].tolist()
    wide = level_target(55.0, 0.0, 100.0, mos_std=15.0, soft=True)  # any scale
    assert wide.argmax() == 2 and wide[1] > wide[3]  # 55 lies above the middle of "fair"


def test_questions_start_with_the_scorers_prompt():
    for task, media in [("quality", "image"), ("aesthetics", "image"), ("quality", "video")]:
        assert questions(task, media)[0] == prompt_for(task, media).question
        assert len(set(questions(task, media))) == len(questions(task, media)) >= 4
    assert answer_sentence("quality", "video", "good") == "The quality of the video is good."


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request, tiny_models):
    path = tiny_models[request.param]
    family = models.family(path)
    processor = family.load_processor(path)
    # taught with the recipe the checkpoint is scored with (Qwen3.5: q-realign)
    return request.param, path, family, processor, Syllabus(family, processor, recipe=recipes.for_checkpoint(path))


def photo(name: str) -> list[np.ndarray]:
    return [getattr(data, name)()]


def examples_for(syllabus: Syllabus, with_video: bool = True) -> list[dict]:
    image_questions = questions("quality", "image", syllabus.recipe)  # the recipe's own, its scorer's first
    out = [
        syllabus.example(photo(name), "image", "quality", level_target(mos, 1, 5), image_questions[q])
        for q, (name, mos) in enumerate([("astronaut", 1.2), ("coffee", 4.6), ("chelsea", 3.1)])
    ]
    if not with_video:
        return out
    video = [data.astronaut()[:300, :300], data.astronaut()[100:400, 100:400]]
    video_question = questions("quality", "video", syllabus.recipe)[3]
    out.append(syllabus.example(video, "video", "quality", level_target(2.2, 1, 5), video_question))
    return out


def test_training_input_is_the_scoring_input_plus_the_answer(family_setup):
    name, path, family, processor, syllabus = family_setup
    tokenizer = family.tokenizer_of(processor)
    example = examples_for(syllabus, with_video=False)[1]  # coffee, MOS 4.6: "excellent"
    answer = tokenizer.convert_ids_to_tokens(example["input_ids"][-int(example["n_answer"]) :].tolist())
    # (SentencePiece marks a word after a space with ▁, byte-level BPE with Ġ)
    assert [t.lstrip("▁Ġ") for t in answer] == ["The", "quality", "of", "the", "image", "is", "excellent", "."]
    assert int(example["level_from_end"]) == 1
    # the scorer's own input for the reference question is exactly the training input up to the level word
    reference = syllabus.recipe.prompt("quality", "image")
    frames = syllabus.recipe.frames(photo("coffee"), "image", processor)  # the scorer's resize (Q-ReAlign's own)
    scoring = family.prepare(processor, frames, reference.question, reference.answer_prefix, syllabus.recipe)
    training = syllabus.example(photo("coffee"), "image", "quality", level_target(4.6, 1, 5), reference.question)
    n = len(scoring["input_ids"])
    assert np.array_equal(training["input_ids"][:n], scoring["input_ids"])
    assert training["input_ids"][n] == syllabus.level_ids("quality", "image")[0]
    np.testing.assert_array_equal(training["pixel_values"], scoring["pixel_values"])


def test_objective_equals_the_models_own_answer_only_loss(family_setup):
    name, path, family, processor, syllabus = family_setup
    model = family.load_model(path, torch.float32, "cpu")
    examples = examples_for(syllabus, with_video=name != "instructblip")  # InstructBLIP refuses videos
    image_major = family.image_major_keys(processor)
    inputs, meta = collate_examples(family, examples, image_major, family.tokenizer_of(processor).pad_token_id)
    objective = QAlignObjective(model, family, syllabus.level_ids("quality", "image"))
    with torch.no_grad():
        loss, level_logits = objective(inputs, meta)
        # the model's own loss with labels = input ids on the answer tokens only, -100 elsewhere
        labels = torch.full_like(inputs["input_ids"], -100)
        for b, e in enumerate(examples):
            n, k = len(e["input_ids"]), int(e["n_answer"])
            labels[b, n - k : n] = inputs["input_ids"][b, n - k : n]
        if name == "owl2":
            images = list(torch.split(inputs["pixel_values"], inputs["frame_counts"].tolist()))
            own = model(inputs["input_ids"], images, inputs["attention_mask"], labels=labels).loss
        else:
            own = model(**inputs, labels=labels).loss
    torch.testing.assert_close(loss, own, atol=1e-5, rtol=1e-5)
    # the level word is read where the scorer reads it: the logits equal the scorer's on the scoring input
    scorer = Scorer(path)
    media = Media(photo("astronaut"), "image", None, [0], 1)
    with torch.no_grad():
        solo_inputs, solo_meta = collate_examples(family, examples[:1], image_major, 0)
        _, solo_level = objective(solo_inputs, solo_meta)
    torch.testing.assert_close(solo_level, scorer.level_logits([scorer.preprocessor(media)]), atol=1e-4, rtol=1e-4)
    assert level_logits.shape == (len(examples), 5)


def test_soft_targets_change_only_the_level_term(tiny_models):
    path = tiny_models["llava"]
    family = models.family(path)
    processor = family.load_processor(path)
    syllabus = Syllabus(family, processor)
    model = family.load_model(path, torch.float32, "cpu")
    objective = QAlignObjective(model, family, syllabus.level_ids("quality", "image"))
    reference = prompt_for("quality", "image")
    example = syllabus.example(photo("rocket"), "image", "quality", level_target(3.0, 1, 5), reference.question)
    image_major = family.image_major_keys(processor)
    inputs, meta = collate_examples(family, [example], image_major, 0)
    with torch.no_grad():
        hard, logits = objective(inputs, meta)
        soft_target = torch.tensor([[0.0, 0.25, 0.5, 0.25, 0.0]])
        soft, _ = objective(inputs, {**meta, "target": soft_target})
        # the level word at L - 1 - level_from_end is predicted from the position before it
        hidden = objective.model.model(**inputs).last_hidden_state[0, -2 - int(example["level_from_end"])]
        logp = torch.log_softmax(objective.model.get_output_embeddings()(hidden), -1)[objective.level_ids]
    n = int(example["n_answer"])
    expected = hard + (-(soft_target[0] * logp).sum() - (-logp[2])) / n
    torch.testing.assert_close(soft, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Visual prompts


def test_visual_prompt_border_bounds_and_artifact(tiny_models, tmp_path):
    processor = models.family(tiny_models["llava"]).load_processor(tiny_models["llava"])
    side, mean, std = image_geometry(processor)
    prompt = VisualPrompt(side, 4, mean, std)
    assert sum(p.numel() for p in prompt.parameters()) == 3 * (side**2 - (side - 8) ** 2)
    pixels = (torch.rand(2, 3, side, side) - prompt.mean) / prompt.std  # normalised images, as processors make
    torch.testing.assert_close(prompt(pixels), pixels, atol=1e-5, rtol=0)  # untrained: the image is unchanged
    with torch.no_grad():
        for p in prompt.parameters():
            p.fill_(50.0)  # tanh-bounded: at most +1 in [0, 1] pixel space
    delta = prompt.delta()
    assert delta.max() <= 1.0 and delta[:, 4:-4, 4:-4].abs().max() == 0  # the inside is untouched
    out = prompt(pixels)
    torch.testing.assert_close(out[..., 4:-4, 4:-4], pixels[..., 4:-4, 4:-4], atol=1e-5, rtol=0)
    assert torch.allclose(out[..., 0, :], ((1 - prompt.mean) / prompt.std).squeeze(-1).expand(2, 3, side))
    prompt.save(str(tmp_path))
    loaded = VisualPrompt.load(str(tmp_path))
    torch.testing.assert_close(loaded(pixels), out)
    assert json.loads((tmp_path / "visual_prompt.json").read_text())["parameters"] == 3 * (side**2 - (side - 8) ** 2)
    assert VisualPrompt.load(str(tmp_path / "none")) is None
    with pytest.raises(ValueError, match="does not fit"):
        VisualPrompt(side, side // 2, mean, std)


def test_visual_prompt_needs_a_fixed_square_processor(tiny_models):
    owl2 = models.family(tiny_models["owl2"]).load_processor(tiny_models["owl2"])
    assert image_geometry(owl2)[0] == 56  # the Q-Align models' CLIP input (448 in the real checkpoints)
    processor = models.family(tiny_models["idefics3"]).load_processor(tiny_models["idefics3"])
    with pytest.raises(ValueError, match="fixed-size square"):
        image_geometry(processor)


# ------------------------------------------------------------------------------------------------------------
# LLaMA-Adapter: zero-init gated prompts in the top layers of the language model


def adapted_scorer(path: str, adapter_len: int = 3, adapter_layers: int = 1) -> tuple[Scorer, LlamaAdapter]:
    scorer = Scorer(path)
    torch.manual_seed(0)
    adapter = LlamaAdapter.for_model(scorer.model, adapter_len, adapter_layers).attach_to(scorer.model)
    return scorer, adapter


@pytest.mark.parametrize("family_name", ADAPTER_FAMILIES)
def test_llama_adapter_at_init_is_exactly_the_base_model(family_name, tiny_models):
    scorer, adapter = adapted_scorer(tiny_models[family_name], adapter_layers=2)
    media = [Media(photo("astronaut"), "image", None, [0], 1), Media(photo("coffee"), "image", None, [0], 1)]
    prepared = [scorer.preprocessor(m) for m in media]
    adapted = scorer.level_logits(prepared)
    adapter.detach()
    base = scorer.level_logits(prepared)
    assert torch.equal(adapted, base)  # zero gates: not close, equal
    with torch.no_grad():
        adapter.gates.fill_(0.5)  # the hooks are live: open gates change the level logits
    adapter.attach_to(scorer.model)
    assert (scorer.level_logits(prepared) - base).abs().max() > 1e-4


def test_llama_adapter_adds_gated_prompt_values_before_o_proj_with_kv_heads_repeated(tmp_path):
    """With one prompt the softmax over it is 1, so every position gets exactly gate[h] * v_proj(P)[kv head of h]
    added to o_proj's input: the value path, the per-head gates and the GQA head mapping, checked from outside."""
    path = str(make_tiny_model("llava", tmp_path / "gqa", text={"num_key_value_heads": 2}))
    scorer, adapter = adapted_scorer(path, adapter_len=1, adapter_layers=1)
    assert adapter.gates.shape == (1, 4)  # one gate per query head, not per kv head
    attention = decoder_attentions(scorer.model)[-1]
    seen = []
    attention.o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))  # after the adapter's
    prepared = [scorer.preprocessor(Media(photo("rocket"), "image", None, [0], 1))]
    with torch.no_grad():
        adapter.gates.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.25]]))
        opened = scorer.level_logits(prepared)
        adapter.detach()
        closed = scorer.level_logits(prepared)
        values = attention.v_proj(adapter.prompts[0, 0]).view(2, 16)  # [kv heads, head_dim]
    expected = torch.cat([adapter.gates[0, h] * values[h // 2] for h in range(4)])  # heads 0, 1 share kv head 0
    torch.testing.assert_close(seen[0] - seen[1], expected.expand_as(seen[0]), atol=1e-5, rtol=1e-5)
    assert (opened - closed).abs().max() > 1e-4


def test_llama_adapter_scores_rotated_queries_against_unrotated_prompt_keys(tiny_models):
    """The choice the original LLaMA-Adapter code makes (pipeline.methods.llama_adapter): the layer's queries after
    rotary, the prompts' keys without; computed here from transformers' own rotary functions."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    scorer, adapter = adapted_scorer(tiny_models["llava"], adapter_len=2, adapter_layers=1)
    attention = decoder_attentions(scorer.model)[-1]
    queries, seen = [], []
    attention.q_proj.register_forward_hook(lambda module, args, out: queries.append(out))
    attention.o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    prepared = [scorer.preprocessor(Media(photo("coffee"), "image", None, [0], 1))]
    with torch.no_grad():
        adapter.gates.fill_(1.0)
        scorer.level_logits(prepared)
        adapter.detach()
        scorer.level_logits(prepared)
        length = queries[0].shape[1]
        q = queries[0].view(1, length, 4, 16).transpose(1, 2)
        cos, sin = scorer.model.model.language_model.rotary_emb(q, torch.arange(length)[None])
        k = attention.k_proj(adapter.prompts[0]).view(1, 2, 4, 16).transpose(1, 2)
        v = attention.v_proj(adapter.prompts[0]).view(1, 2, 4, 16).transpose(1, 2)
        rotated, _ = apply_rotary_pos_emb(q, q, cos, sin)
        expected = torch.softmax(rotated @ k.transpose(-1, -2) / 4.0, dim=-1) @ v  # 1/sqrt(head_dim 16)
    torch.testing.assert_close(seen[0] - seen[1], expected.transpose(1, 2).reshape(1, length, 64), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family_name", ADAPTER_FAMILIES)
def test_llama_adapter_training_moves_only_prompts_and_gates(family_name, tiny_models, capsys):
    path = tiny_models[family_name]
    family = models.family(path)
    processor = family.load_processor(path)
    syllabus = Syllabus(family, processor)
    model = family.load_model(path, torch.float32, "cpu")
    recipe = Recipe(method="llama-adapter", lr=1e-2, options={"adapter_len": 3, "adapter_layers": 1})
    trainable = setup_method(model, family, processor, syllabus.level_ids("quality", "image"), recipe, path)
    adapter = trainable.objective.addition
    assert adapter.layers == [len(decoder_attentions(model)) - 1]  # the top layer
    hidden, heads = adapter.prompts.shape[-1], adapter.gates.shape[-1]
    assert trainable.trainable_parameters() == 3 * hidden + heads  # K x C prompts + a gate per head, one layer
    before = {n: p.detach().clone() for n, p in trainable.objective.named_parameters()}
    image_major = family.image_major_keys(processor)
    inputs, meta = collate_examples(family, examples_for(syllabus)[:2], image_major, 0)
    optimizer = torch.optim.Adam([p for p in trainable.objective.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # the first step opens the gates (the prompts get no gradient through closed gates)
        loss, _ = trainable.objective(inputs, meta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = {n for n, p in trainable.objective.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {"addition.prompts", "addition.gates"}  # the vision tower and the LLM stay as they were


def test_llama_adapter_on_qwen3_5_matches_a_computation_by_hand(tiny_models):
    """Qwen3.5's full-attention layer (pipeline.methods.llama_adapter): q_proj gives per head [query | output gate];
    the query is q_norm'ed and rotated (partial, multimodal rotary: the (cos, sin) the layer is handed), the prompts'
    keys go through k_proj and k_norm (no rotary), their values through v_proj, GQA maps heads 0, 1 to kv head 0; the
    gated prompt attention is added before the layer's sigmoid output gate. Rebuilt here from the layer's modules."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

    scorer, adapter = adapted_scorer(tiny_models["qwen3_5"], adapter_len=3, adapter_layers=1)
    attention = decoder_attentions(scorer.model)[-1]
    assert attention.head_dim == 16 and attention.config.num_key_value_heads == 2  # 4 query heads, 2 kv heads
    inputs, seen = [], []
    attention.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(kwargs), with_kwargs=True)
    attention.o_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0]))  # after the adapter's
    prepared = [scorer.preprocessor(Media(photo("coffee"), "image", None, [0], 1))]
    gates = torch.tensor([0.5, -1.0, 2.0, 0.25])
    with torch.no_grad():
        attention.q_norm.weight.normal_()  # the norms' weights matter too (they start at 0: a scale of 1)
        attention.k_norm.weight.normal_()
        adapter.gates.copy_(gates[None])
        opened = scorer.level_logits(prepared)
        adapter.detach()
        closed = scorer.level_logits(prepared)
        hidden, (cos, sin) = inputs[0]["hidden_states"], inputs[0]["position_embeddings"]
        assert cos.shape[-1] == 8  # partial rotary: half of each head's 16 dims
        batch, length, _ = hidden.shape
        projected = attention.q_proj(hidden).view(batch, length, 4, 32)
        query, output_gate = projected[..., :16], projected[..., 16:].reshape(batch, length, 64)
        query = attention.q_norm(query).transpose(1, 2)  # [B, H, L, D]
        query, _ = apply_rotary_pos_emb(query, query, cos, sin)
        prompts = adapter.prompts[0]
        keys = attention.k_norm(attention.k_proj(prompts).view(3, 2, 16))  # [K, kv heads, D]
        values = attention.v_proj(prompts).view(3, 2, 16)
        per_head = []
        for h in range(4):
            weights = torch.softmax(query[:, h] @ keys[:, h // 2].T / 4.0, dim=-1)  # 1/sqrt(head_dim 16)
            per_head.append(gates[h] * weights @ values[:, h // 2])  # [B, L, D]
        expected = torch.cat(per_head, dim=-1) * torch.sigmoid(output_gate)
    torch.testing.assert_close(seen[0] - seen[1], expected, atol=1e-5, rtol=1e-5)
    assert (opened - closed).abs().max() > 1e-4


def test_llama_adapter_on_qwen3_5_adapts_only_full_attention_layers():
    """Qwen3.5 interleaves Gated DeltaNet (linear) layers with full-attention ones: the top L layers are the top L
    full-attention layers, counted among those; asking for more takes them all (clamped, as for LLaMA)."""
    from transformers import Qwen3_5TextConfig
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5TextModel

    kinds = ["linear_attention", "full_attention", "linear_attention", "linear_attention", "full_attention"] * 2
    config = Qwen3_5TextConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(kinds),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        layer_types=kinds,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
    )
    torch.manual_seed(0)
    model = Qwen3_5TextModel(config).eval()
    full = [layer.self_attn for layer, kind in zip(model.layers, kinds, strict=True) if kind == "full_attention"]
    assert decoder_attentions(model) == full  # decoder layers 1, 4, 6, 9
    top = LlamaAdapter.for_model(model, 3, 2)
    assert top.layers == [2, 3]  # the top 2 full-attention layers: decoder layers 6 and 9
    assert sum(p.numel() for p in top.parameters()) == 2 * (3 * 64 + 4)  # K x C prompts + a gate per head, per layer
    adapter = LlamaAdapter.for_model(model, 3, 12)  # more than the 4 full-attention layers: all of them
    assert adapter.layers == [0, 1, 2, 3] and adapter.prompts.shape == (4, 3, 64) and adapter.gates.shape == (4, 4)
    assert sum(p.numel() for p in adapter.parameters()) == 4 * (3 * 64 + 4)
    adapter.attach_to(model)
    hooked = {name for name, m in model.named_modules() if m._forward_pre_hooks or m._forward_hooks}
    assert {name.split(".")[1] for name in hooked} == {"1", "4", "6", "9"}  # no linear-attention layer is touched
    ids = torch.randint(0, 32, (2, 7))
    with torch.no_grad():
        adapted = model(input_ids=ids).last_hidden_state
        adapter.detach()
        base = model(input_ids=ids).last_hidden_state
        assert torch.equal(adapted, base)  # zero gates
        adapter.gates.fill_(1.0)
        adapter.attach_to(model)
        assert (model(input_ids=ids).last_hidden_state - base).abs().max() > 1e-4


@pytest.mark.parametrize("family_name", ["owl2", "qwen3_5"])
def test_llama_adapter_artifact_round_trip_and_scorer(family_name, tiny_models, tmp_path):
    path = tiny_models[family_name]
    scorer, adapter = adapted_scorer(path, adapter_len=2, adapter_layers=2)
    with torch.no_grad():
        adapter.gates.normal_()  # as if trained
    media = [scorer.preprocessor(Media(photo("chelsea"), "image", None, [0], 1))]
    trained = scorer.level_logits(media)
    version = tmp_path / "version"
    copy_model_files(path, version, weights=True)
    adapter.save(str(version))
    config = json.loads((version / "llama_adapter.json").read_text())
    layers = {"owl2": [0, 1], "qwen3_5": [0]}[family_name]  # Qwen3.5's tiny model has one full-attention layer
    assert config["layers"] == layers and config["adapter_len"] == 2 and config["num_heads"] == 4
    assert config["parameters"] == len(layers) * (2 * config["hidden_size"] + 4)
    loaded = Scorer(str(version))  # what the scoring job runs for this folder
    assert [type(a) for a in loaded.additions] == [LlamaAdapter]
    torch.testing.assert_close(loaded.level_logits(media), trained)
    assert (trained - Scorer(path).level_logits(media)).abs().max() > 1e-4
    assert Scorer(path).additions == []
    with pytest.raises(ValueError, match="llama-adapter version"):  # another method would drop the adapter
        setup_method(loaded.model, models.family(path), None, [0], Recipe(method="lora"), str(version))


# ------------------------------------------------------------------------------------------------------------
# The methods seam

NORM_ONLY = """
from pipeline.methods import Attached, Method, Option


class NormOnly(Method):
    name = "norm-only"
    default_lr = 1e-3
    options = (Option("norm_pattern", str, "norm", "the weights whose names hold this train"),)

    def attach(self, model, processor, options, parent):
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            if options["norm_pattern"] in name:
                param.requires_grad_(True)
        return Attached(export=model.save_pretrained)


METHOD = NormOnly()
"""


@pytest.fixture
def fifth_method(tmp_path, monkeypatch):
    """A fifth method as one new file, on the methods package's search path for this test only."""
    (tmp_path / "norm_only.py").write_text(NORM_ONLY)
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    methods._registry.cache_clear()
    yield
    methods._registry.cache_clear()
    sys.modules.pop("pipeline.methods.norm_only", None)


def test_the_four_methods_are_the_packages_modules():
    assert methods.names() == ("full", "llama-adapter", "lora", "visual-prompt")
    assert methods.get("lora").default_lr == 2e-4 and methods.get("llama-adapter").artifacts
    assert Recipe(method="lora").options == {"lora_r": 128, "lora_alpha": None}  # only its own, defaults filled
    with pytest.raises(ValueError, match="has no option"):
        Recipe(method="full", options={"lora_r": 8})
    with pytest.raises(ValueError, match="unknown method"):
        Recipe(method="prefix-tuning")


def test_a_fifth_method_is_one_new_file(fifth_method, tiny_models):
    """Its name, options (CLI flags), learning rate and attachment come from the file alone."""
    from pipeline import cli

    assert "norm-only" in methods.names()
    common = ["--labels", "l", "--base-model", "b", "--registry", "r", "--name", "n"]
    parser = cli.parser_for("retrain")  # the parser `jobs/retrain.py` and `qcurate retrain` share
    args = parser.parse_args([*common, "--method", "norm-only", "--norm-pattern", "post_attention_layernorm"])
    config = cli.command("retrain").configure(args, parser)
    assert config.recipe.options == {"norm_pattern": "post_attention_layernorm"}
    assert config.recipe.learning_rate == 1e-3
    path = tiny_models["llava"]
    family = models.family(path)
    model = family.load_model(path, torch.float32, "cpu")
    trainable = setup_method(model, family, None, [0], config.recipe, path)
    trained = [n for n, p in trainable.objective.named_parameters() if p.requires_grad]
    assert trained and all("post_attention_layernorm" in n for n in trained)


# ------------------------------------------------------------------------------------------------------------
# Methods: each one lowers the loss and raises the training SRCC, and exports what the scorer then uses


@pytest.fixture(scope="module")
def small_train_rows(tmp_path_factory) -> list[dict]:
    """Nine 32 px training items of one photograph: pristine, and noise and pixelation at levels 1..4."""
    rows = build_learning_set(
        str(tmp_path_factory.mktemp("media")),
        train_photos=("astronaut",),
        eval_photos=("coffee",),
        train_sides=(32,),
        eval_crops=1,
    )
    return [r for r in rows if r["split"] == "train" and r["distortion"] in ("none", "noise", "pixelate")]


def test_examples_are_reproducible_from_seed_epoch_and_item(tiny_models, label_media):
    """Augmentation and questions draw from (run seed, epoch, item id): the same in every build, wherever it runs."""
    rows = [r for r in label_media if r["split"] == "train"][:4]
    batch = {k: np.array([r.get(k) for r in rows], dtype=object) for k in [*LABELS_V1.names, "mos_std"]}
    reverse = {k: v[::-1] for k, v in batch.items()}  # another block layout of the same items

    def build(seed: int, epoch: int, block: dict) -> list[bytes]:
        builder = ExampleBuilder(tiny_models["llava"], crop=24, hflip=True, views=2, seed=seed)
        examples = builder(block, epoch)["example"]
        assert len(examples) == 2 * len(rows) and all(pickle.loads(e)["pixel_values"].size for e in examples)
        return sorted(examples)  # the examples, whatever order the block's mixing gave them

    first = build(0, 3, batch)
    assert build(0, 3, batch) == first  # a second build of the same epoch: identical examples
    assert build(0, 3, reverse) == first  # each item's draws are its own, not its place in the block
    assert build(0, 4, batch) != first  # a new epoch: new crops, flips and questions
    assert build(1, 3, batch) != first  # another run seed


def training_batch(path: str, rows: list[dict]):
    family = models.family(path)
    processor = family.load_processor(path)
    syllabus = Syllabus(family, processor)
    examples = [
        syllabus.example(load_media(r["uri"], "image").frames, "image", "quality", level_target(r["mos"], 1, 5), q)
        for r in rows
        for q in questions("quality", "image")[:2]
    ]
    image_major = family.image_major_keys(processor)
    return family, processor, syllabus, collate_examples(family, examples, image_major, 0)


def copy_model_files(source: str, target: Path, weights: bool) -> None:
    target.mkdir(exist_ok=True)
    for f in os.listdir(source):
        if weights or (not f.endswith(".safetensors") and f != "config.json"):
            (target / f).write_bytes((Path(source) / f).read_bytes())


@pytest.fixture(scope="module")
def started_llava(tiny_models, small_train_rows, tmp_path_factory) -> str:
    """A tiny LLaVA fully trained for a few steps: it answers in the syllabus's sentence and has begun to rate.

    LoRA and visual prompts adapt a model that already sees the image: a random tiny one gives nearly the same
    logits for any image, and a border on its pixels then has nothing to steer.
    """
    path = tiny_models["llava"]
    family, processor, syllabus, (inputs, meta) = training_batch(path, small_train_rows)
    model = family.load_model(path, torch.float32, "cpu")
    objective = QAlignObjective(model, family, syllabus.level_ids("quality", "image"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    for _ in range(15):
        loss, _ = objective(inputs, meta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("started-llava")
    copy_model_files(path, out, weights=False)
    model.save_pretrained(out)
    return str(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, lr, steps, options, addition, srcc_bar",
    [
        ("lora", 5e-3, 100, {"lora_r": 8}, None, 0.8),
        ("visual-prompt", 0.1, 100, {"prompt_pixels": 4}, VisualPrompt, 0.8),
        # Prompts steer only through attention from the text side: on a 2-layer random model they move the scores
        # (the learning benchmark measures what they learn); here they must lower the loss and change the scores.
        ("llama-adapter", 0.1, 100, {"adapter_len": 4, "adapter_layers": 2}, LlamaAdapter, None),
    ],
)
def test_methods_lower_the_loss_and_raise_training_srcc(
    method, lr, steps, options, addition, srcc_bar, started_llava, small_train_rows, tmp_path
):
    path = started_llava
    family, processor, syllabus, (inputs, meta) = training_batch(path, small_train_rows)
    model = family.load_model(path, torch.float32, "cpu")
    recipe = Recipe(method=method, lr=lr, options=options)
    torch.manual_seed(0)
    trainable = setup_method(model, family, processor, syllabus.level_ids("quality", "image"), recipe, path)
    trained = [n for n, p in trainable.objective.named_parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in trainable.objective.model.named_parameters() if not p.requires_grad}
    assert trained and all(("lora_" in n) if method == "lora" else n.startswith("addition.") for n in trained)
    params = [p for p in trainable.objective.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = trainable.objective(inputs, meta)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, losses
    for n, p in trainable.objective.model.named_parameters():
        if n in frozen and "lora_" not in n:
            assert torch.equal(p, frozen[n]), f"{n} moved although frozen"

    # exported as a version folder holds it, then scored through the scoring path
    out = tmp_path / "version"
    copy_model_files(path, out, weights=addition is not None)
    trainable.export(str(out))
    if addition is not None:
        # the scorer (and so the scoring job) applies it; the artifact is small beside the frozen weights
        assert [type(a) for a in Scorer(str(out)).additions] == [addition]
        artifact = next(f for f in out.iterdir() if f.name in methods.get(method).artifacts and f.suffix != ".json")
        assert artifact.stat().st_size < 10_000
    else:
        assert "lora" not in (out / "config.json").read_text()  # merged: a plain model for the scorer
    mos = np.array([r["mos"] for r in small_train_rows])
    base_scores, scores = predict(path, small_train_rows), predict(str(out), small_train_rows)
    before, after = correlations(base_scores, mos)["srcc"], correlations(scores, mos)["srcc"]
    print(f"{method}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, training SRCC {before:.3f} -> {after:.3f}")
    assert np.abs(scores - base_scores).max() > 1e-3  # the trained result is what the scorer runs
    if srcc_bar is not None:
        assert after > before + 0.2 and after > srcc_bar, (before, after)


def test_level_loss_is_minus_log_p_of_the_mos_level(tiny_models, small_train_rows):
    """rate()'s level loss: -log of the probability the scorer gives the level of the row's MOS; NaN when the item
    cannot be loaded. Distortion level k has MOS 5 - k, i.e. the k-th level word from the best (by hand, Eq. 1)."""
    gone = {**small_train_rows[0], "id": "gone", "uri": "/nonexistent/gone.png"}
    rows = [*small_train_rows[:4], gone]
    scores, losses, score_range = rate(tiny_models["llava"], rows)
    assert score_range == (1.0, 5.0)  # the generic recipe's scale
    assert np.isnan(scores[-1]) and np.isnan(losses[-1])
    scorer = Scorer(tiny_models["llava"])
    for row, loss in zip(rows[:4], losses):
        probs = scorer.probabilities([scorer.preprocessor(load_media(row["uri"], "image"))])[0]
        assert loss == pytest.approx(-np.log(probs[row["level"]]), rel=1e-6), row["id"]
    assert len({row["level"] for row in rows[:4]}) > 1  # several levels, so a misread index shows


def test_correlations():
    assert correlations(np.array([1, 2, 3, 4.0]), np.array([2, 4, 6, 8.5]))["srcc"] == pytest.approx(1.0)
    out = correlations(np.array([1, np.nan, 3, 2.0]), np.array([1, 2, 3, 4.0]))
    assert out["n"] == 3 and out["failed"] == 1 and out["srcc"] == pytest.approx(0.5)
    assert correlations(np.array([3, 3, 3.0]), np.array([1, 2, 3.0]))["srcc"] == 0.0  # constant: no ranking
    near_ties = np.array([2.9991, 2.9992, 2.9994])  # float noise of an untrained model, not a ranking
    assert correlations(near_ties, np.array([1, 2, 3.0]))["srcc"] == 0.0
    # ties are judged on the scorer's own range: 0.0003 apart is a ranking on 0..1 (Q-ReAlign: 0.0012 on 1..5), a
    # tie on 1..5
    unit = np.array([0.1, 0.1003, 0.1006])
    assert correlations(unit, np.array([1, 2, 3.0]), (0.0, 1.0))["srcc"] == pytest.approx(1.0)
    assert correlations(unit, np.array([1, 2, 3.0]))["srcc"] < 0.9


def test_promotion_needs_a_better_held_out_srcc():
    plan = Plan("e", {}, {}, "v0003", [], [], [], "run-x", "")
    better = decide({"held_out": {"n": 9, "srcc": 0.61}}, {"held_out": {"n": 9, "srcc": 0.6}}, "v0003", plan, "v0003")
    assert better["promoted"] and "better" in better["reason"]
    same = decide({"held_out": {"n": 9, "srcc": 0.6}}, {"held_out": {"n": 9, "srcc": 0.6}}, "v0003", plan, "v0003")
    assert not same["promoted"] and "not better" in same["reason"]
    moved = decide({"held_out": {"n": 9, "srcc": 0.9}}, {"held_out": {"n": 9, "srcc": 0.1}}, "v0003", plan, "v0004")
    assert not moved["promoted"] and "moved" in moved["reason"]
    empty = decide({"held_out": None}, {"held_out": None}, "v0003", plan, "v0003")
    assert not empty["promoted"] and "no held-out" in empty["reason"]


# ------------------------------------------------------------------------------------------------------------
# The job on the session's Ray cluster


@pytest.fixture(scope="module")
def label_media(tmp_path_factory) -> list[dict]:
    """A small synthetic MOS set: two training photographs and one held-out photograph (whole), and a training video."""
    root = tmp_path_factory.mktemp("labels-media")
    rows = build_learning_set(
        str(root), train_photos=("astronaut", "chelsea"), eval_photos=("coffee",), train_sides=(48,), eval_crops=1
    )
    video = str(root / "train-rocket-video.mp4")
    write_video(video, pan_zoom_frames(load_photo("rocket"), n_frames=4), fps=2)  # 2 frames at 1 fps
    rows.append({**rows[0], "id": "train-rocket-video", "uri": video, "media_type": "video", "source": "rocket"})
    return rows


def run_job(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "retrain.py"), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_cli_refuses_bad_settings_before_doing_anything(tmp_path):
    """The configs check their values; the CLI turns a bad one into a usage error (exit 2), naming it."""
    common = ["--labels", str(tmp_path), "--base-model", str(tmp_path), "--registry", str(tmp_path), "--name", "n"]
    for extra, message in [
        (["--batch-size", "2", "--num-workers", "4"], "at least the number of workers"),
        (["--views", "0"], "views must be >= 1"),
        (["--method", "llama-adapter", "--lora-r", "8"], "--lora-r is an option of --method lora"),
        (["--method", "llama-adapter", "--adapter-len", "0"], "adapter_len must be >= 1"),
    ]:
        proc = run_job([*common, *extra], dict(os.environ))
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 2 and message in output, output


def wait_for_new_checkpoint(fs, runs: str, proc: subprocess.Popen, seen: str = "", timeout: float = 240) -> str:
    """Until Ray Train registers a checkpoint of the run other than `seen` (its checkpoint manager's snapshot
    changes). Returns the snapshot."""
    deadline = time.time() + timeout
    while True:
        fs.invalidate_cache()
        snapshots = fs.glob(f"{runs}/*/checkpoint_manager_snapshot.json")
        if snapshots and (text := fs.cat_file(snapshots[0]).decode()) != seen:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"the job ended before a new checkpoint:\n{proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint in time")
        time.sleep(0.2)


def kill_one_training_worker() -> None:
    from ray.util.state import list_actors

    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    assert workers, "no training worker alive"
    os.kill(workers[-1]["pid"], signal.SIGKILL)


@pytest.mark.slow
def test_retrain_on_object_storage_resumes_a_killed_driver_and_reruns_do_nothing(
    ray_cluster, s3_bucket, tiny_models, label_media
):
    """The CLI on the session cluster, labels and registry (checkpoints included) on S3. The driver is killed after
    the first checkpoint; rerun, it resumes from that checkpoint; then one training worker is killed after the next
    checkpoint, and the restarted workers resume from that one. One version results; a third run finds nothing new."""
    fs, bucket = s3_bucket
    labels, root = f"s3://{bucket}/labels", f"s3://{bucket}/models"
    shard = f"{labels}/batch-0001/part-00000.parquet"
    write_label_shard(label_media, shard)
    args = [
        *("--labels", labels, "--base-model", tiny_models["llava"], "--registry", root, "--name", "scorer"),
        *("--epochs", "5", "--lr", "1e-3", "--batch-size", "8", "--crop", "32", "--views", "2", "--hflip"),
        *("--num-workers", "2", "--cpus-per-worker", "0.25", "--data-cpus", "0.25", "--data-actors", "1"),
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    entry = registry.entry_url(root, "scorer")

    runs = f"{bucket}/models/scorer/_runs"
    first = run_job(args, env)
    snapshot = wait_for_new_checkpoint(fs, runs, first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert registry.list_versions(entry) == []

    second = run_job(args, env)
    wait_for_new_checkpoint(fs, runs, second, seen=snapshot)
    kill_one_training_worker()
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output
    assert "resumed from the checkpoint of epoch" in output, output
    record = registry.read_version(entry, "v0001")
    metrics = store.read_json(f"{entry}/v0001/metrics.json")
    history = metrics["training"]
    assert [e["epoch"] for e in history] == [0, 1, 2, 3, 4]  # each epoch once: none was trained twice
    # three attempts (first driver; second driver; its restarted workers), each from the last checkpoint
    began = [e["attempt_began_at"] for e in history]
    assert began[0] == 0 and len(set(began)) == 3 and began == sorted(began), began
    assert all(b <= e["epoch"] for b, e in zip(began, history))
    assert record["run"]["resumed_from_epoch"] == began[-1] >= 2
    assert metrics["training"][-1]["examples"] == 2 * sum(r["split"] == "train" for r in label_media)  # 2 views
    n_eval = sum(r["split"] == "eval" for r in label_media)
    assert metrics["held_out"]["before"]["n"] == metrics["held_out"]["after"]["n"] == n_eval

    files = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/models/scorer/v0001")}
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json", "version.json"} <= files
    assert any(f.startswith(("processor_config", "preprocessor_config")) for f in files)
    assert record["base_model"]["path"] == tiny_models["llava"] and record["method"] == "full"
    assert record["seen_shards"] == {shard: record["label_shards"][0]["digest"]}
    after, before = metrics["held_out"]["after"]["srcc"], metrics["held_out"]["before"]["srcc"]
    assert record["promotion"]["promoted"] == (after > before)
    assert registry.current_version(entry) == ("v0001" if after > before else None)
    fs.invalidate_cache()
    assert not fs.exists(runs) or not fs.ls(runs)  # a run's checkpoints go once its version exists
    if after > before:  # the scoring job's --model <registry>/<name> now runs this version
        ref = registry.resolve(entry)
        assert ref.revision == "scorer/v0001"
        scorer = Scorer(registry.local_path(ref.path))
        assert scorer.score_media([Media(photo("rocket"), "image", None, [0], 1)])[1].shape == (1,)

    third = run_job(args, env)
    output, _ = third.communicate(timeout=300)
    assert third.returncode == 0 and "nothing new" in output, output
    assert registry.list_versions(entry) == ["v0001"]


def trained_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.slow
def test_a_killed_lmm_run_resumes_with_the_trained_weights_of_its_checkpoint(ray_cluster, tiny_models, tmp_path):
    """One run in this process; the same run as the CLI, its driver killed after the first checkpoint and rerun: it
    resumes from that checkpoint and ends at the unbroken run's weights. The object-storage test above only sees that
    a resume happened: a resume that restored the epoch, optimizer and schedule but not the weights would train on
    from the parent and pass it. One worker and the whole set in one batch (one step an epoch), so the order in which
    Ray Data hands the examples over changes only the rounding; no warm-up, so the step before the kill is about 40%
    of the way from the parent (4 steps, cosine)."""
    rows = build_learning_set(
        str(tmp_path / "media"), train_photos=("astronaut",), eval_photos=("coffee",), train_sides=(32,), eval_crops=1
    )
    rows = [r for r in rows if r["split"] == "train"][:8] + [r for r in rows if r["split"] == "eval"]
    labels = tmp_path / "labels"
    write_label_shard(rows, str(labels / "batch-0001" / "part-00000.parquet"))
    base = tiny_models["llava"]
    args = [
        *("--labels", str(labels), "--base-model", base, "--name", "lmm"),
        *("--epochs", "4", "--lr", "1e-3", "--batch-size", "8", "--warmup-ratio", "0", "--crop", "32"),
        *("--num-workers", "1", "--cpus-per-worker", "0.5", "--data-cpus", "0.5", "--data-actors", "1"),
    ]
    recipe = Recipe(epochs=4, lr=1e-3, batch_size=8, warmup_ratio=0.0, crop=32)  # the same run as the arguments
    scaling = Scaling(num_workers=1, cpus_per_worker=0.5, data_cpus=0.5, data_actors=1)
    retrain(RetrainConfig(str(labels), base, str(tmp_path / "a"), "lmm", recipe, scaling))

    env, registry_b = {**os.environ, "RAY_ADDRESS": ray_cluster}, tmp_path / "b"
    first = run_job([*args, "--registry", str(registry_b)], env)
    runs = str(registry_b / "lmm" / registry.RUNS_DIR)
    wait_for_new_checkpoint(store.filesystem(runs)[0], runs, first, timeout=600)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    second = run_job([*args, "--registry", str(registry_b)], env)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0 and "resumed from the checkpoint of epoch" in output, output
    record = registry.read_version(str(registry_b / "lmm"), "v0001")
    assert 1 <= record["run"]["resumed_from_epoch"] < 4, record["run"]  # epochs were left to train after the resume

    parent, whole, resumed = (
        trained_weights(f) for f in (base, tmp_path / "a" / "lmm" / "v0001", registry_b / "lmm" / "v0001")
    )
    names = whole.keys() & parent.keys()
    assert whole.keys() == resumed.keys() and names
    moved = sum(float((whole[k].double() - parent[k].double()).norm() ** 2) for k in names) ** 0.5
    apart = sum(float((resumed[k].double() - whole[k].double()).norm() ** 2) for k in whole) ** 0.5
    assert moved > 0 and apart < 0.01 * moved, f"resumed run {apart:.3g} from the unbroken one, which moved {moved:.3g}"


@pytest.mark.slow
def test_retrain_with_llama_adapter_versions_its_artifact_and_the_scorer_applies_it(
    ray_cluster, tiny_models, label_media, tmp_path
):
    """The CLI's llama-adapter flags through Ray Train to a version: the frozen parent's weights, the adapter as its
    own small artifact, version.json naming the method; the scoring path runs it, and its trained gates move scores."""
    labels, root = tmp_path / "labels", tmp_path / "models"
    write_label_shard(label_media, str(labels / "batch-0001" / "part-00000.parquet"))
    base = tiny_models["llava"]
    args = [
        *("--labels", str(labels), "--base-model", base, "--registry", str(root), "--name", "adapted"),
        *("--method", "llama-adapter", "--adapter-len", "4", "--adapter-layers", "1", "--seed", "7"),
        *("--epochs", "2", "--lr", "5e-2", "--batch-size", "8", "--crop", "32", "--views", "2"),
        *("--num-workers", "2", "--cpus-per-worker", "0.25", "--data-cpus", "0.25", "--data-actors", "1"),
    ]
    proc = run_job(args, {**os.environ, "RAY_ADDRESS": ray_cluster})
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    assert "llama-adapter: 260 trainable parameters" in output, output  # 4 prompts x 64 + 4 gates, one layer
    version = root / "adapted" / "v0001"
    record = json.loads((version / "version.json").read_text())
    assert record["method"] == "llama-adapter" and record["recipe"]["seed"] == 7
    assert record["recipe"]["options"] == {"adapter_len": 4, "adapter_layers": 1}
    config = json.loads((version / "llama_adapter.json").read_text())
    assert config["layers"] == [1] and config["adapter_len"] == 4
    assert (version / "llama_adapter.safetensors").stat().st_size < 10_000
    # the parent's frozen weights, unchanged: the adapter is the only thing training added
    assert (version / "model.safetensors").read_bytes() == (Path(base) / "model.safetensors").read_bytes()
    scorer = Scorer(str(version))
    assert [type(a) for a in scorer.additions] == [LlamaAdapter]
    assert scorer.additions[0].gates.abs().max() > 0  # trained: the gates opened
    # the scoring job (`jobs/score_dataset.py --model <version>`) scores with the adapter on
    items = [r for r in label_media if r["media_type"] == "image"][:4]
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest([{"id": r["id"], "uri": r["uri"], "media_type": "image"} for r in items], manifest, num_shards=1)
    run_scoring(JobConfig(manifest=manifest, output=output, model=str(version), batch_size=4))
    job_scores = pq.read_table(os.path.join(output, "part-00000.parquet")).column("score").to_numpy()
    media = [load_media(r["uri"], "image") for r in items]
    np.testing.assert_allclose(job_scores, scorer.score_media(media)[1], atol=1e-4)
    assert np.abs(job_scores - Scorer(base).score_media(media)[1]).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, method, recipe",
    [("qwen3_5", "full", "q-realign"), ("qwen3_5", "lora", "q-realign"), ("instructblip", "full", "generic")],
)
def test_retrain_trains_the_new_families_and_the_version_keeps_its_recipe(
    ray_cluster, tiny_models, label_media, tmp_path, family, method, recipe
):
    """The retraining job (Ray Train, 2 workers) on a tiny Qwen3.5 (full and LoRA) and a tiny InstructBLIP: a version
    results, taught with the base's prompt recipe, and it is scored with that recipe (qcurate.json in the version)."""
    images = [r for r in label_media if r["media_type"] == "image"]  # InstructBLIP scores no videos
    write_label_shard(images, str(tmp_path / "labels" / "batch-0001" / "part-00000.parquet"))
    config = RetrainConfig(
        str(tmp_path / "labels"),
        tiny_models[family],
        str(tmp_path / "registry"),
        "scorer",
        Recipe(method=method, epochs=1, lr=1e-3, batch_size=4, options={"lora_r": 4} if method == "lora" else {}),
        Scaling(num_workers=2, cpus_per_worker=0.25, data_cpus=0.25, data_actors=1),
    )
    outcome = retrain(config)
    assert outcome.version == "v0001", outcome
    history = outcome.metrics["training"]
    assert history[0]["examples"] == sum(r["split"] == "train" for r in images) and np.isfinite(history[0]["loss"])
    assert outcome.metrics["held_out"]["after"]["n"] == sum(r["split"] == "eval" for r in images)
    entry = registry.entry_url(config.registry, "scorer")
    assert registry.read_version(entry, "v0001")["prompt_recipe"] == recipe
    version = registry.local_path(outcome.version_url)
    assert json.loads((Path(version) / "qcurate.json").read_text()) == {"prompt_recipe": recipe}
    assert Scorer(version).preprocessor.recipe.name == recipe
    if method == "lora":
        assert "lora" not in (Path(version) / "config.json").read_text()  # merged on export


def test_retrain_takes_relative_local_paths(tmp_path, monkeypatch):
    """Ray Train runs its workers in a folder of their own: the command makes local paths absolute first (a relative
    --base-model was taken for a hub id there). A hub id stays as it is."""
    from pipeline import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "models" / "base" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    parser = cli.parser_for("retrain")
    common = ["--labels", "labels", "--registry", "registry", "--name", "n"]
    config = cli.command("retrain").configure(parser.parse_args([*common, "--base-model", "models/base"]), parser)
    assert (config.labels, config.registry) == (str(tmp_path / "labels"), str(tmp_path / "registry"))
    assert config.base_model == str(tmp_path / "models" / "base")
    config = cli.command("retrain").configure(parser.parse_args([*common, "--base-model", "org/name"]), parser)
    assert config.base_model == "org/name"
