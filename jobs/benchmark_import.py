"""Benchmark the safe `.bin` -> safetensors conversion (pipeline.registry.checkpoint.convert_folder).

    python jobs/benchmark_import.py --megabytes 400 --repeats 3

Writes a synthetic checkpoint of bf16 tensors in two pickled shards (LLaMA-like 2-D shapes), then converts it in a
fresh process per repeat and reports the median wall time, MB/s, and peak RSS above the process's RSS after its
imports, next to a plain copy of the same files
(the disk's own speed, measured in the same run), and extrapolates both to a 16 GB checkpoint (OneAlign: 2 shards).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Peak RSS from /proc's VmHWM: getrusage's ru_maxrss of a child starts at its parent's peak on Linux.
CONVERT = """
import re, sys, time
from pathlib import Path
from pipeline.registry.checkpoint import convert_folder
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
base = hwm()
start = time.perf_counter()
convert_folder(Path(sys.argv[1]), Path(sys.argv[2]))
print(time.perf_counter() - start, hwm() - base)
"""


def write_checkpoint(folder: Path, megabytes: int, shards: int = 2) -> int:
    """Random bf16 matrices of 4096 x 1024 (8 MB each) split over `shards` pickles, with their index."""
    folder.mkdir(parents=True)
    n = max(shards, megabytes // 8)
    per = -(-n // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        part = {
            f"model.layers.{i}.mlp.weight": torch.randn(4096, 1024).bfloat16()
            for i in range(s * per, min(n, (s + 1) * per))
        }
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * 2 for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text("{}")
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megabytes", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="qcurate-bench-import-") as tmp:
        source = Path(tmp) / "bin"
        total = write_checkpoint(source, a.megabytes)
        convert_s, copy_s, rss = [], [], []
        for r in range(a.repeats):
            target = Path(tmp) / f"st{r}"
            out = subprocess.run(
                [sys.executable, "-c", CONVERT, str(source), str(target)], capture_output=True, text=True, check=True
            ).stdout.split()
            convert_s.append(float(out[0]))
            rss.append(int(out[1]))
            shutil.rmtree(target)
            start = time.perf_counter()
            shutil.copytree(source, Path(tmp) / f"copy{r}")
            copy_s.append(time.perf_counter() - start)
            shutil.rmtree(Path(tmp) / f"copy{r}")
    mb = total / 1e6
    conv, copy, peak = statistics.median(convert_s), statistics.median(copy_s), statistics.median(rss) / 1e6
    print(f"checkpoint: {mb:.0f} MB of bf16 tensors in 2 pickled shards (page cache warm); medians of {a.repeats} runs")
    print(
        f"convert (.bin -> safetensors, weights_only): {conv:.2f} s = {mb / conv:.0f} MB/s, "
        f"peak RSS +{peak:.0f} MB = {peak / (mb / 2):.2f}x one shard"
    )
    print(
        f"plain copy of the same files:                {copy:.2f} s = {mb / copy:.0f} MB/s (ratio {conv / copy:.2f}x)"
    )
    scale = 16e3 / mb
    print(
        f"16 GB checkpoint (2 shards of 8 GB), by the same rates: about {conv * scale:.0f} s of conversion "
        f"({copy * scale:.0f} s to copy) and peak RSS +{peak / (mb / 2) * 8:.1f} GB; from cold storage both are "
        "bounded by the read speed instead"
    )


if __name__ == "__main__":
    main()
