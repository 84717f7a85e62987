"""A user's folder never collides with ours, and `--app module:factory` looks in it.

Every name this project installs starts with `streaming_rag`, so a project folder holding its
own `worker.py`, `client.py` and `wire.py` shadows nothing, and the worker can put the current
folder on `sys.path` (as uvicorn and arq do) to find the user's app without `PYTHONPATH`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streaming_rag_client import StreamingRAGClient

WAIT_S = 60
SHADOWS = {
    name: f'raise RuntimeError("the user\'s own {name} was imported instead of ours")\n'
    for name in ("worker.py", "client.py", "wire.py")
}
USER_APP = """
from streaming_rag import StreamingRAG


class EchoRAG:
    def retrieve(self, query):
        return [{"content": "user folder", "metadata": {"source": "mymodule"}}]

    def generate(self, query, context):
        return "answered by mymodule: " + query


def build():
    return StreamingRAG(EchoRAG())
"""


def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    for name, text in SHADOWS.items():
        (folder / name).write_text(text)
    (folder / "mymodule.py").write_text(USER_APP)
    return folder


def env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REDIS_URL")}


def test_demo_runs_from_a_folder_holding_worker_client_and_wire_modules(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    # `python -m` puts the current folder first on sys.path: the collision case
    proc = subprocess.run(
        [sys.executable, "-m", "streaming_rag_cli", "demo", "--embedded", "--replay-speed", "0"],
        cwd=folder,
        env=env_without_pythonpath(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "identical event lists" in proc.stdout
    assert "was imported instead of ours" not in proc.stdout + proc.stderr


def test_worker_app_is_found_in_the_current_folder_without_pythonpath(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    folder = user_folder(tmp_path)
    script = Path(sys.executable).with_name("streaming-rag")
    if not script.is_file():
        pytest.skip(f"no streaming-rag console script beside {sys.executable}")
    log_path = tmp_path / "worker.log"
    argv = [str(script), "worker", "--app", "mymodule:build"]
    argv += ["--redis-url", redis_url, "--prefix", key_prefix]
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            argv, cwd=folder, env=env_without_pythonpath(), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        with StreamingRAGClient(redis_url, prefix=key_prefix, start_timeout=WAIT_S) as client:
            result = client.query("hello")
        assert result["answer"] == "answered by mymodule: hello", log_path.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=WAIT_S)
    assert worker.returncode == 0, log_path.read_text()
