#!/usr/bin/env bash
# Remake the goldens qalign_video_tiny and deqa_tiny from the authors' own code (see each golden's README).
# usage: remake.sh PYTHON TF436_DIR QALIGN_SRC DEQA_SRC OWL2_TINY_DIR OUT_DIR
#   PYTHON      a Python 3.11 with torch 2.13.0+cpu, decord 0.6.0, av, sentencepiece, scikit-image, accelerate, scipy
#   TF436_DIR   `pip install --target TF436_DIR --no-deps transformers==4.36.1 tokenizers==0.15.0
#                huggingface_hub==0.19.4 icecream executing asttokens colorama`
#   QALIGN_SRC  a checkout of github.com/Q-Future/Q-Align (the folder that holds q_align/)
#   DEQA_SRC    a checkout of github.com/zhiyuanyou/DeQA-Score (the folder that holds src/ and preprocessor/)
#   OWL2_TINY_DIR  shared/golden/owl2_tiny (config.json, model.safetensors, preprocessor_config.json)
#   OUT_DIR     tests/goldens
set -euo pipefail
dir() { mkdir -p "$1" && (cd "$1" && pwd); }  # absolute, as the scripts run from this folder
case $1 in /*) PY=$1 ;; *) PY=$PWD/$1 ;; esac  # not resolved: a venv's python is a symlink
TF=$(dir "$2") QA=$(dir "$3") DQ=$(dir "$4") OWL2=$(dir "$5") OUT=$(dir "$6")
HERE=$(cd "$(dirname "$0")" && pwd)
V=$OUT/qalign_video_tiny D=$OUT/deqa_tiny
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# Inputs (tokenizer, videos, images, the DeQA checkpoint) are made only where missing: the expected numbers are
# remade from the committed inputs. Delete an input folder to make it anew (x264's output is not byte-stable from one
# run to the next, so new videos mean new expected numbers).
[ -d "$V/tokenizer" ] || "$PY" "$HERE/make_tokenizer.py" "$V/tokenizer" "$DQ/preprocessor"
[ -d "$V/videos" ] || "$PY" "$HERE/make_videos.py" "$V/videos"
# The checkpoint Q-Align's scorer loads: owl2_tiny's weights, config and processor, plus this tokenizer.
mkdir -p "$TMP/ck"
cp "$OWL2/config.json" "$OWL2/model.safetensors" "$OWL2/preprocessor_config.json" "$V"/tokenizer/* "$TMP/ck/"
# Q-Align's model __init__ also fetches a tokenizer and processor for `model.score` from the hub id
# q-future/one-align (unused by the scorer classes): served from a Hugging Face cache laid out on disk.
SNAP=$TMP/hf/hub/models--q-future--one-align/snapshots/0000000000000000000000000000000000000000
mkdir -p "$SNAP" "$TMP/hf/hub/models--q-future--one-align/refs"
printf 0000000000000000000000000000000000000000 > "$TMP/hf/hub/models--q-future--one-align/refs/main"
cp "$TMP"/ck/* "$SNAP/"
QA_COMMIT=$(git -C "$QA" rev-parse HEAD 2>/dev/null || echo "${QALIGN_COMMIT:?set QALIGN_COMMIT}")
DQ_COMMIT=$(git -C "$DQ" rev-parse HEAD 2>/dev/null || echo "${DEQA_COMMIT:?set DEQA_COMMIT}")
(cd "$HERE" && HF_HOME=$TMP/hf PYTHONPATH=$TF:$QA:$HERE "$PY" run_qalign_video.py "$TMP/ck" "$V/videos" "$V/expected.json" "$QA_COMMIT")

[ -d "$D/images" ] || "$PY" "$HERE/make_images.py" "$D/images"
[ -d "$D/DeQA-Score-Mix3-tiny" ] ||
    (cd "$HERE" && PYTHONPATH=$TF:$DQ:$HERE "$PY" make_deqa_checkpoint.py "$D/DeQA-Score-Mix3-tiny" "$V/tokenizer" "$DQ/preprocessor")
(cd "$HERE" && PYTHONPATH=$TF:$DQ:$HERE "$PY" run_deqa.py "$D/DeQA-Score-Mix3-tiny" "$D/images" "$D/expected.json" "$DQ_COMMIT")
