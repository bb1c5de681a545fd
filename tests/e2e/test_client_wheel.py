"""The public package as an agent app gets it: build the client wheel, install it into a fresh virtualenv
that holds nothing else (no checkout on its path), and get a decision from the running gate through it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import venv
import zipfile
from pathlib import Path

from ledgergate.shared.settings import PROJECT_ROOT
from tests.e2e.conftest import Gate

APP = r"""
import json, sys
import ledgergate
from ledgergate import GateClient

try:
    import ledgergate.shared
    server = True
except ModuleNotFoundError:
    server = False
bootstrap, prefix, tenant = sys.argv[1:4]
with GateClient(bootstrap, topic_prefix=prefix, timeout_s=30) as gate:
    gate.send_command(tenant, "SET_LIMIT", 50_000_000)
    decision = gate.request(tenant, [{"role": "user", "content": "Summarise the ledger."}], "gpt-4o-mini",
                            max_output_tokens=64, workflow_id="wheel", timeout_s=30)
print(json.dumps({"file": ledgergate.__file__, "server": server, "outcome": decision["outcome"],
                  "request_id": decision["request_id"], "tenant_id": decision["tenant_id"]}))
"""


def build_wheel(out: Path) -> Path:
    # From a copy: setuptools builds in the source folder and would carry stale files from an earlier build.
    # copytree follows the schemas link, as the wheel build does.
    source = out / "client-src"
    shutil.copytree(PROJECT_ROOT / "client", source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, cwd=out)
    (wheel,) = out.glob("ledgergate-*.whl")
    return wheel


def test_the_client_wheel_carries_its_schemas_and_nothing_of_the_server(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    # The current schemas and every earlier version in history/ (old messages stay decodable by the SDK too).
    avro = PROJECT_ROOT / "schemas" / "avro"
    schemas = sorted(str(p.relative_to(avro)) for p in avro.rglob("*.avsc"))
    assert any(s.startswith("history/") for s in schemas)
    assert sorted(n.removeprefix("ledgergate/schemas/avro/") for n in names
                  if n.startswith("ledgergate/schemas/avro/")) == schemas
    assert "ledgergate/schemas/topics.yaml" in names
    assert not [n for n in names if n.startswith(("ledgergate/shared", "ledgergate/services", "ledgergate/tools"))]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    lines = zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
    requires = [line for line in lines if line.startswith("Requires-Dist:")]

    def name(requirement: str) -> str:
        return requirement.split()[1].split(">")[0].split("<")[0].split("=")[0].split(";")[0]

    # Needed: the two. Each framework integration is an extra (`pip install 'ledgergate[openai]'`), never needed.
    assert sorted(name(r) for r in requires if "extra ==" not in r) == ["confluent-kafka", "fastavro"]
    extras = {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra:")}
    assert extras == {"openai", "langchain", "litellm"}
    assert {name(r) for r in requires if "extra ==" in r} == {"openai", "langchain-core", "litellm"}


def test_an_app_with_only_the_client_wheel_gets_a_decision(gate: Gate, tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "app-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LEDGERGATE_"))}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, env=clean, cwd=tmp_path)
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                               check=True, env=clean, cwd=tmp_path, capture_output=True, text=True).stdout
    assert {p["name"].lower() for p in json.loads(installed)} - {"pip", "setuptools"} == {
        "ledgergate", "confluent-kafka", "fastavro"}
    tenant = f"wheel-{uuid.uuid4().hex[:8]}"
    out = subprocess.run([str(python), "-c", APP, gate.kafka.kafka_bootstrap, gate.kafka.topic_prefix, tenant],
                         check=False, env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(env_dir)), result
    assert result["server"] is False
    assert result["tenant_id"] == tenant and result["outcome"] == "ALLOW", result
