"""Train a tiny LLaMA-style SentencePiece tokenizer (vocab 512) for the golden checkpoints.

Settings as LLaMA's tokenizer.model (BPE, byte fallback, dummy prefix, identity normalisation, digits split,
<unk>/<s>/</s> = 0/1/2, bytes from id 3 so "\n" = <0x0A> = 13). tokenizer_config.json and special_tokens_map.json are
DeQA-Score's own files (DeQA-Score/preprocessor/, LlamaTokenizer, legacy=false), copied verbatim.
usage: python make_tokenizer.py OUT_DIR DEQA_PREPROCESSOR_DIR
"""

import io
import random
import shutil
import sys
from pathlib import Path

import sentencepiece as spm

out, deqa = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
LEVELS = ["excellent", "good", "fair", "poor", "bad"]
PROMPTS = [
    "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is",
    "USER: How would you rate the quality of this video?\n<|image|>\nASSISTANT: The quality of the video is",
    "USER: How would you rate the aesthetics of this image?\n<|image|>\nASSISTANT: The aesthetics of the image is",
    "USER: How would you rate the quality of this image?\n<|image|> ASSISTANT: The quality of the image is",
]
words = sorted(
    {w for p in PROMPTS for w in p.replace("<|image|>", " ").replace("?", " ? ").replace(":", " : ").split()}
)
words += LEVELS
# filler text so that BPE has enough merges for exactly 512 pieces
words += (
    "Can evaluate Please give your rating for judge think level overall visual sharp blurry noisy bright dark colour "
    "photo picture scene light"
).split()
rng = random.Random(0)
corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)]
# no "\n" in the corpus: as in LLaMA, a newline is the byte piece <0x0A> (id 13)
corpus += [
    p.replace("<|image|>", "").replace("\n", " ") + " " + w + "." for p in PROMPTS for w in LEVELS for _ in range(30)
]
buf = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter(corpus),
    model_writer=buf,
    model_type="bpe",
    vocab_size=512,
    byte_fallback=True,
    split_digits=True,
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
)
(out / "tokenizer.model").write_bytes(buf.getvalue())
for name in ("tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(deqa / name, out / name)
sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
for w in LEVELS:
    assert len(sp.encode("is " + w)) == 2, (w, sp.encode("is " + w, out_type=str))
assert sp.encode("\n", out_type=str)[-1] == "<0x0A>" and sp.piece_to_id("<0x0A>") == 13
print("vocab", sp.get_piece_size(), [sp.encode(p, out_type=str) for p in PROMPTS[:1]])
