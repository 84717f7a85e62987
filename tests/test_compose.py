"""docker-compose.yml and the Dockerfile agree with the CLI: every `streaming-rag` command they
run parses with the real parser, and every env variable they set is one the CLI/worker reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from streaming_rag_cli import ENV_VARS, build_parser, subcommands

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
#: Sources where each variable of ENV_VARS must actually be read.
READERS = sorted((ROOT / "cli" / "streaming_rag_cli").glob("*.py"))
READERS += [
    ROOT / "worker" / "streaming_rag_worker" / name
    for name in ("config.py", "demo_app.py", "llm_app.py")
]
READERS += sorted((ROOT / "client" / "streaming_rag_client").glob("*.py"))  # the web app


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _built(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services running our image (built from the Dockerfile)."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def _environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _entrypoint() -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("ENTRYPOINT")]
    assert len(lines) == 1
    value = json.loads(lines[0].removeprefix("ENTRYPOINT").strip())
    assert isinstance(value, list)
    return value


def test_dockerfile_builds_the_cli_image() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert _entrypoint() == ["streaming-rag"]
    for package in ("streaming_rag", "worker", "client", "cli"):
        assert re.search(rf"^COPY {package}/ {package}/$", text, re.M), package
        assert (ROOT / package).is_dir()


def test_compose_has_redis_worker_and_a_one_shot_ask(services: dict[str, dict[str, Any]]) -> None:
    assert services["redis"]["image"].startswith("redis:7")
    built = _built(services)
    assert {"worker", "ask"} <= set(built)
    for svc in built.values():
        build = svc["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").is_file()
    assert services["worker"]["command"][0] == "worker"
    assert services["ask"]["command"][0] == "ask"
    assert services["ask"]["profiles"] == ["tools"]
    assert "worker" not in services["worker"].get("profiles", [])


def test_every_command_parses_with_the_cli_parser(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    known = subcommands(parser)
    for name, svc in _built(services).items():
        command = svc["command"]
        assert isinstance(command, list), f"{name}: use the list form of command"
        assert command[0] in known, f"{name}: unknown subcommand {command[0]!r}"
        flags = {opt for action in known[command[0]]._actions for opt in action.option_strings}
        for arg in command[1:]:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in flags, f"{name}: unknown flag {arg!r}"
        try:
            args = parser.parse_args(command)
        except SystemExit:  # argparse reports on stderr and exits
            pytest.fail(f"service {name!r}: `streaming-rag {' '.join(command)}` does not parse")
        assert args.command == command[0]


def _is_read(var: str) -> bool:
    """True if some reader module reads `var` from the environment: `environ.get("VAR")`,
    an entry `"VAR": (...)` of worker.config's table, or a constant `NAME = "VAR"` that is
    itself passed to `environ.get(NAME)`."""
    for path in READERS:
        if not path.is_file():  # written by a later change
            continue
        text = path.read_text()
        if re.search(rf'environ\.get\(\s*"{var}"', text):
            return True
        if re.search(rf'^\s+"{var}": \(', text, re.M):
            return True
        for const in re.findall(rf'^(\w+) = "{var}"$', text, re.M):
            if re.search(rf"environ\.get\(\s*{const}\b", text):
                return True
    return False


def test_every_env_variable_is_read_by_the_cli_or_worker(
    services: dict[str, dict[str, Any]],
) -> None:
    used: set[str] = set()
    for name, svc in _built(services).items():
        env = _environment(svc)
        unknown = set(env) - set(ENV_VARS)
        assert not unknown, f"{name} sets variables the CLI does not document: {sorted(unknown)}"
        used |= set(env)
    assert {"REDIS_URL", "STREAMING_RAG_APP", "STREAMING_RAG_PREFIX"} <= used
    for var in used:
        assert _is_read(var), f"{var} is set in docker-compose.yml but read nowhere"


def test_every_documented_variable_is_read_somewhere() -> None:
    for var in ENV_VARS:
        assert _is_read(var), f"{var} is documented in `streaming-rag --help` but read nowhere"


def test_services_point_at_the_redis_service(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in _built(services).items():
        url = _environment(svc)["REDIS_URL"]
        host = re.match(r"redis://([^:/]+)", url)
        assert host and host.group(1) in services, f"{name}: {url} names no service"
        assert "redis" in svc.get("depends_on", {}), name


def test_worker_app_and_prefix_are_valid(services: dict[str, dict[str, Any]]) -> None:
    from streaming_rag_worker import WorkerConfig
    from streaming_rag_worker.app import load_app

    env = _environment(services["worker"])
    load_app(env["STREAMING_RAG_APP"])  # importable, returns a StreamingRAG
    prefix = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", env["STREAMING_RAG_PREFIX"])
    config = WorkerConfig.from_env({**env, "STREAMING_RAG_PREFIX": prefix})
    assert config.prefix == prefix == "srag"
    ask_env = _environment(services["ask"])
    assert ask_env["STREAMING_RAG_PREFIX"] == env["STREAMING_RAG_PREFIX"]
    assert ask_env["REDIS_URL"] == env["REDIS_URL"]


def test_the_cluster_profile_puts_the_events_on_its_three_nodes(
    services: dict[str, dict[str, Any]],
) -> None:
    from streaming_rag.wire import parse_url

    nodes = {n for n, s in services.items() if n.startswith("redis-node-")}
    assert len(nodes) == 3
    for name in nodes:
        assert services[name]["profiles"] == ["cluster"]
        assert "--cluster-enabled" in services[name]["command"]
    for name in ("worker-cluster", "api-cluster"):
        env = _environment(services[name])
        spec = parse_url(env["STREAMING_RAG_EVENTS_URL"])
        assert spec.kind == "cluster"
        assert {host for host, _ in spec.nodes} == nodes
        assert parse_url(env["REDIS_URL"]).kind == "standalone"  # the queue: never the cluster
        assert "cluster-init" in services[name]["depends_on"]
