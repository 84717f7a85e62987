"""The Node side of `python -m bench resumable`: Vercel's `resumable-stream`, installed with
npm into a cache folder keyed by the pinned versions, driven through the line protocol of
`bench/resumable_driver/{producer,reader}.mjs` (one JSON command per stdin line, one JSON
answer per stdout line).

`Theirs` runs one producer process and one reader process (both kept warm across runs); the
kill scenario starts a producer of its own and SIGKILLs it. Every wait is bounded; a driver
that stops answering raises `DriverError`.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ._common import ROOT, cpu_seconds, percentiles

DRIVER_DIR = ROOT / "bench" / "resumable_driver"
#: pinned, so runs compare the same code; the cache folder is named after them
PACKAGES = ("resumable-stream@2.2.13", "redis@6.3.1")
NODE_MAJOR_MIN = 20  # resumable-stream uses the global `crypto` and web streams
INSTALL_TIMEOUT_S = 300.0
ANSWER_TIMEOUT_S = 30.0


class NodeUnavailable(Exception):
    """Node, npm or the packages cannot be had; the message says why (the bench skips)."""


class DriverError(RuntimeError):
    """A driver process answered with an error, died, or did not answer in time."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streaming-rag" / "bench-node"


def cache_key(packages: tuple[str, ...] = PACKAGES) -> str:
    """`resumable-stream-2.2.13_redis-6.3.1`: the install folder's name."""
    return "_".join(spec.replace("@", "-").strip("-") for spec in packages)


def check_node() -> str | None:
    """Why Node cannot run the drivers (missing, too old), or None when it can."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if not path)
        return f"{missing} not found on PATH"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
        major = int(out.stdout.strip().lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        return f"`node --version` failed: {type(exc).__name__}"
    if major < NODE_MAJOR_MIN:
        return f"node {out.stdout.strip()} is too old (needs >= {NODE_MAJOR_MIN})"
    return None


def _installed(modules: Path) -> bool:
    for spec in PACKAGES:
        name, _, version = spec.rpartition("@")
        manifest = modules / name / "package.json"
        try:
            if json.loads(manifest.read_text())["version"] != version:
                return False
        except (OSError, ValueError, KeyError):
            return False
    return True


def ensure_packages(cache: Path, fresh: bool = False) -> Path:
    """The `node_modules` folder holding `PACKAGES`, installed with npm on first use (or
    again with `fresh`); raises `NodeUnavailable` with the reason when it cannot be."""
    folder = cache / cache_key()
    modules = folder / "node_modules"
    if not fresh and _installed(modules):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise NodeUnavailable("npm not found on PATH")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), *PACKAGES]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NodeUnavailable(f"npm install failed: {type(exc).__name__}") from exc
    if done.returncode != 0 or not _installed(modules):
        lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
        raise NodeUnavailable(f"npm install failed: {lines[-1][:200]}")
    return modules


class Driver:
    """One Node driver process; answers are read by a thread into a queue (bounded waits)."""

    def __init__(self, script: str, url: str, key_prefix: str, modules: Path) -> None:
        self.proc = subprocess.Popen(
            ["node", str(DRIVER_DIR / script), url, key_prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "BENCH_NODE_MODULES": str(modules)},
        )
        self.pid = self.proc.pid
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.versions: dict[str, str] = self.expect("started")["versions"]

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._answers.put(json.loads(line))
            except ValueError:
                continue
        self._answers.put(None)  # end of output: the process is gone

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip():
                self._stderr.append(line.strip())

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise DriverError(f"driver gone: {exc}") from exc

    def expect(self, key: str, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """The next answer holding `key` (errors raise; other answers are skipped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DriverError(f"no {key!r} answer within {timeout_s:.0f} s") from None
            if answer is None:
                code = self.proc.wait(10)
                said = next((line for line in reversed(self._stderr) if "Error" in line), "")
                said = said or (self._stderr[-1] if self._stderr else "no stderr")
                raise DriverError(f"driver exited (code {code}) before {key!r}: {said[:200]}")
            if "error" in answer:
                raise DriverError(str(answer["error"])[:300])
            if key in answer:
                return answer

    def ask(self, command: dict[str, Any], key: str, timeout_s: float = ANSWER_TIMEOUT_S) -> Any:
        self.send(command)
        return self.expect(key, timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        """Closes stdin (the driver exits once its work settles); SIGKILL after 10 s."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


class Theirs:
    """resumable-stream: a warm producer process and a warm reader process."""

    label = "resumable-stream"

    def __init__(self, url: str, key_prefix: str, modules: Path) -> None:
        self.url, self.key_prefix, self.modules = url, key_prefix, modules
        self.producer = Driver("producer.mjs", url, key_prefix, modules)
        self.reader = Driver("reader.mjs", url, key_prefix, modules)
        self.versions = self.producer.versions

    def close(self) -> None:
        self.producer.close()
        self.reader.close()

    def run_level(self, tokens: int, interval_ms: float, readers: int) -> dict[str, Any]:
        """One stream of `tokens` tokens (`interval_ms` apart) to `readers` readers that
        attached before the first token: producer CPU per token, lag at the readers."""
        stream_id = uuid.uuid4().hex
        produce = {"cmd": "produce", "id": stream_id, "tokens": tokens, "interval_ms": interval_ms}
        self.producer.ask(produce, "ready")
        budget_s = ANSWER_TIMEOUT_S + tokens * interval_ms / 1000 * 2
        if readers:
            attach = {"cmd": "attach", "id": stream_id, "n": readers, "timeout_ms": budget_s * 1e3}
            attached = self.reader.ask(attach, "attached")
            if attached["missing"]:
                raise DriverError(f"{attached['missing']} readers found no stream")
        before = cpu_seconds(self.producer.pid)
        done = self.producer.ask({"cmd": "go", "id": stream_id}, "done", budget_s)
        cpu = cpu_seconds(self.producer.pid) - before
        result: dict[str, Any] = {
            "cpu_us_per_token": cpu / tokens * 1e6,
            "self_reported_cpu_us_per_token": done["cpu_us"] / tokens,
            "readers": readers,
        }
        if readers:
            finished = self.reader.expect("finished", budget_s + 5)
            result["lag_ms"] = percentiles(finished["lags_ms"]) if finished["lags_ms"] else None
            result["complete"] = all(n == tokens for n in finished["tokens"])
            result["ends"] = finished["ends"]
        return result

    def late_join(self, tokens: int) -> dict[str, Any]:
        """A stream of `tokens` fast tokens finishes; then one reader asks for it."""
        stream_id = uuid.uuid4().hex
        produce = {"cmd": "produce", "id": stream_id, "tokens": tokens, "interval_ms": 0}
        self.producer.ask(produce, "ready")
        self.producer.ask({"cmd": "go", "id": stream_id}, "done")
        late = self.reader.ask({"cmd": "late", "id": stream_id, "timeout_ms": 10_000}, "late")
        return {
            "got": late["got"],
            "tokens": late["tokens"],
            "whole_answer": late["tokens"] == tokens,
            "ms": late["ms"],
        }

    def killed(self, tokens: int, interval_ms: float, wait_s: float) -> dict[str, Any]:
        """A producer of its own is SIGKILLed once the one reader has half the tokens; what
        that reader sees within `wait_s` seconds after the kill."""
        victim = Driver("producer.mjs", self.url, self.key_prefix, self.modules)
        try:
            stream_id = uuid.uuid4().hex
            produce = {
                "cmd": "produce",
                "id": stream_id,
                "tokens": tokens,
                "interval_ms": interval_ms,
            }
            victim.ask(produce, "ready")
            budget_ms = (tokens * interval_ms / 1000 + wait_s) * 1e3
            half = tokens // 2
            attach = {
                "cmd": "attach",
                "id": stream_id,
                "n": 1,
                "timeout_ms": budget_ms,
                "progress_at": half,
            }
            self.reader.ask(attach, "attached")
            victim.send({"cmd": "go", "id": stream_id})
            self.reader.expect("progress", budget_ms / 1e3)
            victim.kill()
            killed_at = time.monotonic()
            finished = self.reader.expect("finished", budget_ms / 1e3 + 10)
            after_s = time.monotonic() - killed_at
        finally:
            victim.kill()
        end = finished["ends"][0]
        return {
            "tokens": finished["tokens"][0],
            "of": tokens,
            "end": f"no end (waited {after_s:.0f} s)" if end == "timeout" else end,
            "ended": end != "timeout",
            "s_after_kill": after_s,
        }
