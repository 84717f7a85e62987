"""The HTTP bridge's capacity: CPU per delivered SSE message with 100 / 500 / 1,000 watchers
of one answer, and how much a burst of 1,000 watchers connecting at once delays a new answer.

Three processes: the bridge under uvicorn (`create_app`, 127.0.0.1), a worker (`bench._worker`,
`bench.apps:web_app`) and this one (httpx watchers). (a) N watchers open
`GET /answers/{id}/events` of one answer whose LLM waits for them, then streams `--tokens`
tokens `--interval` s apart; the bridge's CPU (`/proc/<pid>/task/*/schedstat`) from the moment
every watcher is attached to the end of the answer, divided by the messages with an `id:` that
all watchers received. Levels alternate over `--rounds`. (b) Time from `POST /answers` to the
first `chunk` message at one subscriber of the new answer, measured over and over while a burst
of `--burst` watchers (another process) connects at once to another answer, versus the same
with no burst, alternating `--burst-rounds` times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ._common import ROOT, cpu_seconds, new_prefix, percentiles, server
from ._common import worker_process as worker
from ._tools import verdict

LEVELS = (100, 500, 1000)
TARGET_US = 15.0
TARGET_DELAY_P99_MS = 100.0
ID = b"\nid: "


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0), trust_env=False)


# -- the bridge process -----------------------------------------------------------------------
def serve(spec: dict[str, Any]) -> None:
    """`python -m bench.web serve SPEC`: the bridge under uvicorn."""
    import logging

    import uvicorn

    from streaming_rag_client.web import create_app

    _raise_nofile()
    logging.disable(logging.WARNING)  # the "bridge is open" warning: known, not measured
    app = create_app(redis_url=spec["redis_url"], prefix=spec["prefix"])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=spec["port"], log_level="error", access_log=False, backlog=4096
    )
    uvicorn.Server(config).run()


def _pythonpath() -> str:
    """The repository first, then whatever `PYTHONPATH` this process had (e.g. another copy
    of the client to compare with)."""
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


@contextlib.contextmanager
def bridge(url: str, prefix: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = {"redis_url": url, "prefix": prefix, "port": port}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.web", "serve", json.dumps(spec)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": _pythonpath()},
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/", timeout=1, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the bridge did not start")
            time.sleep(0.05)
        yield proc, base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- watchers ---------------------------------------------------------------------------------
class Watcher:
    """One SSE connection: counts messages with an `id:`; `attached` once the first bytes came."""

    def __init__(self) -> None:
        self.messages = 0
        self.attached = asyncio.Event()

    async def run(self, client: httpx.AsyncClient, url: str) -> None:
        tail = b""
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                self.attached.set()
                data = tail + chunk
                self.messages += data.count(ID)
                tail = data[-4:]


async def submit(client: httpx.AsyncClient, base: str, query: str) -> str:
    response = await client.post(base + "/answers", json={"query": query})
    response.raise_for_status()
    return base + str(response.json()["events_url"])


async def one_level(base: str, pid: int, n: int, tokens: int, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        gate = Path(tmp) / "go"
        async with _client() as client:
            query = f"gate={gate} tokens={tokens} interval={interval}"
            events_url = await submit(client, base, query)
            watchers = [Watcher() for _ in range(n)]
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(w.run(client, events_url)) for w in watchers]
            await asyncio.gather(*(w.attached.wait() for w in watchers))
            attach_s = time.perf_counter() - t0
            await asyncio.sleep(0.3)  # catch-up events delivered; the bridge goes quiet
            before = [w.messages for w in watchers]
            cpu = cpu_seconds(pid)
            t1 = time.perf_counter()
            gate.touch()
            await asyncio.gather(*tasks)
            answer_s = time.perf_counter() - t1
            cpu = cpu_seconds(pid) - cpu
    delivered = sum(w.messages - b for w, b in zip(watchers, before, strict=True))
    return {
        "watchers": n,
        "attach_s": attach_s,
        "answer_s": answer_s,
        "delivered": delivered,
        "expected": n * (tokens + 1),  # chunks + generation_done (+ job_done is not counted)
        "bridge_cpu_s": cpu,
        "us_per_message": cpu / delivered * 1e6 if delivered else float("nan"),
    }


# -- the burst --------------------------------------------------------------------------------
def burst(events_url: str, n: int) -> None:
    """`python -m bench.web burst URL N`: open N watchers at once, print how long until all
    got their first bytes, then hold them until stdin closes."""
    _raise_nofile()

    async def go() -> None:
        async with _client() as client:
            watchers = [Watcher() for _ in range(n)]
            print("go", flush=True)
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(w.run(client, events_url)) for w in watchers]
            await asyncio.gather(*(w.attached.wait() for w in watchers))
            print(f"{time.perf_counter() - t0:.4f}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(go())


async def first_token_ms(client: httpx.AsyncClient, base: str) -> float:
    t0 = time.perf_counter()
    events_url = await submit(client, base, "tokens=3")
    async with client.stream("GET", events_url) as response:
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            if b"event: chunk\n" in buffer:
                return (time.perf_counter() - t0) * 1000
    raise RuntimeError("the answer ended without a chunk")


async def delays(base: str, watchers: int, probes: int, with_burst: bool) -> dict[str, Any]:
    """`probes` new answers one after another, while `watchers` connect at once (with_burst)."""
    async with _client() as client:
        await first_token_ms(client, base)  # warm connection
        proc = None
        hot_url = await submit(client, base, "gate=/nonexistent tokens=1")
        if with_burst:
            proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the probes)
                [sys.executable, "-m", "bench.web", "burst", hot_url, str(watchers)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert proc.stdout is not None
            await asyncio.to_thread(proc.stdout.readline)  # "go": the burst starts now
            done = asyncio.create_task(asyncio.to_thread(proc.stdout.readline))
        samples = [await first_token_ms(client, base) for _ in range(probes)]
        connected_s = None
        if proc is not None:  # keep probing while the burst is still connecting
            while not done.done() and len(samples) < 4 * probes:
                samples.append(await first_token_ms(client, base))
            line = await done
            connected_s = float(line) if line.strip() else None
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
        await client.delete(hot_url.rsplit("/events", 1)[0])
    return {"samples_ms": samples, "burst_connected_s": connected_s}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "serve":
        serve(json.loads(argv[1]))
        return 0
    if argv and argv[0] == "burst":
        burst(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench web", description=__doc__)
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="100,500,1000")
    parser.add_argument("--rounds", type=int, default=2, help="answers per level (alternating)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument("--burst", type=int, default=1000, help="watchers in the burst")
    parser.add_argument("--burst-rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=8, help="new answers per round")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    _raise_nofile()
    levels = [int(x) for x in args.levels.split(",")]
    with server() as (url, where):
        prefix = new_prefix("web")
        with worker(url, prefix, "bench.apps:web_app"), bridge(url, prefix) as (proc, base):
            asyncio.run(one_level(base, proc.pid, 10, 20, 0.0))  # warm-up: not reported
            runs = [
                asyncio.run(one_level(base, proc.pid, n, args.tokens, args.interval))
                for _ in range(args.rounds)
                for n in levels
            ]
            quiet: list[float] = []
            loaded: list[float] = []
            connected: list[float] = []
            for _ in range(args.burst_rounds):
                quiet += asyncio.run(delays(base, args.burst, args.probes, False))["samples_ms"]
                got = asyncio.run(delays(base, args.burst, args.probes, True))
                loaded += got["samples_ms"]
                if got["burst_connected_s"] is not None:
                    connected.append(got["burst_connected_s"])
    per_level = {n: [r["us_per_message"] for r in runs if r["watchers"] == n] for n in levels}
    cpu = {n: _spread(v) for n, v in per_level.items()}
    quiet_p, loaded_p = percentiles(quiet), percentiles(loaded)
    delay_p99 = loaded_p["p99"] - quiet_p["p99"]
    result = {
        "server": where,
        "runs": runs,
        "us_per_message": cpu,
        "first_token_quiet_ms": quiet_p,
        "first_token_burst_ms": loaded_p,
        "burst_connected_s": connected,
        "delay_p50_ms": loaded_p["p50"] - quiet_p["p50"],
        "delay_p99_ms": delay_p99,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"web: bridge under uvicorn, {args.tokens} tokens {args.interval * 1000:g} ms apart, "
        f"{args.rounds} answers per level, alternating ({where})"
    )
    print(f"{'watchers':>9}{'µs/msg median':>15}{'min-max':>15}{'delivered':>11}{'answer s':>10}")
    for n in levels:
        c, rs = cpu[n], [r for r in runs if r["watchers"] == n]
        delivered = f"{min(r['delivered'] / r['expected'] for r in rs):.0%}"
        answer = statistics.median(r["answer_s"] for r in rs)
        print(
            f"{n:>9}{c['median']:>15.1f}{c['min']:>8.1f}-{c['max']:<6.1f}"
            f"{delivered:>11}{answer:>10.2f}"
        )
    worst = max(c["median"] for c in cpu.values())
    ok = verdict(worst <= TARGET_US)
    print(f"bridge CPU per delivered message, target <= {TARGET_US:g} µs: {ok}")
    print(
        f"first token of a new answer: quiet p50 {quiet_p['p50']:.1f} / p99 "
        f"{quiet_p['p99']:.1f} ms;"
        f" during a {args.burst}-watcher burst p50 {loaded_p['p50']:.1f} / p99 "
        f"{loaded_p['p99']:.1f} ms (n={len(loaded)}); burst attached in "
        + ", ".join(f"{s:.2f}" for s in connected)
        + " s"
    )
    print(
        f"first token delayed by the burst, p99 {delay_p99:.1f} ms (p50 "
        f"{result['delay_p50_ms']:.1f}), target <= {TARGET_DELAY_P99_MS:g} ms: "
        f"{verdict(delay_p99 <= TARGET_DELAY_P99_MS)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
