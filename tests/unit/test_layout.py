"""The layers of docs/architecture.md, checked on the source so a later change cannot bring an upward
import back: the public package imports nothing of the server, the library imports neither the services
nor the tools, a service imports no other service and no tool, and no module imports a generic top-level
name (`shared`, `services`, `tools`) that an installed server would put into site-packages."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import yaml

from ledgergate import topics

ROOT = Path(__file__).resolve().parents[2]
# Where each part of the `ledgergate` import name lives in the checkout (pyproject.toml maps the same).
FOLDERS = {"ledgergate": ROOT / "client" / "ledgergate", "ledgergate.shared": ROOT / "shared",
           "ledgergate.services": ROOT / "services", "ledgergate.tools": ROOT / "tools"}
PUBLIC_THIRD_PARTY = {"confluent_kafka", "fastavro"}
# Optional imports of the public package: tried inside a function, ImportError meaning "not installed"
# (tests/unit/test_tracecontext.py runs that module without it). Only these, only in these modules.
PUBLIC_OPTIONAL = {"ledgergate.tracecontext": {"opentelemetry"}}
# The framework integrations: each module is the framework's adapter, so it imports the framework at
# load; the framework is that module's extra in client/pyproject.toml, and nothing else imports the module.
PUBLIC_EXTRAS = {
    "ledgergate.integrations.openai": ("openai", "openai"),
    "ledgergate.integrations.langchain": ("langchain_core", "langchain"),
    "ledgergate.integrations.litellm": ("litellm", "litellm"),
}
GENERIC_NAMES = {"shared", "services", "tools", "bench"}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for prefix, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([prefix, *parts])
            if prefix == "ledgergate" and name.split(".")[1:2] == ["schemas"]:
                continue
            found[name] = path
    return found


def imports(path: Path, name: str, *, top_level_only: bool = False) -> set[str]:
    """Absolute module names a file imports (relative imports resolved); with top_level_only, only those
    run when the module is imported (not inside functions, not under `if TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "ledgergate":
        return "outside"
    return parts[1] if len(parts) > 1 and parts[1] in ("shared", "services", "tools") else "public"


def test_no_module_imports_a_layer_above_it_or_a_generic_top_level_name() -> None:
    allowed = {"public": {"public"}, "shared": {"public", "shared"}, "services": {"public", "shared", "services"},
               "tools": {"public", "shared", "services", "tools"}}
    problems = []
    for name, path in sorted(modules().items()):
        own = layer(name)
        for target in sorted(imports(path, name)):
            top = target.split(".")[0]
            if top in GENERIC_NAMES:
                problems.append(f"{name} imports the generic top-level name {target!r}")
            elif top == "ledgergate" and layer(target) not in allowed[own]:
                problems.append(f"{name} ({own}) imports {target} ({layer(target)})")
            elif own == "services" and top == "ledgergate" and layer(target) == "services":
                mine, theirs = name.split(".")[2], target.split(".")[2:3]
                if theirs and theirs[0] != mine:
                    problems.append(f"service module {name} imports another service's {target}")
    assert problems == []


def test_the_public_package_needs_only_confluent_kafka_and_fastavro() -> None:
    stdlib = sys.stdlib_module_names
    problems = []
    for name, path in sorted(modules().items()):
        if layer(name) != "public":
            continue
        for target in imports(path, name):
            top = target.split(".")[0]
            if name in PUBLIC_EXTRAS and top == PUBLIC_EXTRAS[name][0]:
                continue
            if top in PUBLIC_OPTIONAL.get(name, ()):
                assert target not in imports(path, name, top_level_only=True), f"{name} imports {target} at load"
                continue
            if top not in stdlib and top not in PUBLIC_THIRD_PARTY and top not in ("ledgergate", "__future__"):
                problems.append(f"{name} imports {target}")
    assert problems == []
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())
    assert {d.split(">")[0].split("=")[0].split("<")[0] for d in client["project"]["dependencies"]} == {
        "confluent-kafka", "fastavro"}
    extras = client["project"].get("optional-dependencies", {})
    assert set(extras) == {extra for _, extra in PUBLIC_EXTRAS.values()}


def test_no_module_imports_a_framework_integration() -> None:
    # `import ledgergate` must work without any framework installed: only tests and users import these.
    for name, path in modules().items():
        if layer(name) == "public" and name not in PUBLIC_EXTRAS:
            assert not set(imports(path, name)) & set(PUBLIC_EXTRAS), name


def test_no_import_cycles_at_module_load() -> None:
    found = modules()
    graph = {}
    for name, path in found.items():
        targets = {t for t in imports(path, name, top_level_only=True) if t in found and t != name}
        # `from pkg import mod` names the package too; importing a package's own __init__ is not a cycle.
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_pyproject_lists_every_package_of_every_folder() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {name: ROOT / folder for name, folder in project["package-dir"].items()}
    assert {name: path.resolve() for name, path in mapped.items() if name in FOLDERS} == {
        name: folder.resolve() for name, folder in FOLDERS.items()}
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    # The data folders (schemas, price catalogues) are packages of data files only.
    listed = {p for p in project["packages"] if not p.startswith(("ledgergate.schemas", "ledgergate.shared.data"))}
    assert listed == packages


def test_topic_names_match_the_topic_definitions() -> None:
    doc = yaml.safe_load((ROOT / "schemas" / "topics.yaml").read_text())
    assert set(topics.ALL) == set(doc["topics"])
