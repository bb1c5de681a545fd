"""`make up` fails fast with a message naming what is missing, instead of hanging."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledgergate.shared.errors import StackError
from ledgergate.shared.settings import PROJECT_ROOT, StackSettings
from ledgergate.tools.devstack import kafka, postgres
from ledgergate.tools.devstack import stack as devstack


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def _settings(tmp_path: Path, **overrides: object) -> StackSettings:
    return StackSettings(data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]


def test_kafka_port_taken_is_named(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(StackError, match=f"port {taken_port} is taken"):
        kafka.start(_settings(tmp_path, kafka_port=taken_port, kafka_controller_port=_free_port()))


def test_postgres_port_taken_is_named(tmp_path: Path, taken_port: int) -> None:
    with pytest.raises(StackError, match=f"port {taken_port} is taken"):
        postgres.start(_settings(tmp_path, pg_port=taken_port))


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java, no mvn
    with pytest.raises(StackError, match="java is not installed"):
        kafka.start(_settings(tmp_path))


def test_full_disk_is_named(tmp_path: Path) -> None:
    huge_mb = 10**12  # more free space than any disk has: the check must refuse to start
    with pytest.raises(StackError, match="disk nearly full"):
        postgres.start(_settings(tmp_path, pg_port=_free_port(), min_free_disk_mb=huge_mb))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_clean_stops_nothing_running_and_deletes_the_data_dir(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    (s.data_dir / "kafka" / "logs").mkdir(parents=True)
    (s.data_dir / "kafka" / "logs" / "meta.properties").write_text("x")
    lines = devstack.clean(s)
    assert lines[:2] == ["kafka not running", "postgres not running"]
    assert lines[-1] == f"deleted {s.data_dir}"
    assert not s.data_dir.exists()
    assert devstack.clean(s)[-1].endswith("does not exist; nothing to delete")


@pytest.mark.parametrize("where", ["/", "home", "project", "project parent"])
def test_clean_refuses_root_home_and_the_project(where: str) -> None:
    data_dir = {"/": Path("/"), "home": Path("~"), "project": PROJECT_ROOT,
                "project parent": PROJECT_ROOT.parent}[where]
    with pytest.raises(StackError, match="refusing to delete"):
        devstack.clean(StackSettings(data_dir=data_dir))
    assert PROJECT_ROOT.is_dir() and Path.home().is_dir()
