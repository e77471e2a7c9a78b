"""Published checkpoints as they ship: a tiny mPLUG-Owl2 in the exact hub layout of the Q-Align family (two pickled
bf16 shards + index, old rotary buffers, transformers 4.31 config with auto_map and remote code beside it, a
SentencePiece LLaMA tokenizer), loaded from a folder, from a hub id through a Hugging Face cache laid out on disk
(HF_HUB_OFFLINE=1), and from the registry after `jobs/import_model.py` on the S3 endpoint. Each scores exactly as the
same weights saved by transformers as safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file
from skimage import data

from pipeline import registry
from pipeline.corpora.shards import write_manifest
from pipeline.infra import store
from pipeline.infra.media import Media
from pipeline.registry import checkpoint
from pipeline.registry.checkpoint import CheckpointError, UnsafeCheckpointError
from pipeline.samples.corpus import build_sample_corpus
from pipeline.samples.tiny_hub import REMOTE_CODE_FILES, REMOTE_CODE_MARKER, make_owl2_hub_checkpoint
from pipeline.scorers.lmm_model import Preprocessor, Scorer

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "q-future/one-align"
SHA_MAIN = "6c1f5a0e3b2d4f7a8b9c0d1e2f3a4b5c6d7e8f90"
SHA_PR = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567"  # refs/pr/1: the hub bot's safetensors conversion
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json")


def media() -> list[Media]:
    """Two photographs of different shapes and a three-frame video."""
    frames = [data.chelsea(), data.coffee(), data.rocket()]
    return [
        Media([data.astronaut()], "image", None, [0], 1),
        Media([data.rocket()], "image", None, [0], 1),
        Media(frames, "video", 1.0, [0, 1, 2], 3),
    ]


def probabilities(folder: str) -> np.ndarray:
    return Scorer(registry.local_path(folder)).score_media(media())[0]


def lay_out_hub_cache(snapshot: Path, sha: str, refs: tuple[str, ...]) -> Path:
    """Put `snapshot`'s files into $HF_HOME/hub as huggingface_hub lays out a download: blobs named by their hash,
    snapshots/<sha>/ of symlinks into them, refs/<name> holding the sha."""
    repo = Path(os.environ["HF_HOME"]) / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    target = repo / "snapshots" / sha
    target.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in sorted(snapshot.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (target / path.name).symlink_to(os.path.relpath(blob, target))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
    return target


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint in hub layout, the same weights as transformers' safetensors, and the hub cache."""
    root = tmp_path_factory.mktemp("published")
    hub = root / "one-align"
    model = make_owl2_hub_checkpoint(hub)
    # The reference: the same bf16 weights, written by transformers itself as safetensors.
    reference = root / "reference"
    model.to(torch.bfloat16).save_pretrained(reference, safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(hub / name, reference / name)
    # refs/pr/1 as the hub's conversion bot makes it: the same state dict verbatim (inv_freq buffers included) in
    # one model.safetensors, beside the same config, tokenizer and remote code.
    converted = root / "refs-pr-1"
    converted.mkdir()
    state = {}
    for shard in sorted(hub.glob("pytorch_model-*.bin")):
        state.update(torch.load(shard, weights_only=True))
    save_file(state, str(converted / "model.safetensors"), metadata={"format": "pt"})
    for path in hub.iterdir():
        if path.suffix != ".bin" and path.name != "pytorch_model.bin.index.json":
            shutil.copyfile(path, converted / path.name)
    main = lay_out_hub_cache(hub, SHA_MAIN, ("main",))
    pr = lay_out_hub_cache(converted, SHA_PR, ("refs/pr/1",))
    return {"hub": hub, "reference": reference, "main": main, "pr": pr}


def no_remote_code_ran(published: dict[str, Path]) -> bool:
    return not any((published[k] / REMOTE_CODE_MARKER).exists() for k in ("hub", "main", "pr"))


def test_the_replica_has_the_published_layout(published):
    hub = published["hub"]
    names = {p.name for p in hub.iterdir()}
    assert {
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    } <= names
    assert not any(n.endswith(".safetensors") for n in names)
    assert set(REMOTE_CODE_FILES) <= names
    config = json.loads((hub / "config.json").read_text())
    assert config["model_type"] == "mplug_owl2" and "auto_map" in config and "pad_token_id" not in config
    assert config["torch_dtype"] == "bfloat16" and config["rope_scaling"] is None
    assert {"id2label", "bad_words_ids", "chunk_size_feed_forward"} <= set(config["visual_config"]["visual_model"])
    index = json.loads((hub / "pytorch_model.bin.index.json").read_text())
    assert index["metadata"]["total_size"] > 0 and "model.layers.0.self_attn.rotary_emb.inv_freq" in index["weight_map"]
    shard = torch.load(hub / "pytorch_model-00001-of-00002.bin", weights_only=True)
    assert {t.dtype for k, t in shard.items() if "inv_freq" not in k} == {torch.bfloat16}
    # the real token counts flow: 448 px / patch 14 -> 1025 vision tokens; 64 queries + end token in the LLM
    assert config["visual_config"]["visual_model"]["image_size"] == 448
    assert config["visual_config"]["visual_abstractor"]["num_learnable_queries"] == 64
    pre = Preprocessor(str(published["reference"]))
    assert pre(media()[0])["pixel_values"].shape == (1, 3, 448, 448)


def test_bin_folder_scores_as_its_safetensors(published):
    """(a) a local folder with only .bin shards: converted once, scores equal the safetensors weights."""
    expected = probabilities(str(published["reference"]))
    got = probabilities(str(published["hub"]))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert not np.allclose(got[0], got[2])  # the inputs matter: not a constant
    converted = Path(registry.local_path(str(published["hub"])))
    assert converted != published["hub"] and (converted / ".complete").exists()
    names = sorted(p.name for p in converted.iterdir())
    assert "model-00001-of-00002.safetensors" in names and "model.safetensors.index.json" in names
    assert not [n for n in names if n.endswith((".bin", ".py"))]
    # the same tensors, names and dtypes as the pickles (the old rotary buffers too: the loader ignores them)
    tensors = {}
    for shard in sorted(converted.glob("*.safetensors")):
        tensors.update(load_file(shard))
    for shard in sorted(published["hub"].glob("*.bin")):
        for key, tensor in torch.load(shard, weights_only=True).items():
            assert tensors[key].dtype == tensor.dtype and torch.equal(tensors[key], tensor), key
    assert no_remote_code_ran(published)


def test_hub_id_resolves_from_the_cache_offline(published):
    """(b) `q-future/one-align` through a Hugging Face cache on disk, HF_HUB_OFFLINE=1: the path a hub id takes."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    ref = registry.resolve(REPO_ID)
    assert ref == registry.ModelRef(f"{REPO_ID}@{SHA_MAIN}", SHA_MAIN)
    np.testing.assert_allclose(probabilities(ref.path), probabilities(str(published["reference"])), atol=1e-6, rtol=0)
    # --model-revision refs/pr/1: the safetensors branch loads as it is, no conversion
    pr = registry.resolve(REPO_ID, "refs/pr/1")
    assert pr.revision == SHA_PR
    assert Path(registry.local_path(pr.path)) == published["pr"]
    np.testing.assert_allclose(probabilities(pr.path), probabilities(str(published["reference"])), atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError, match="cached snapshot"):
        registry.resolve(REPO_ID, "refs/pr/2")
    assert no_remote_code_ran(published)


@pytest.mark.slow
def test_import_to_registry_on_s3_then_score(published, s3_bucket, tmp_path):
    """(c) jobs/import_model.py writes an immutable safetensors version on S3; CURRENT is the first one."""
    _, bucket = s3_bucket
    models = f"s3://{bucket}/models"
    run = [sys.executable, str(REPO / "jobs/import_model.py"), "--source", REPO_ID, "--registry", models]
    result = subprocess.run([*run, "--name", "onealign"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"@ {SHA_MAIN}" in result.stdout and "CURRENT" in result.stdout
    entry = f"{models}/onealign"
    assert registry.current_version(entry) == "v0001"
    record = registry.read_version(entry, "v0001")
    assert record["source"] == REPO_ID and record["source_revision"] == SHA_MAIN and record["method"] == "import"
    fs, path = store.filesystem(f"{entry}/v0001")
    names = sorted(store.basename(p) for p in fs.ls(path, detail=False))
    assert "model.safetensors.index.json" in names and "tokenizer.model" in names
    assert not [n for n in names if n.endswith((".bin", ".py"))]

    ref = registry.resolve(entry)
    assert ref.revision == f"onealign/v0001@{record['digest']}" and record["digest"].startswith("sha256:")
    np.testing.assert_allclose(probabilities(ref.path), probabilities(str(published["reference"])), atol=1e-6, rtol=0)

    # A second import adds v0002 without moving CURRENT; --model-revision picks a version.
    result = subprocess.run([*run, "--name", "onealign", "--revision", "refs/pr/1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert registry.current_version(entry) == "v0001"
    assert registry.read_version(entry, "v0002")["source_revision"] == SHA_PR
    assert registry.resolve(entry, "v0002").path == f"{entry}/v0002"
    with pytest.raises(FileNotFoundError, match="v0009"):
        registry.resolve(entry, "v0009")
    assert no_remote_code_ran(published)


@pytest.mark.slow
def test_the_scoring_job_runs_the_hub_id(ray_cluster, published, tmp_path):
    """The README's command with `--model q-future/one-align`: every actor resolves the same commit, converts once
    per node, and the rows record that commit."""
    rows = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut", "coffee"), n_videos=1)
    manifest, output = tmp_path / "manifest", tmp_path / "scores"
    write_manifest(rows, str(manifest), num_shards=2)
    cmd = [sys.executable, str(REPO / "jobs/score_dataset.py"), "--manifest", str(manifest), "--output", str(output)]
    result = subprocess.run(
        [*cmd, "--model", REPO_ID, "--batch-size", "4"], capture_output=True, text=True, timeout=600, cwd=REPO
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    scores = pq.read_table(output).to_pylist()
    assert len(scores) == len(rows) and all(r["error"] is None for r in scores)
    assert {r["model"] for r in scores} == {REPO_ID} and {r["model_revision"] for r in scores} == {SHA_MAIN}
    run_info = json.loads((output / "_run.json").read_text())
    assert run_info["model_revision"] == SHA_MAIN and run_info["model_path"] == f"{REPO_ID}@{SHA_MAIN}"
    assert no_remote_code_ran(published)


def test_pickles_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "x": Payload()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"model_type": "mplug_owl2"}))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        registry.local_path(str(folder))
    assert not marker.exists()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "jobs/import_model.py"),
            "--source",
            str(folder),
            "--registry",
            str(tmp_path / "models"),
            "--name",
            "evil",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "refused" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "models" / "evil" / "CURRENT").exists()


def test_remote_code_files_would_run_if_imported(tmp_path):
    """The marker check above means something: importing one of the remote code files does leave the marker."""
    make_owl2_hub_checkpoint(tmp_path / "ck")
    subprocess.run([sys.executable, str(tmp_path / "ck" / REMOTE_CODE_FILES[0])], check=True)
    assert (tmp_path / "ck" / REMOTE_CODE_MARKER).exists()


def test_missing_preprocessor_config_uses_the_documented_defaults(published, tmp_path, caplog):
    """q-future/q-align-vqa ships no preprocessor_config.json: CLIP at 448 with the CLIP mean/std, said in the log."""
    folder = tmp_path / "vqa"
    shutil.copytree(published["reference"], folder)
    (folder / "preprocessor_config.json").unlink()
    with caplog.at_level("WARNING", logger="qcurate.owl2"):
        defaults = Preprocessor(str(folder))
    assert "no preprocessor_config.json" in caplog.text and "448" in caplog.text
    shipped = Preprocessor(str(published["reference"]))
    for item in media():
        np.testing.assert_array_equal(defaults(item)["pixel_values"], shipped(item)["pixel_values"])


def test_conversion_happens_once_per_node(published, tmp_path):
    """Two processes asking for the same .bin checkpoint at once: one converts, the other waits and reads it."""
    source = tmp_path / "ck"
    shutil.copytree(published["hub"], source)
    env = {**os.environ, "QCURATE_CACHE": str(tmp_path / "cache")}
    code = "import sys; from pipeline.registry.checkpoint import local_folder; print(local_folder(sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(source)],
            env=env,
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert len({out.strip() for out, _ in outputs}) == 1
    assert sum("converting them to safetensors once on this node" in err for _, err in outputs) == 1
    assert [p.name for p in (tmp_path / "cache" / "converted").iterdir() if not p.name.endswith(".lock")] == [
        Path(outputs[0][0].strip()).name
    ]


def test_bad_checkpoint_folders_fail_clearly(published, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(published["hub"], folder)
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match="pytorch_model-00002-of-00002.bin"):
        registry.local_path(str(folder))
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"truncated")
    (folder / "pytorch_model.bin.index.json").unlink()
    os.rename(folder / "pytorch_model-00001-of-00002.bin", folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a readable PyTorch weight file"):
        registry.local_path(str(folder))
    with pytest.raises(ValueError, match="plain folder, which has no revisions"):
        registry.resolve(str(published["reference"]), "v0001")
    assert not checkpoint.is_hub_id(str(published["reference"])) and checkpoint.is_hub_id(REPO_ID)
