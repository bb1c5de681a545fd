"""Static checks of docker-compose.yml and the Dockerfile.

No Docker engine is needed: a compose file that parses but points at a missing service, an
undeclared volume or a dependency that is only "started" fails for users at `docker compose up`,
long after review. Each check is a function returning the problems it finds, so the same code
runs against the real file and against deliberately broken copies (which proves it can fail).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from ledgergate.tools.run import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Every service `ledgergate run` knows must be in the compose file, and nothing else.
APP_SERVICES = set(SERVICES)
INFRA = ("kafka", "postgres")
RUN_RE = re.compile(r"^ledgergate\s+run\s+(\S+)\s*$")


# --- helpers --------------------------------------------------------------------------------


def _deps(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """depends_on in either syntax, as {name: options}; the list form means condition service_started."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: {"condition": "service_started"} for name in raw}
    return {name: (opts or {"condition": "service_started"}) for name, opts in raw.items()}


def _command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command")
    if cmd is None:
        return ""
    return " ".join(str(part) for part in cmd) if isinstance(cmd, list) else str(cmd)


def _named_volumes_used(service: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type", "volume") == "volume" and vol.get("source"):
                names.add(vol["source"])
            continue
        source = str(vol).split(":", 1)[0]
        # With a colon, a source that is not a path is a named volume; without one it is anonymous.
        if ":" in str(vol) and not source.startswith((".", "/", "~", "$")):
            names.add(source)
    return names


# --- checks ---------------------------------------------------------------------------------


def check_structure(doc: Any) -> list[str]:
    if not isinstance(doc, dict):
        return [f"top level is {type(doc).__name__}, not a mapping"]
    services = doc.get("services")
    if not isinstance(services, dict) or not services:
        return ["no `services` mapping"]
    return [
        f"service {name!r} is not a mapping" for name, svc in services.items() if not isinstance(svc, dict)
    ]


def check_depends_on_exist(doc: dict[str, Any]) -> list[str]:
    services = doc["services"]
    return [
        f"{name} depends on undefined service {dep!r}"
        for name, svc in services.items()
        for dep in _deps(svc)
        if dep not in services
    ]


def check_infra_healthy(doc: dict[str, Any]) -> list[str]:
    services = doc["services"]
    problems = [
        f"{infra} has no healthcheck" for infra in INFRA if not (services.get(infra) or {}).get("healthcheck")
    ]
    for name, svc in services.items():
        for dep, opts in _deps(svc).items():
            if dep in INFRA and opts.get("condition") != "service_healthy":
                problems.append(f"{name} waits for {dep} with {opts.get('condition')!r}, not service_healthy")
    return problems


def check_volumes_declared(doc: dict[str, Any]) -> list[str]:
    declared = set((doc.get("volumes") or {}).keys())
    return [
        f"{name} uses undeclared volume {vol!r}"
        for name, svc in doc["services"].items()
        for vol in sorted(_named_volumes_used(svc) - declared)
    ]


def check_run_commands(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    ran: dict[str, str] = {}
    for name, svc in doc["services"].items():
        m = RUN_RE.match(_command_text(svc))
        if m is None:
            continue
        target = m.group(1)
        if target in ran:
            problems.append(f"`ledgergate run {target}` appears in both {ran[target]} and {name}")
        ran[target] = name
        if target != name:
            problems.append(f"service {name} runs `ledgergate run {target}`")
    if set(ran) != APP_SERVICES:
        problems.append(
            f"`ledgergate run` targets are {sorted(ran)}; missing {sorted(APP_SERVICES - set(ran))}, "
            f"unexpected {sorted(set(ran) - APP_SERVICES)}"
        )
    return problems


def check_apps_wait_for_topics(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for name in sorted(APP_SERVICES & set(doc["services"])):
        deps = _deps(doc["services"][name])
        for dep, condition in (
            ("kafka", "service_healthy"),
            ("postgres", "service_healthy"),
            ("topics", "service_completed_successfully"),
        ):
            got = (deps.get(dep) or {}).get("condition")
            if got != condition:
                problems.append(f"{name} waits for {dep} with {got!r}, expected {condition}")
    return problems


def check_internal_bootstrap(doc: dict[str, Any]) -> list[str]:
    """The bootstrap given to containers must be an address the broker advertises."""
    services = doc["services"]
    kafka_env = (services.get("kafka") or {}).get("environment") or {}
    advertised = {
        part.split("://", 1)[1]
        for part in str(kafka_env.get("KAFKA_ADVERTISED_LISTENERS", "")).split(",")
        if "://" in part
    }
    problems = []
    for name, svc in services.items():
        env = svc.get("environment") or {}
        if not isinstance(env, dict) or "LEDGERGATE_KAFKA_BOOTSTRAP" not in env:
            continue
        bootstrap = env["LEDGERGATE_KAFKA_BOOTSTRAP"]
        if bootstrap not in advertised or bootstrap.startswith(("localhost:", "127.")):
            problems.append(f"{name} bootstraps from {bootstrap!r}; advertised: {sorted(advertised)}")
    return problems


def check_dockerfile(text: str) -> list[str]:
    problems = []
    instructions = [
        line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    copies = [line for line in instructions if line.upper().startswith(("COPY ", "ADD "))]
    if not any(re.search(r"\sschemas/?(\s|$)", line) for line in copies):
        problems.append("Dockerfile does not COPY schemas/")
    if not any(
        line.upper().startswith("USER ") and line.split()[1] not in ("root", "0") for line in instructions
    ):
        problems.append("Dockerfile never switches to a non-root USER")
    return problems


ALL_CHECKS = (
    check_depends_on_exist,
    check_infra_healthy,
    check_volumes_declared,
    check_run_commands,
    check_apps_wait_for_topics,
    check_internal_bootstrap,
)


# --- the real files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    assert COMPOSE.is_file(), f"{COMPOSE} is missing"
    doc = yaml.safe_load(COMPOSE.read_text())
    assert check_structure(doc) == []
    return doc


def test_compose_is_a_mapping_with_services(compose: dict[str, Any]) -> None:
    assert {*INFRA, "topics", *APP_SERVICES} <= set(compose["services"])


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda c: c.__name__)
def test_compose_check_passes(compose: dict[str, Any], check: Any) -> None:
    assert check(compose) == []


def test_topics_is_one_shot_after_kafka(compose: dict[str, Any]) -> None:
    topics = compose["services"]["topics"]
    assert _command_text(topics).split() == ["ledgergate", "topics", "apply"]
    assert str(topics.get("restart")) == "no"
    assert _deps(topics)["kafka"]["condition"] == "service_healthy"


def test_dockerfile(compose: dict[str, Any]) -> None:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    assert check_dockerfile(DOCKERFILE.read_text()) == []
    # Every service built here must build from that Dockerfile, at the project root.
    for name, svc in compose["services"].items():
        if "build" in svc:
            build = svc["build"]
            context = build if isinstance(build, str) else build.get("context", ".")
            assert context in (".", "./"), f"{name} builds from {context!r}"


# --- the checks can fail --------------------------------------------------------------------


def _broken(compose: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(compose)


def test_structure_check_rejects_non_mappings() -> None:
    assert check_structure(["services"])
    assert check_structure({"version": "3"})
    assert check_structure({"services": {"a": "image: x"}})


def test_missing_dependency_is_caught(compose: dict[str, Any]) -> None:
    doc = _broken(compose)
    doc["services"]["router"]["depends_on"] = {**_deps(doc["services"]["router"]), "zookeeper": {}}
    assert check_depends_on_exist(doc) == ["router depends on undefined service 'zookeeper'"]


def test_started_instead_of_healthy_is_caught(compose: dict[str, Any]) -> None:
    doc = _broken(compose)
    doc["services"]["policy"]["depends_on"] = ["kafka", "postgres"]
    assert len(check_infra_healthy(doc)) == 2
    doc = _broken(compose)
    del doc["services"]["postgres"]["healthcheck"]
    assert "postgres has no healthcheck" in check_infra_healthy(doc)


def test_undeclared_volume_is_caught(compose: dict[str, Any]) -> None:
    doc = _broken(compose)
    doc["services"]["api"]["volumes"] = ["scratch:/tmp/scratch", "./local:/mnt/local", "/anonymous"]
    assert check_volumes_declared(doc) == ["api uses undeclared volume 'scratch'"]
    doc["volumes"] = {**(doc.get("volumes") or {}), "scratch": None}
    assert check_volumes_declared(doc) == []


def test_run_command_drift_is_caught(compose: dict[str, Any]) -> None:
    doc = _broken(compose)
    del doc["services"]["projector"]
    assert any("missing ['projector']" in p for p in check_run_commands(doc))
    doc = _broken(compose)
    doc["services"]["policy"]["command"] = "ledgergate run policy-engine"
    assert check_run_commands(doc)


def test_not_waiting_for_topics_is_caught(compose: dict[str, Any]) -> None:
    doc = _broken(compose)
    deps = _deps(doc["services"]["api"])
    deps["topics"] = {"condition": "service_started"}
    doc["services"]["api"]["depends_on"] = deps
    assert check_apps_wait_for_topics(doc) == [
        "api waits for topics with 'service_started', expected service_completed_successfully"
    ]


def test_host_bootstrap_inside_containers_is_caught(compose: dict[str, Any]) -> None:
    doc = _broken(compose)
    doc["services"]["router"]["environment"] = {"LEDGERGATE_KAFKA_BOOTSTRAP": "localhost:9092"}
    assert check_internal_bootstrap(doc)


def test_dockerfile_check_can_fail() -> None:
    assert check_dockerfile("FROM python:3.11-slim\nCOPY shared/ shared/\n# COPY schemas/ schemas/\n") == [
        "Dockerfile does not COPY schemas/",
        "Dockerfile never switches to a non-root USER",
    ]
    assert check_dockerfile("FROM x\nCOPY schemas/ schemas/\nUSER app\n") == []
