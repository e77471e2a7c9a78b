"""qcurate's VTAMIQ against the authors' own code (tests/goldens/vtamiq_tiny, made by its make_golden.py from
github.com/ch-andrei/VTAMIQ at 055a4e3, the release the published weights came with).

The golden's seeded weights, in the original's `.pth` layout, are imported the way the published ones are
(jobs/import_model.py with their run configuration); then each pair is cut at the patches the original sampled
(top-left pixels per scale, and the slots its shuffle sent their pixels to) and every stage is held against what
the original computed: patches, position and scale indices, ViT features, difference modulation, score.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from jobs import import_model
from pipeline import registry
from pipeline.models.vtamiq import VTAMIQ, VTAMIQConfig, collate, grid_index, patch_set
from pipeline.registry.checkpoint import load_training_checkpoint
from pipeline.scorers import ScorerArgs
from pipeline.scorers import vtamiq as vtamiq_kind
from pipeline.scoring.commit import Output
from pipeline.scoring.config import JobError
from pipeline.scoring.plan import check_previous_run

GOLDEN = Path(__file__).parent / "goldens" / "vtamiq_tiny"
RTOL = 1e-5  # per stage: max |qcurate - original| <= RTOL * max |original|


def _golden() -> tuple[dict, dict[str, torch.Tensor]]:
    # a missing golden fails: it is part of the repository
    assert (GOLDEN / "expected.json").is_file(), f"golden folder missing: {GOLDEN}"
    return json.loads((GOLDEN / "expected.json").read_text()), load_file(str(GOLDEN / "expected.safetensors"))


RECORD, EXPECTED = _golden()
CASES = [(c, p) for c, config in RECORD["configs"].items() for p in config["pairs"]]


def _close(ours: torch.Tensor | np.ndarray, theirs: torch.Tensor, what: str) -> float:
    ours = torch.as_tensor(np.asarray(ours, dtype=np.float32)) if isinstance(ours, np.ndarray) else ours.float()
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(theirs.shape)}"
    diff = float((ours - theirs).abs().max())
    assert diff <= RTOL * float(theirs.abs().max()), f"{what}: max difference {diff:.3g}"
    return diff


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, str]:
    """Each golden config's .pth imported into a registry entry with jobs/import_model.py: {config: entry}."""
    root = tmp_path_factory.mktemp("registry")
    entries = {}
    for name in RECORD["configs"]:
        args = ["--source", str(GOLDEN / f"{name}.pth"), "--registry", str(root), "--name", name]
        assert import_model.main([*args, "--original-config", str(GOLDEN / f"{name}.json")]) == 0
        entries[name] = str(root / name)
    return entries


@pytest.fixture(scope="module")
def models(imported) -> dict[str, VTAMIQ]:
    return {name: VTAMIQ.load(registry.local_path(registry.resolve(entry).path)) for name, entry in imported.items()}


def _pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    return tuple(np.asarray(Image.open(GOLDEN / "pairs" / f"{name}_{k}.png").convert("RGB")) for k in ("ref", "dist"))


def _prepared(model: VTAMIQ, config: str, pair: str) -> dict[str, np.ndarray]:
    case = RECORD["configs"][config]["pairs"][pair]
    samples = [np.array(points, np.int64).reshape(-1, 2) for points in case["samples"]]
    return patch_set(*_pair(pair), samples, model.config, np.array(case["slots"]))


def test_the_import_records_the_published_choices(imported, models):
    multi = models["multi"].config
    assert (multi.num_scales, multi.scale_embeddings, multi.embedding_order) == (5, 5, "sampling")
    assert multi.vit["layer_norm_eps"] == 1e-6 and multi.vit["image_size"] == 384 and multi.grid_size == 24
    assert multi.image_mean == (0.485, 0.456, 0.406) and not multi.reference_modulation
    assert not multi.higher_is_better and models["single"].config.higher_is_better
    assert models["single"].config.reference_modulation and models["single"].config.scale_embeddings == 0
    version = registry.resolve(imported["multi"]).path
    original = json.loads((Path(version) / "original.json").read_text())
    assert original["checkpoint_entries"] == {"epoch": 3, "test_accuracy": 0.5}
    assert original["higher_is_better"] is False and not list(Path(version).glob("*.pth"))
    record = json.loads((Path(version) / "version.json").read_text())
    assert record["source_revision"].startswith("sha256:") and record["method"] == "import"


@pytest.mark.parametrize("config,pair", CASES)
def test_every_stage_equals_the_original(models, config, pair):
    model, key = models[config], f"{config}/{pair}"
    prepared = _prepared(model, config, pair)
    # patches: qcurate normalises in the model, the original before cutting
    mean, std = (np.array(v, np.float32).reshape(1, 3, 1, 1) for v in (model.config.image_mean, model.config.image_std))
    for side in ("ref", "dist"):
        _close((prepared[side].astype(np.float32) / 255 - mean) / std, EXPECTED[f"{key}/patches_{side}"], side)
    # the original's tables put the CLS token in row 0
    np.testing.assert_array_equal(prepared["positions"] + 1, EXPECTED[f"{key}/position_index"].numpy())
    if f"{key}/scale_index" in EXPECTED:
        np.testing.assert_array_equal(prepared["scales"] + 1, EXPECTED[f"{key}/scale_index"].numpy())
    batch = collate([prepared])
    with torch.no_grad():
        f_ref, f_dist = (model.features(batch[s], batch["positions"], batch["scales"])[0] for s in ("ref", "dist"))
        _close(f_ref, EXPECTED[f"{key}/vit_ref"], "ViT reference features")
        _close(f_dist, EXPECTED[f"{key}/vit_dist"], "ViT distorted features")
        diff = (f_ref - f_dist)[None]
        modulated = model.dmn.modulation(diff, f_ref[None]) if model.dmn.modulation is not None else diff
        _close(modulated[0], EXPECTED[f"{key}/modulated"], "difference modulation by the reference")
        _close(model.dmn(diff, f_ref[None])[0], EXPECTED[f"{key}/dmn"], "difference modulation network")
        score = model(batch["ref"], batch["dist"], batch["positions"], batch["scales"])
    _close(score, EXPECTED[f"{key}/score"], "score")


def test_the_scorer_turns_a_distortion_into_higher_is_better(imported, models):
    args = ScorerArgs("golden", registry.resolve(imported["multi"]).path, "v0001", "quality", None, None)
    kind = vtamiq_kind.create("vtamiq", args)
    assert kind.higher_is_better is False
    assert kind.identity()["model_revision"] == f"v0001 ({vtamiq_kind.DEFINITION})"
    prepared = [_prepared(models["multi"], "multi", p) for p in RECORD["configs"]["multi"]["pairs"]]
    scores = kind.device_step("cpu")(prepared)["fr_score"]
    raw = np.array([EXPECTED[f"multi/{p}/score"].item() for p in RECORD["configs"]["multi"]["pairs"]])
    np.testing.assert_allclose(scores, 1.0 - np.clip(raw, 0, 1), atol=1e-6)


def test_an_output_scored_under_the_old_definition_refuses_a_rerun(imported, tmp_path):
    args = ScorerArgs("golden", registry.resolve(imported["single"]).path, "v0001", "quality", None, None)
    kind = vtamiq_kind.create("vtamiq", args)
    old = {"scorer": "vtamiq", "model": "golden", "model_revision": "v0001"}  # what v1 wrote to _run.json
    (tmp_path / "_run.json").write_text(json.dumps(old))
    with pytest.raises(JobError, match=r"model_revision='v0001', this run has 'v0001 \(vtamiq/v2"):
        check_previous_run(Output(str(tmp_path)), kind.identity(), restart=False)


def test_a_run_configuration_that_does_not_fit_the_weights_is_refused(tmp_path):
    wrong = json.loads((GOLDEN / "multi.json").read_text())
    wrong["vtamiq_config"]["vit_use_scale_embedding"] = False
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    args = ["--source", str(GOLDEN / "multi.pth"), "--registry", str(tmp_path / "r"), "--name", "x"]
    assert import_model.main([*args, "--original-config", str(tmp_path / "wrong.json")]) == 1
    assert not (tmp_path / "r" / "x").exists() or not list((tmp_path / "r" / "x").glob("v*/version.json"))


def test_a_pth_pickled_under_numpy_1_loads(tmp_path):
    # the published file dates from 2022: its test_accuracy names numpy 1's numpy.core.multiarray.scalar
    with zipfile.ZipFile(GOLDEN / "multi.pth") as source, zipfile.ZipFile(tmp_path / "np1.pth", "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\nscalar" in data
                data = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
            target.writestr(info.filename, data)
    state, entries = load_training_checkpoint(tmp_path / "np1.pth")
    assert entries == {"epoch": 3, "test_accuracy": 0.5} and len(state) == len(
        load_training_checkpoint(GOLDEN / "multi.pth")[0]
    )


def test_a_pth_holding_code_is_refused_without_running_it(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    torch.save({"epoch": 1, "model_state_dict": {}, "extra": Payload()}, tmp_path / "evil.pth")
    args = ["--source", str(tmp_path / "evil.pth"), "--registry", str(tmp_path / "r"), "--name", "x"]
    assert import_model.main(args) == 1
    assert "refused" in capsys.readouterr().err and not (tmp_path / "ran").exists()


def test_multi_scale_patches_are_pooled_copies_and_sampling_order_pairs_them_with_others():
    config = VTAMIQConfig(num_patches=8, num_scales=3, scale_embeddings=3, embedding_order="sampling")
    ref, dist = _pair("c")
    samples = [np.array([[0, 0], [3, 5]]), np.array([[2, 1]]), np.array([[1, 4]])]
    slots = np.array([3, 0, 2, 1])
    prepared = patch_set(ref, dist, samples, config, slots)
    assert prepared["ref"].dtype == np.float32

    def pooled(y: int, x: int, scale: int) -> np.ndarray:
        f = 1 << scale
        block = ref[y * f : (y + 16) * f, x * f : (x + 16) * f].astype(np.float64)
        return block.reshape(16, f, 16, f, 3).mean((1, 3)).transpose(2, 0, 1)

    # sample n's pixels go to slot slots[n]: 0 (scale 0) -> 3, 1 (scale 0) -> 0, 2 (scale 1) -> 2, 3 (scale 2) -> 1
    for n, (scale, (y, x)) in enumerate([(0, (0, 0)), (0, (3, 5)), (1, (2, 1)), (2, (1, 4))]):
        np.testing.assert_allclose(prepared["ref"][slots[n]], pooled(y, x, scale), rtol=1e-6)
    # while positions and scales stay in sampling order
    np.testing.assert_array_equal(prepared["scales"], [0, 0, 1, 2])
    half = ref.shape[0] >> 2, ref.shape[1] >> 2
    np.testing.assert_array_equal(prepared["positions"][3], grid_index(np.array([[1, 4]]), *half, 16, 14)[0])
    with pytest.raises(ValueError, match="slots"):
        patch_set(ref, dist, samples, config)
