"""What the user sees: the default output of the scoring and retraining jobs holds our own lines only (Ray's and
transformers' go to the log file), the progress line says what it should, and retraining prints one line per epoch.

The jobs run as subprocesses on the session's Ray cluster (RAY_ADDRESS), so their real stdout and stderr are captured.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, parser_for, qcurate
from pipeline.corpora.shards import write_manifest
from pipeline.infra.console import skipped_summary
from pipeline.samples.corpus import build_sample_corpus
from pipeline.samples.synthetic import build_learning_set, write_label_shard
from pipeline.scoring.progress import ScoringProgress
from pipeline.training.lmm import epoch_line
from pipeline.training.retrain import decision, evaluation_table

REPO = Path(__file__).resolve().parents[1]
# Lines only Ray, Ray Data, Ray Train or transformers print: none may reach the default output.
FOREIGN = (
    "Starting execution",
    "Execution plan",
    "Progress bars disabled",
    "core_worker",
    "Loading weights",
    "TrainingReport",
    "pid=",
    "[transformers]",
    "raylet",
    "Traceback",
)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_off_a_terminal_say_everything_at_most_every_n_seconds():
    clock, lines = Clock(), []
    progress = ScoringProgress(1000, 4, lines.append, every_s=10, clock=clock)
    clock.t = 30  # actor start-up: not counted in the rates
    progress.update(100, Counter(), 0)
    for second in range(31, 61):
        clock.t = second
        progress.update(20, Counter({"not_found": 1} if second == 45 else {}), 1 if second < 50 else 2)
    assert len(lines) == 4, lines  # at t=30, 40, 50 and 60, not at each of the 31 updates
    last = lines[-1]
    assert last.startswith("scoring: 700/1,000 rows (70.0%), ")
    assert "20.0 rows/s (20.0 since the first row)" in last  # 600 rows in the 30 s after the first ones
    assert "ETA 15s" in last and "shards 2/4 committed" in last and "errors: not_found 1" in last


def test_progress_redraws_in_place_on_a_terminal():
    clock, stream, lines = Clock(), io.StringIO(), []
    progress = ScoringProgress(100, 2, lines.append, terminal=stream, every_s=10, clock=clock)
    for second in range(1, 6):
        clock.t = second
        progress.update(20, Counter(), second // 3)
    progress.close()
    drawn = stream.getvalue()
    assert not lines and "\r" in drawn and "100/100 rows 100%" in drawn and "shards 1/2 committed" in drawn


def test_epoch_line_table_decision_and_skipped_summary():
    history = [
        {"epoch": e, "loss": 1.5 - e / 10, "level_accuracy": 0.25, "examples": 40, "seconds": 2.0} for e in range(3)
    ]
    assert epoch_line(history[:1], 3, 0) == "epoch 1/3: loss 1.5000, level accuracy 25.0%, 20.0 examples/s, ETA 4s"
    assert epoch_line(history, 3, 0).endswith("20.0 examples/s")  # the last epoch: no ETA
    measured = {"n": 9, "srcc": 0.5, "plcc": 0.4}
    table = evaluation_table({"train": {"before": measured, "after": measured}, "held_out": {"before": measured}})
    assert "held-out (9)" in table and "+0.5000" in table and "n/a" in table and len(table.splitlines()) == 3
    assert decision("v0002", {"promoted": False, "reason": "not better"}).startswith("v0002 not promoted")
    summary = skipped_summary({"b": "not_found: gone", "a": "decode_error: bad", "c": "not_found: gone too"})
    assert summary.startswith("skipped 3 label item(s)") and "not_found 2, decode_error 1" in summary
    assert skipped_summary({}) is None


def test_every_command_has_help_with_examples_and_qcurate_lists_them(capsys):
    for name in COMMANDS:
        assert "examples:" in parser_for(name).format_help(), name
    assert qcurate(["-h"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in COMMANDS)
    assert qcurate(["scroe"]) == 2 and "unknown command 'scroe'" in capsys.readouterr().err


def run_job(script: str, args: list[str], address: str) -> tuple[int, str]:
    env = {**os.environ, "RAY_ADDRESS": address}
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / script), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


def assert_only_our_lines(output: str) -> None:
    found = [line for line in output.splitlines() if any(marker in line for marker in FOREIGN)]
    assert not found, output


@pytest.mark.slow
def test_scoring_prints_its_plan_progress_and_summary_only(ray_cluster, tiny_models, tmp_path):
    rows = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut", "coffee"), n_videos=1)
    rows.append({**rows[0], "id": "missing", "uri": str(tmp_path / "corpus" / "missing.jpg")})
    manifest, output = str(tmp_path / "manifest"), tmp_path / "scores"
    write_manifest(rows, manifest, num_shards=2)
    args = ["--manifest", manifest, "--output", str(output), "--model", tiny_models["llava"], "--batch-size", "4"]
    code, out = run_job("score_dataset.py", [*args, "--max-error-rate", "0.5", "--progress-every", "0"], ray_cluster)
    assert code == 0, out
    assert_only_our_lines(out)
    assert f"score: {manifest} -> {output}" in out and "done: " in out
    progress = [line for line in out.splitlines() if line.startswith("scoring: ")]
    assert progress and f"/{len(rows)} rows (" in progress[-1] and "shards " in progress[-1], out
    assert any("errors: not_found 1" in line for line in progress), out
    logs = list((output / "_logs").glob("score-*.log"))
    assert len(logs) == 1 and f"log: {logs[0]}" in out
    assert "done: " in logs[0].read_text() and "Dataset" in logs[0].read_text()  # ours and Ray Data's, together


@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("console-labels")
    rows = build_learning_set(
        str(root), train_photos=("astronaut",), eval_photos=("coffee",), train_sides=(48,), eval_crops=1
    )
    rows.append({**rows[0], "id": "train-missing", "uri": str(root / "missing.png")})  # bad media, every epoch
    write_label_shard(rows, str(root / "labels" / "b1" / "part-00000.parquet"))
    return str(root / "labels")


@pytest.mark.slow
def test_retraining_prints_one_line_per_epoch_then_the_table_and_the_decision(
    ray_cluster, tiny_models, labels, tmp_path
):
    outputs = {}
    for epochs in (1, 3):
        args = [
            *("--labels", labels, "--base-model", tiny_models["llava"], "--registry", str(tmp_path / f"r{epochs}")),
            *("--name", "s", "--epochs", str(epochs), "--batch-size", "4", "--fit-items", "8"),
            *("--num-workers", "2", "--cpus-per-worker", "0.25", "--data-cpus", "0.25", "--data-actors", "1"),
        ]
        code, out = run_job("retrain.py", args, ray_cluster)
        assert code == 0, out
        assert_only_our_lines(out)
        outputs[epochs] = out
    one, three = outputs[1], outputs[3]
    for epoch in (1, 2, 3):
        assert sum(f"epoch {epoch}/3: loss " in line for line in three.splitlines()) == 1, three
    assert "examples/s, ETA " in three and "level accuracy" in three
    assert three.count("skipped 1 label item(s) whose media could not be loaded (not_found 1)") == 1, three
    assert "SRCC before" in three and "held-out (" in three and "v0001 " in three and "promoted" in three
    # the output grows by one line per epoch, not with the history of every earlier epoch
    assert len(three.splitlines()) - len(one.splitlines()) == 2, (one, three)
    assert abs(len(three) - len(one)) < 400
