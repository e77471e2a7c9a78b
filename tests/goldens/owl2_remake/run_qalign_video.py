"""Golden for Q-Align / OneAlign VIDEO scoring: Q-Future/Q-Align's own `load_video` + `QAlignVideoScorer`
(q_align/evaluate/scorer.py), unmodified, on the tiny mPLUG-Owl2 of shared/golden/owl2_tiny.

usage (transformers 4.36.1 first on the path, Q-Align's repository root next):
  PYTHONPATH=TF436:QALIGN_SRC python run_qalign_video.py CHECKPOINT_DIR VIDEO_DIR OUT.json
CHECKPOINT_DIR holds owl2_tiny's config.json, model.safetensors and preprocessor_config.json plus this golden's
tokenizer files. Observation only: decord's get_batch is wrapped to record the frame indices load_video asks for,
and a forward hook keeps the model's logits so the five level probabilities can be written beside the score
(their weighted sum is checked to equal the score the scorer returns).
"""

import hashlib
import json
import sys
from pathlib import Path

import decord
import torch
import transformers
from q_align.evaluate.scorer import QAlignVideoScorer, load_video
from standins import float32_instead_of_float16

ck, videos, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.manual_seed(0)

asked: list[list[int]] = []
get_batch = decord.VideoReader.get_batch


def spy_get_batch(self, indices):
    asked.append([int(i) for i in indices])
    return get_batch(self, indices)


decord.VideoReader.get_batch = spy_get_batch


def run(fp16: bool) -> dict:
    results = {}
    if fp16:
        scorer = QAlignVideoScorer(pretrained=str(ck), device="cpu")
    else:
        with float32_instead_of_float16():
            scorer = QAlignVideoScorer(pretrained=str(ck), device="cpu")
    scorer.eval()
    kept = {}
    scorer.model.register_forward_hook(lambda m, i, o: kept.__setitem__("logits", o["logits"]))
    for path in sorted(videos.glob("*.mp4")):
        asked.clear()
        frames = load_video(str(path))
        reader = decord.VideoReader(str(path))
        if fp16:
            score = scorer([frames])
        else:
            with float32_instead_of_float16():
                score = scorer([frames])
        level_logits = kept["logits"][:, -1, scorer.preferential_ids_].float()
        probs = torch.softmax(level_logits, -1)
        check = (probs @ scorer.weight_tensor.float()).item()
        assert abs(check - score.float().item()) < (2e-3 if fp16 else 1e-6), (check, score)
        results[path.name] = {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "decord_num_frames": len(reader),
            "decord_avg_fps": reader.get_avg_fps(),
            "frame_indices": asked[0],
            "frame_size_WH": list(frames[0].size),
            "level_logits": level_logits[0].tolist(),
            "probs": probs[0].tolist(),
            "score_scorer": score.float().item(),
            "score_1to5": (probs[0] @ torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])).item(),
            "dtype": str(kept["logits"].dtype),
        }
    return results, scorer


f32, scorer = run(fp16=False)
try:
    f16, _ = run(fp16=True)
    fp16_diff = {
        "max_abs_prob_diff": max(abs(a - b) for v in f32 for a, b in zip(f32[v]["probs"], f16[v]["probs"])),
        "max_abs_score_scorer_diff": max(abs(f32[v]["score_scorer"] - f16[v]["score_scorer"]) for v in f32),
        "per_video": {v: {"probs": f16[v]["probs"], "score_scorer": f16[v]["score_scorer"]} for v in f16},
    }
except Exception as e:  # noqa: BLE001 - recorded, not hidden
    fp16_diff = {"error": f"{type(e).__name__}: {e}"}
tok = scorer.tokenizer
golden = {
    "reference": {
        "repository": "https://github.com/Q-Future/Q-Align",
        "commit": sys.argv[4] if len(sys.argv) > 4 else None,
        "code": "q_align/evaluate/scorer.py: load_video + QAlignVideoScorer (unmodified)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "decord": decord.__version__,
        "dtype": "float32 (stand-in for the code's float16; see README)",
        "attn_implementation": scorer.model.config._attn_implementation,
    },
    "prompt": "USER: How would you rate the quality of this video?\n<|image|>\nASSISTANT: The quality of the video is",
    "input_ids": scorer.input_ids[0].tolist(),
    "level_words": ["excellent", "good", "fair", "poor", "bad"],
    "level_ids": scorer.preferential_ids_,
    "weights_scorer_py": scorer.weight_tensor.float().tolist(),
    "frame_rule": "[int(fps * i) for i in range(int(len(vr) / fps))], fps = decord get_avg_fps()",
    "videos": f32,
    "float16_as_published": fp16_diff,
}
out.write_text(json.dumps(golden, indent=1) + "\n")
print(
    json.dumps(
        {v: (r["frame_indices"], [round(p, 5) for p in r["probs"]], r["score_scorer"]) for v, r in f32.items()},
        indent=1,
    )
)
print("fp16:", {k: v for k, v in fp16_diff.items() if k != "per_video"})
