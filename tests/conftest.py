"""Session-wide fixtures: one S3 endpoint (moto's server on loopback), one Ray cluster, tiny models built once.

The S3 environment variables are set for the whole session BEFORE Ray starts, so that Ray workers (which inherit the
environment of `ray start`) reach the same endpoint as the test process.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub here
# A Hugging Face cache and a qcurate cache of the session's own, set before transformers is imported (it reads HF_HOME
# once) and before Ray starts (its workers inherit them): tests lay out hub repositories there as a download would.
_CACHES = Path(tempfile.mkdtemp(prefix="qcurate-caches-"))
os.environ["HF_HOME"] = str(_CACHES / "hf")
os.environ["QCURATE_CACHE"] = str(_CACHES / "qcurate")
# Test clusters listen on loopback only; Ray's token auth would tie them to one token file shared by every cluster
# on the machine.
os.environ["RAY_AUTH_MODE"] = "disabled"
from transformers.utils import logging as hf_logging  # noqa: E402  (after HF_HOME is set)

from pipeline.samples.tiny_models import make_tiny_model  # noqa: E402

hf_logging.disable_progress_bar()
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """family -> folder of a tiny random model of that family, built once per session."""
    root = tmp_path_factory.mktemp("models")
    families = ("llava", "idefics3", "owl2", "qwen3_5", "qwen3_vl", "qwen2_5_vl", "llava_onevision", "instructblip")
    return {family: str(make_tiny_model(family, root / family)) for family in families}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """moto's S3 server on 127.0.0.1; the standard AWS variables point s3fs (and Ray workers) at it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    empty = tmp_path_factory.mktemp("aws")
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        # no developer's ~/.aws settings may leak in
        AWS_CONFIG_FILE=str(empty / "config"),
        AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"),
    )
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    yield endpoint
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the session's S3 endpoint: (s3fs filesystem, bucket name)."""
    import s3fs

    # s3fs caches instances by constructor arguments, not by env: a cached one could keep an old endpoint.
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"qcurate-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield fs, bucket
    s3fs.S3FileSystem.clear_instance_cache()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(temp_dir: Path) -> tuple[str, str]:
    """`ray start --head` on loopback with its own temp dir. Returns (GCS address, dashboard URL)."""
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [
        RAY,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode:
        raise RuntimeError(f"ray start failed:\n{result.stdout}\n{result.stderr}")
    return f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"


def stop_cluster(temp_dir: Path) -> None:
    """Kill every process of the cluster that uses temp_dir (`ray stop` would stop every cluster on the machine)."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(temp_dir) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint, tmp_path_factory) -> str:
    """One local Ray cluster for the whole test session (`ray start --head` on loopback). Returns its address.

    Jobs started as subprocesses join it through RAY_ADDRESS; the test process joins it too.
    """
    import ray

    temp = Path(tempfile.mkdtemp(prefix="qray-"))  # short: Ray's socket paths under it must fit in 107 bytes
    address, dashboard = start_cluster(temp)
    os.environ["RAY_ADDRESS"] = address
    os.environ["QCURATE_TEST_DASHBOARD"] = dashboard
    ray.init(address=address, logging_level="WARNING")
    yield address
    ray.shutdown()
    stop_cluster(temp)
    shutil.rmtree(temp, ignore_errors=True)
    os.environ.pop("RAY_ADDRESS", None)
