"""Golden for DeQA-Score: zhiyuanyou/DeQA-Score's own inference code, unmodified, on a tiny checkpoint in the
published layout (make_deqa_checkpoint.py).

Two paths of that repository, both recorded:
- `Scorer` (src/evaluate/scorer.py; the README's "Image Quality Scorer"): prompt
  `USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is`,
  score = softmax(five level logits) @ [5, 4, 3, 2, 1]. Images are given as DeQA's own loader
  (src/evaluate/iqa_eval.py `load_image`: PIL open + convert("RGB")) gives them.
- `iqa_eval.py` (scripts/infer.sh, the paper's numbers) + `cal_plcc_srcc.cal_score`: the conversation template
  `mplug_owl2` + " The quality of the image is", i.e. `...image?\n<|image|> ASSISTANT: The quality of the image is`
  (a space, not a newline, before ASSISTANT); its logits of the five words, then the same softmax and weights.
usage: PYTHONPATH=TF436:DEQA_ROOT:TOOLS python run_deqa.py CHECKPOINT IMAGE_DIR OUT.json COMMIT
Observation only: a forward hook keeps the Scorer's logits so the five probabilities are written beside its score
(their weighted sum is checked to equal the score it returns).
"""

import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from PIL import Image
from src.evaluate import iqa_eval
from src.evaluate.cal_plcc_srcc import cal_score
from src.evaluate.scorer import Scorer
from standins import float32_instead_of_float16

ck, images, out, commit = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
LEVELS = ["excellent", "good", "fair", "poor", "bad"]
names = sorted(p.name for p in images.iterdir())

with float32_instead_of_float16():
    scorer = Scorer(pretrained=str(ck), device="cpu").eval()
kept = {}
scorer.model.register_forward_hook(lambda m, i, o: kept.__setitem__("logits", o["logits"]))


def score(imgs: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with float32_instead_of_float16():
        s = scorer(imgs)
    level_logits = kept["logits"][:, -1, scorer.preferential_ids_]
    probs = torch.softmax(level_logits, -1)
    assert (probs @ scorer.weight_tensor.float() - s).abs().max() < 1e-5
    return level_logits, probs, s


loaded = [iqa_eval.load_image(str(images / n)) for n in names]
batch_logits, batch_probs, batch_scores = score(loaded)
solo = {n: score([img]) for n, img in zip(names, loaded)}
batch_vs_solo = max((batch_probs[i] - solo[n][1][0]).abs().max().item() for i, n in enumerate(names))

# Greyscale images as PIL opens them (mode "L"), given straight to the Scorer: what its expand2square does.
as_opened = {}
for n in names:
    img = Image.open(images / n)
    if img.mode == "RGB":
        continue
    try:
        _, p, _ = score([img])
        as_opened[n] = {"mode": img.mode, "max_abs_prob_diff_vs_rgb": (p[0] - solo[n][1][0]).abs().max().item()}
    except Exception as e:  # noqa: BLE001 - recorded
        as_opened[n] = {"mode": img.mode, "error": f"{type(e).__name__}: {e}"}

# The paper's inference script, run as scripts/infer.sh runs it (one meta file, a root dir, the level names).
with tempfile.TemporaryDirectory() as tmp:
    meta = Path(tmp) / "meta.json"
    meta.write_text(json.dumps([{"id": i, "image": n, "gt_score": 3.0} for i, n in enumerate(names)]))
    args = SimpleNamespace(
        model_path=str(ck),
        model_base=None,
        preprocessor_path=str(ck),
        meta_paths=[str(meta)],
        root_dir=str(images),
        save_dir=str(Path(tmp) / "res"),
        level_names=LEVELS,
        with_prob=False,
        device="cpu",
        conv_mode=None,
        batch_size=16,
        temperature=0.2,
        max_new_tokens=512,
        load_8bit=False,
        load_4bit=False,
        debug=False,
        image_aspect_ratio="pad",
    )
    with float32_instead_of_float16():
        iqa_eval.main(args)
    rows = [json.loads(line) for line in (Path(tmp) / "res" / "meta.json").read_text().splitlines()]

from src.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX  # noqa: E402
from src.conversation import conv_templates  # noqa: E402  (the prompt iqa_eval builds, for the record)
from src.mm_utils import tokenizer_image_token  # noqa: E402

conv = conv_templates["mplug_owl2"].copy()
conv.append_message(conv.roles[0], "How would you rate the quality of this image?\n" + DEFAULT_IMAGE_TOKEN)
conv.append_message(conv.roles[1], None)
eval_prompt = conv.get_prompt() + " The quality of the image is"
eval_ids = tokenizer_image_token(eval_prompt, scorer.tokenizer, IMAGE_TOKEN_INDEX)

per_image = {}
for i, n in enumerate(names):
    img = Image.open(images / n)
    logits_eval = [rows[i]["logits"][w] for w in LEVELS]
    p_eval = torch.softmax(torch.tensor(logits_eval, dtype=torch.float64), -1)
    per_image[n] = {
        "size_WH": list(img.size),
        "mode": img.mode,
        "scorer": {
            "level_logits": solo[n][0][0].tolist(),
            "probs": solo[n][1][0].tolist(),
            "score": solo[n][2][0].item(),
        },
        "iqa_eval": {
            "level_logits": logits_eval,
            "probs": p_eval.tolist(),
            "score": float(cal_score(LEVELS, logits=rows[i]["logits"])),
        },
    }
golden = {
    "reference": {
        "repository": "https://github.com/zhiyuanyou/DeQA-Score",
        "commit": commit,
        "code": "src/evaluate/scorer.py Scorer; src/evaluate/iqa_eval.py main + "
        "src/evaluate/cal_plcc_srcc.py cal_score "
        "(unmodified)",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32 (stand-in for the code's float16; see README)",
        "attn_implementation": scorer.model.config._attn_implementation,
    },
    "checkpoint": ck.name,
    "scorer_prompt": "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: "
    "The quality of the image is",
    "scorer_input_ids": scorer.input_ids[0].tolist(),
    "iqa_eval_prompt": eval_prompt,
    "iqa_eval_input_ids": eval_ids,
    "level_words": LEVELS,
    "level_ids": scorer.preferential_ids_,
    "weights": scorer.weight_tensor.float().tolist(),
    "scorer_batch_vs_solo_max_abs_prob_diff": batch_vs_solo,
    "greyscale_as_opened_into_scorer": as_opened,
    "max_abs_prob_diff_scorer_vs_iqa_eval": max(
        abs(a - b) for r in per_image.values() for a, b in zip(r["scorer"]["probs"], r["iqa_eval"]["probs"])
    ),
    "images": per_image,
}
out.write_text(json.dumps(golden, indent=1) + "\n")
for n, r in per_image.items():
    print(
        n,
        r["size_WH"],
        r["mode"],
        [round(p, 4) for p in r["scorer"]["probs"]],
        round(r["scorer"]["score"], 5),
        "| eval",
        [round(p, 4) for p in r["iqa_eval"]["probs"]],
        round(r["iqa_eval"]["score"], 5),
    )
print(
    {
        k: golden[k]
        for k in (
            "scorer_batch_vs_solo_max_abs_prob_diff",
            "greyscale_as_opened_into_scorer",
            "max_abs_prob_diff_scorer_vs_iqa_eval",
            "scorer_input_ids",
            "iqa_eval_input_ids",
        )
    }
)
