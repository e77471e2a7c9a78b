"""The docs cannot drift from the code: every shell command they show runs here, or says why it cannot.

Each ```bash/```sh block of README.md and docs/*.md carries an HTML comment on the line just above it:
`<!-- runs here -->`, `<!-- runs here (slow) ... -->` or `<!-- not run here: <reason> -->`. A block with neither
fails. Runnable blocks run as one bash script each, in a fresh folder prepared by the `workdir` fixture (the sample
corpus as `manifests/photos`, full-reference pairs as `manifests/pairs`, a tiny mPLUG-Owl2 as `models/tiny-owl2`,
its label shard as `labels/`, its scores as `scores/photos`), with no RAY_ADDRESS: each command starts its own local
Ray, as on a user's machine. The block that starts a Ray head and submits a job runs on loopback (see
test_doc_block). Every command shown, run or not, is parsed by the command's own argument parser, so a flag that
does not exist fails here too. And: every docs page is linked from the README, every relative link resolves, every
error kind the code can emit is documented.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.infra import store

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
RUNS = re.compile(r"^runs here( \(slow\))?(\W|$)", re.S)
NOT_RUN = re.compile(r"^not run here: (\S.*)$", re.S)


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    line: int  # of the opening fence
    text: str
    marker: str  # the HTML comment just above the fence, without <!-- -->; "" when there is none

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def runs(self) -> bool:
        return bool(RUNS.match(self.marker))

    @property
    def slow(self) -> bool:
        runs = RUNS.match(self.marker)
        return bool(runs and runs.group(1))

    def commands(self) -> list[list[str]]:
        """Each command of the block as its words: continuation lines joined, comments dropped."""
        joined = re.sub(r"\\\n", " ", self.text)
        return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def shell_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("bash", "sh"):
            blocks.append(Block(str(path.relative_to(REPO)), i + 1, "\n".join(lines[i + 1 : end]), marker(lines, i)))
        i = end + 1
    return blocks


def marker(lines: list[str], fence: int) -> str:
    """The HTML comment that ends on the line just above line `fence`, if any."""
    if fence == 0 or not lines[fence - 1].rstrip().endswith("-->"):
        return ""
    start = fence - 1
    while "<!--" not in lines[start]:
        start -= 1
    comment = " ".join(line.strip() for line in lines[start:fence])
    return comment.split("<!--", 1)[1].rsplit("-->", 1)[0].strip()


BLOCKS = [block for page in PAGES for block in shell_blocks(page)]
RUNNABLE = [pytest.param(b, id=b.id, marks=[pytest.mark.slow] if b.slow else []) for b in BLOCKS if b.runs]


# ------------------------------------------------------------------------------------------------------------
# Fast: the markers, the flags, the links, the error kinds


def test_every_shell_block_runs_or_says_why_not():
    assert len(BLOCKS) >= 10 and RUNNABLE  # the parser found the docs' blocks
    unmarked = [b.id for b in BLOCKS if not b.runs and not NOT_RUN.match(b.marker)]
    assert not unmarked, f"shell blocks neither run here nor saying why not (<!-- not run here: ... -->): {unmarked}"


def cli_name(job: str) -> str | None:
    """The qcurate command a jobs/*.py script runs, or None for a script with its own arguments (demo, benchmarks)."""
    found = re.search(r'partial\(cli\.main, "([\w-]+)"', (REPO / job).read_text())
    return found.group(1) if found else None


def invocations(words: list[str]) -> list[tuple[str, list[str]]]:
    """(program, arguments) of each qcurate command or jobs/*.py script in a command, `ray job submit`'s included."""
    while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value before the command
        words = words[1:]
    if words[:1] == ["ray"] and "--" in words:
        return invocations(words[words.index("--") + 1 :])
    if words[:1] == ["qcurate"] and len(words) > 1 and words[1][0] not in "<.":  # not `qcurate <command>`, `...`
        return [(words[1], words[2:])]
    if words[:1] == ["python"] and len(words) > 1 and words[1].startswith("jobs/"):
        return [(words[1], words[2:])]
    return []


def unknown_flags(program: str, argv: list[str]) -> list[str]:
    """The options in argv that `program` does not take (or takes with another value), by its own parser."""
    from pipeline.cli import COMMANDS, parser_for

    # "..." stands for a value or for arguments shown elsewhere; -h only prints the options
    argv = ["x" if a == "..." else a for a in argv if a not in ("-h", "--help")]
    name = cli_name(program) if program.startswith("jobs/") else program
    if name is None:  # a script with its own parser: its flags must be in its source
        source = (REPO / program).read_text()
        return [a for a in argv if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
    if name not in COMMANDS:
        return [f"qcurate {name}: no such command"]
    parser = parser_for(name)
    parser.allow_abbrev = False  # the docs must show a flag whole: an abbreviation breaks when another flag is added
    for action in parser._actions:  # a doc may leave out required arguments ("..."); what it shows must parse
        action.required = False

    def refuse(message: str) -> None:  # argparse would print and exit
        raise ValueError(message)

    parser.error = refuse
    try:
        _, unknown = parser.parse_known_args(argv)
    except ValueError as e:
        return [str(e)]
    return [a for a in unknown if a.startswith("-")]


def inline_commands(page: Path) -> list[list[str]]:
    """The commands written in the prose as code spans (`qcurate ...`, `python jobs/... ...`)."""
    spans = re.findall(r"`((?:qcurate|python jobs/)[^`]*)`", page.read_text())
    return [shlex.split(span.replace("|", " ")) for span in spans]


def test_every_command_shown_takes_the_flags_shown():
    shown = [(block.id, words) for block in BLOCKS for words in block.commands()]
    shown += [(str(page.relative_to(REPO)), words) for page in PAGES for words in inline_commands(page)]
    checked, wrong = 0, []
    for where, words in shown:
        for program, argv in invocations(words):
            checked += 1
            if bad := unknown_flags(program, argv):
                wrong.append(f"{where}: {program}: {bad}")
    assert checked >= 30, checked
    assert not wrong, "\n".join(wrong)


def test_a_renamed_flag_is_caught():
    assert unknown_flags("score", ["--manifest", "m", "--output", "o", "--scorer", "psnr"]) == []
    assert unknown_flags("score", ["--manifest", "m", "--outptu", "o"]) == ["--outptu"]
    assert unknown_flags("filter", ["--colum", "psnr"]) == ["--colum"]  # abbreviations too
    assert unknown_flags("jobs/retrain.py", ["--method", "no-such-method"])  # a value argparse refuses
    assert unknown_flags("jobs/benchmark.py", ["--family", "owl2", "--no-such-flag"]) == ["--no-such-flag"]


def links(page: Path) -> list[str]:
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()) if "://" not in target]


def test_every_page_is_linked_from_the_readme_and_every_link_resolves():
    readme = set(links(REPO / "README.md"))
    assert [p.name for p in PAGES[1:] if f"docs/{p.name}" not in readme] == []
    broken = [
        f"{page.relative_to(REPO)} -> {target}"
        for page in PAGES
        for target in links(page)
        if not (page.parent / target.split("#")[0]).exists()
    ]
    assert not broken, broken


def emitted_error_kinds() -> tuple[set[str], set[str]]:
    """(kinds, prefixes): every row error kind the code can write, read from the code; a prefix p stands for p + kind
    of every item kind (a full-reference reference's own kind, `reference_not_found`)."""
    from pipeline.infra.media import ERROR_KINDS, MODEL_LIMIT_KINDS

    source = "\n".join(p.read_text() for p in (REPO / "pipeline").rglob("*.py"))
    raised = set(re.findall(r'MediaError\(\s*"([a-z_]+)"', source))
    written = set(re.findall(r'errors\[i\] = f?"([a-z_]+): ', source))  # errors a stage writes itself
    prefixes = set(re.findall(r'MediaError\(\s*f"([a-z_]+)\{', source))
    assert {"not_found", "no_reference", "aspect_ratio"} <= raised and written and prefixes, (raised, written, prefixes)
    return set(ERROR_KINDS) | set(MODEL_LIMIT_KINDS) | raised | written, prefixes


def test_every_error_kind_the_code_can_emit_is_documented_and_no_other():
    kinds, prefixes = emitted_error_kinds()
    table = (REPO / "docs" / "failures.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_<>]+)` \|", table, re.M))
    missing = sorted(kinds - documented)
    assert not missing, f"error kinds the code can emit that docs/failures.md does not explain: {missing}"
    assert {f"{p}<kind>" for p in prefixes} <= documented, prefixes
    stale = sorted(documented - kinds - {f"{p}<kind>" for p in prefixes})
    assert not stale, f"docs/failures.md explains error kinds the code no longer emits: {stale}"


# ------------------------------------------------------------------------------------------------------------
# Slow: the commands themselves


def command_env(**extra: str) -> dict[str, str]:
    """The shell a user has after `make install`: the venv's commands first, this checkout's code, no cluster."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


# Ray aborts a node whose raylet waits more than 15 s for its dashboard agent to start: measured at load averages of
# 40-60 on these 2 cores ("The current node timed out during startup"), for `ray start` and a local `ray.init()`
# alike. That is the machine, not the docs: a script that fails so is run again from scratch, at most ATTEMPTS times.
RAY_START_TIMEOUT = "timed out during startup"
ATTEMPTS = 3


def run_script(
    script: str, cwd: Path | Callable[[], Path], env: dict[str, str], timeout: int = 1200
) -> subprocess.CompletedProcess:
    """Run a bash script (stopping at the first failing command); `cwd` may make a fresh folder for each attempt."""
    for attempt in range(ATTEMPTS):
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + script],
            cwd=cwd() if callable(cwd) else cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout + result.stderr
        if not (result.returncode and RAY_START_TIMEOUT in output and attempt < ATTEMPTS - 1):
            break
    assert result.returncode == 0, f"{script}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    """The folder the docs' commands run in (a fresh copy per block): sample manifests, a tiny model, labels, scores."""
    from pipeline.corpora.shards import write_manifest
    from pipeline.samples.corpus import build_pair_corpus, build_sample_corpus
    from pipeline.samples.synthetic import write_label_shard
    from pipeline.samples.tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("docs-workdir")
    media = str(root / "media")  # stays here: the manifests name these files by absolute path
    photos = build_sample_corpus(media, photos=("astronaut", "coffee", "chelsea"), levels=(0, 2, 4), n_videos=1)
    write_manifest(photos, str(root / "manifests" / "photos"), num_shards=2)
    write_manifest(build_pair_corpus(media, photos=("astronaut",), levels=(0, 2)), str(root / "manifests" / "pairs"), 1)
    make_tiny_model("owl2", root / "models" / "tiny-owl2")
    labels = [
        {
            **{k: r[k] for k in ("id", "uri", "media_type")},
            "task": "quality",
            "mos": float(r["mos"]),
            "scale_min": 1.0,
            "scale_max": 5.0,
            "split": "eval" if r["source"] == "chelsea" else "train",  # one photograph held out whole
        }
        for r in photos
    ]
    write_label_shard(labels, str(root / "labels" / "batch-0001" / "part-00000.parquet"))
    score = "qcurate score --manifest manifests/photos --output scores/photos --model models/tiny-owl2"
    run_script(score, root, command_env())
    return root


def fresh_copy(workdir: Path, into: Path) -> Path:
    """The workdir's data, and jobs/ as in a checkout (`python jobs/...` runs from the repository's root)."""
    for name in ("manifests", "models", "labels", "scores"):
        shutil.copytree(workdir / name, into / name)
    (into / "jobs").symlink_to(REPO / "jobs")
    return into


def outputs(block: Block) -> list[str]:
    """The local folders a block's commands say they write."""
    found = []
    for words in block.commands():
        for flag in ("--output", "--out"):
            if flag in words and "://" not in (value := words[words.index(flag) + 1]):
                found.append(value)
    return found


@pytest.mark.parametrize("block", RUNNABLE)
def test_doc_block(block, tmp_path, request):
    if "ray start --head" in block.text:
        request.getfixturevalue("s3_endpoint")
        run_head_and_submit(block, tmp_path)
        return
    workdir, attempts = request.getfixturevalue("workdir"), []

    def fresh() -> Path:
        attempts.append(fresh_copy(workdir, tmp_path / f"work{len(attempts)}"))
        return attempts[-1]

    run_script(block.text, fresh, command_env())
    here = attempts[-1]
    missing = [out for out in outputs(block) if not (here / out).exists()]
    assert not missing, f"{block.id}: outputs not written: {missing}"


# The head-node block, on loopback: what differs from the page, each replacement checked to be there. The page's
# ports are Ray's defaults, which another Ray on this machine may hold; 0.0.0.0 would open the job server to the
# network; and `ray stop` stops every Ray cluster on the machine (this test session's too), so the test stops only
# the processes of its own --temp-dir instead.
def loopback(text: str, temp: Path) -> str:
    from conftest import free_port

    dashboard = free_port()
    replacements = {
        "--port=6379": f"--port={free_port()}",
        "--dashboard-host=0.0.0.0": "--dashboard-host=127.0.0.1 --node-ip-address=127.0.0.1 --num-cpus=2",
        "--dashboard-port=8265": f"--dashboard-port={dashboard} --dashboard-agent-listen-port={free_port()} "
        f"--temp-dir={temp} --disable-usage-stats",
        "http://127.0.0.1:8265": f"http://127.0.0.1:{dashboard}",
        "\nray stop": "\n",
    }
    for old, new in replacements.items():
        assert old in text, f"the head-node block no longer has {old!r}: update loopback()"
        text = text.replace(old, new)
    return text


def put_pairs_on_s3(url: str) -> list[dict]:
    """The sample pairs as objects on the session's S3 server, and their manifest at `url`."""
    import s3fs

    from pipeline.corpora.shards import write_manifest
    from pipeline.samples.corpus import build_pair_corpus

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = url.split("/")[2]
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    local = tempfile.mkdtemp(prefix="pairs-")
    rows = build_pair_corpus(local, photos=("astronaut",), levels=(0, 2))
    for row in rows:
        for column in ("uri", "ref_uri"):
            target = f"s3://{bucket}/pairs/{Path(row[column]).name}"
            fs.put_file(row[column], target)
            row[column] = target
    write_manifest(rows, url, num_shards=1)
    shutil.rmtree(local)
    return rows


def run_head_and_submit(block: Block, tmp_path: Path) -> None:
    """Ray 2.60, measured: `ray start --head` with a token in ~/.ray/auth_token turns token authentication on; a
    `ray job submit` with RAY_AUTH_MODE=token sends that token and its job scores; one without is refused."""
    from conftest import stop_cluster

    manifest, output = "s3://bucket/manifests/pairs", "s3://bucket/scores/pairs-psnr"
    assert f"--manifest {manifest} --output {output}" in " ".join(" ".join(w) for w in block.commands())
    rows = put_pairs_on_s3(manifest)
    if store.exists(output):  # a second run in one session scores afresh
        fs, path = store.filesystem(output)
        fs.rm(path, recursive=True)
    home = tmp_path / "home"  # its own ~/.ray/auth_token, not the user's
    home.mkdir()
    # No RAY_AUTH_MODE anywhere (the test session disables auth for its own clusters): Ray's defaults decide.
    env = command_env(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(var, None)
    for attempt in range(ATTEMPTS):
        temp = Path(tempfile.mkdtemp(prefix="qray-docs-"))  # short: Ray's socket paths under it must fit in 107 bytes
        script = loopback(block.text, temp)
        try:
            result = subprocess.run(
                ["bash", "-c", "set -euo pipefail\n" + script],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            out = result.stdout + result.stderr
            if result.returncode and RAY_START_TIMEOUT in out and attempt < ATTEMPTS - 1:
                continue  # see RAY_START_TIMEOUT; the finally stops what started
            assert result.returncode == 0, f"{script}\n--- output\n{out[-6000:]}"
            assert (home / ".ray" / "auth_token").is_file()
            assert "Token authentication is enabled for this Ray cluster" in out, out[-3000:]
            assert "succeeded" in out, out[-3000:]
            address = re.search(r"--address (http://127\.0\.0\.1:\d+)", script).group(1)
            refused = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", address, "--", "python", "-c", "pass"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr
            break
        finally:
            stop_cluster(temp)
            shutil.rmtree(temp, ignore_errors=True)
    table = store.read_parquet(f"{output}/part-00000.parquet").to_pylist()
    assert sorted(r["id"] for r in table) == sorted(r["id"] for r in rows)
    assert all(r["error"] is None and r["fr_score"] is not None for r in table), table
    copy = next(r for r in table if r["id"] == "astronaut-copy")
    assert copy["psnr"] == 100.0  # a pixel copy of its reference: PSNR at its cap


@pytest.mark.slow
def test_make_demo(tmp_path):
    """`make demo` as the README shows it: the Makefile's own recipe, with this interpreter as the venv's (`-o`: the
    install step is taken as done), in a folder of its own so that demo_out lands there."""
    (tmp_path / "jobs").symlink_to(REPO / "jobs")
    make = f"make -f {REPO / 'Makefile'} -o .venv/.installed-stamp PY={sys.executable} demo"
    run_script(make, tmp_path, command_env())
    assert list((tmp_path / "demo_out").rglob("index.html")), "the demo wrote no report"
    # it scored the corpus with the shipped scorer: every item but the missing one, on its scale (Q-ReAlign's 0..1)
    scores = pq.read_table(tmp_path / "demo_out" / "scores" / "sample").to_pandas().set_index("id")
    assert scores.loc["missing-file", "error"] and scores.drop("missing-file")["error"].isna().all()
    assert scores.drop("missing-file")["score"].between(0.0, 1.0).all()
    # its retraining step folded the corpus's photographs into it and decided, on the two held-out photographs
    registry = tmp_path / "demo_out" / "retrain" / "registry"
    (metrics,), (version,) = registry.rglob("metrics.json"), registry.rglob("version.json")
    promotion = json.loads(version.read_text())["promotion"]
    assert json.loads(metrics.read_text())["held_out"]["before"]["n"] == 10
    assert promotion["promoted"] in (True, False) and "tiny-iqa" in promotion["compared_with"]
