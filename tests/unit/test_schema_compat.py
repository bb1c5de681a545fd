"""Schema evolution guard: incompatible changes and unfrozen earlier versions are caught before merge."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ledgergate.codec import schema_fingerprint
from ledgergate.errors import SchemaError
from ledgergate.shared.schema_compat import check_all, check_backward, freeze
from ledgergate.shared.settings import PROJECT_ROOT

SCHEMA_FILES = sorted((PROJECT_ROOT / "schemas" / "avro").glob("*.avsc"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _with_long_field() -> tuple[Path, dict[str, Any], int]:
    for path in SCHEMA_FILES:
        raw = _load(path)
        for i, field in enumerate(raw["fields"]):
            if field["type"] == "long":
                return path, raw, i
    raise AssertionError("no current schema has a top-level long field")


def _add_field(raw: dict[str, Any], **field: Any) -> dict[str, Any]:
    new = copy.deepcopy(raw)
    new["fields"].append({"name": "added_in_test", **field})
    return new


def _long_to_string(raw: dict[str, Any], index: int) -> dict[str, Any]:
    new = copy.deepcopy(raw)
    new["fields"][index]["type"] = "string"
    return new


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Neither the developer's git config nor a repository above tmp_path may change the outcome.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


def test_real_repository_is_consistent() -> None:
    assert check_all(PROJECT_ROOT) == []


# --- check_backward ----------------------------------------------------------------------------


def test_identical_schema_is_compatible() -> None:
    _, raw, _ = _with_long_field()
    assert check_backward(raw, raw) == []


def test_added_field_without_default_is_incompatible() -> None:
    _, raw, _ = _with_long_field()
    problems = check_backward(_add_field(raw, type="string"), raw)
    assert len(problems) == 1
    assert "reader_field_missing_default_value" in problems[0]
    assert "added_in_test" in problems[0]


def test_added_field_with_default_is_compatible() -> None:
    _, raw, _ = _with_long_field()
    assert check_backward(_add_field(raw, type="string", default=""), raw) == []
    assert check_backward(_add_field(raw, type=["null", "long"], default=None), raw) == []


def test_long_to_string_is_incompatible() -> None:
    _, raw, i = _with_long_field()
    problems = check_backward(_long_to_string(raw, i), raw)
    assert len(problems) == 1
    assert "type_mismatch" in problems[0]
    assert raw["fields"][i]["name"] in problems[0]  # the location names the field, not "/fields/3"


def test_removed_enum_symbol_is_incompatible() -> None:
    raw = {"type": "record", "name": "E", "fields": [
        {"name": "k", "type": {"type": "enum", "name": "K", "symbols": ["A", "B"]}}]}
    reader = copy.deepcopy(raw)
    reader["fields"][0]["type"]["symbols"] = ["A"]
    assert "missing_enum_symbols" in check_backward(reader, raw)[0]


def test_invalid_schema_is_a_problem_not_a_crash() -> None:
    _, raw, _ = _with_long_field()
    assert check_backward({"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}, raw)


# --- check_all and freeze on a copy -------------------------------------------------------------


def _copy_schemas(root: Path) -> None:
    shutil.copytree(PROJECT_ROOT / "schemas" / "avro", root / "schemas" / "avro",
                    ignore=shutil.ignore_patterns("history"))


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false",
         *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def _git_repo(root: Path) -> None:
    _copy_schemas(root)
    _git(root, "init", "-q")
    _git(root, "add", "schemas")
    _git(root, "commit", "-q", "-m", "schemas")


def _write(path: Path, raw: dict[str, Any]) -> None:
    path.write_text(json.dumps(raw, indent=2) + "\n")


def test_non_git_directory_checks_history_only(tmp_path: Path) -> None:
    _copy_schemas(tmp_path)
    path, raw, _ = _with_long_field()
    _write(tmp_path / "schemas" / "avro" / path.name, _add_field(raw, type="string", default=""))
    assert check_all(tmp_path) == []


def test_history_the_current_schema_cannot_read_is_reported(tmp_path: Path) -> None:
    _copy_schemas(tmp_path)
    _, raw, i = _with_long_field()
    old = _long_to_string(raw, i)
    hist = tmp_path / "schemas" / "avro" / "history" / raw["name"] / f"{schema_fingerprint(old).hex()}.avsc"
    hist.parent.mkdir(parents=True)
    _write(hist, old)
    problems = check_all(tmp_path)
    assert len(problems) == 1
    assert "type_mismatch" in problems[0] and str(hist.relative_to(tmp_path)) in problems[0]


def test_history_file_named_with_wrong_fingerprint_is_reported(tmp_path: Path) -> None:
    _copy_schemas(tmp_path)
    _, raw, _ = _with_long_field()
    hist = tmp_path / "schemas" / "avro" / "history" / raw["name"] / "0000000000000000.avsc"
    hist.parent.mkdir(parents=True)
    _write(hist, raw)
    assert any(schema_fingerprint(raw).hex() in p for p in check_all(tmp_path))


def test_incompatible_edit_of_committed_schema_is_reported(tmp_path: Path) -> None:
    _git_repo(tmp_path)
    path, raw, i = _with_long_field()
    current = tmp_path / "schemas" / "avro" / path.name
    freeze(tmp_path, raw["name"])  # even with the old version kept, the new one cannot read it
    _write(current, _long_to_string(raw, i))
    problems = check_all(tmp_path)
    assert any("type_mismatch" in p and p.startswith(f"schemas/avro/{path.name} at ") for p in problems)


def test_compatible_edit_without_freeze_reports_missing_history(tmp_path: Path) -> None:
    _git_repo(tmp_path)
    path, raw, _ = _with_long_field()
    _write(tmp_path / "schemas" / "avro" / path.name, _add_field(raw, type="long", default=0))
    problems = check_all(tmp_path)
    assert len(problems) == 1
    assert "not in history" in problems[0]
    assert schema_fingerprint(raw).hex() in problems[0]
    # The problem names a command, and running that command fixes it.
    command = problems[0].split("fix with: ", 1)[1]
    subprocess.run(command, shell=True, cwd=tmp_path, check=True)
    assert check_all(tmp_path) == []


def test_freeze_before_compatible_edit_passes(tmp_path: Path) -> None:
    _git_repo(tmp_path)
    path, raw, _ = _with_long_field()
    frozen = freeze(tmp_path, raw["name"])
    assert frozen == tmp_path / "schemas/avro/history" / raw["name"] / f"{schema_fingerprint(raw).hex()}.avsc"
    assert _load(frozen) == raw
    assert freeze(tmp_path, path.stem) == frozen  # idempotent, and the file stem works as a name
    _write(tmp_path / "schemas" / "avro" / path.name, _add_field(raw, type="long", default=0))
    assert check_all(tmp_path) == []

    # Next round: commit, then change again without freezing -> the intermediate version is missing.
    _git(tmp_path, "add", "schemas")
    _git(tmp_path, "commit", "-q", "-m", "v2")
    v2 = _load(tmp_path / "schemas" / "avro" / path.name)
    v3 = copy.deepcopy(v2)
    v3["fields"].append({"name": "third", "type": "string", "default": "x"})
    _write(tmp_path / "schemas" / "avro" / path.name, v3)
    problems = check_all(tmp_path)
    assert len(problems) == 1 and schema_fingerprint(v2).hex() in problems[0]


def test_freeze_unknown_name(tmp_path: Path) -> None:
    _copy_schemas(tmp_path)
    with pytest.raises(SchemaError):
        freeze(tmp_path, "NoSuchEvent")


def test_unreadable_history_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    _copy_schemas(tmp_path)
    hist = tmp_path / "schemas" / "avro" / "history" / "Whatever" / "0000000000000000.avsc"
    hist.parent.mkdir(parents=True)
    hist.write_text("{")
    problems = check_all(tmp_path)
    assert len(problems) == 1 and "not a valid schema" in problems[0]
