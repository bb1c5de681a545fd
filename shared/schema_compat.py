"""Schema evolution guard: a schema change must never make an event already on the ledger unreadable.

The ledger is kept forever and replayed from offset 0, so every version of an event schema that ever
wrote a message stays a *writer* schema, and the current file in schemas/avro/ is the *reader*. Two
things must hold, and `check_all` checks both (CI and `python -m ledgergate.shared.schema_compat check`):

* every earlier version can be read by the current one (Avro backward compatibility), and
* every earlier version is kept under schemas/avro/history/<Name>/<fingerprint>.avsc, because the codec
  finds a message's writer schema by the fingerprint in its header and nowhere else.

Earlier versions come from two places: history/ itself, and every committed version of each current
file in git (the change a pull request makes is exactly the working tree against those). `freeze`
copies the current version into history/; run it before editing a schema.
Compatibility uses the `avro` package's checker (the reference implementation's rules); fastavro,
which decodes on the hot path, applies the same resolution rules.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.errors import AvroException
from fastavro.schema import SchemaParseException

from ledgergate.codec import schema_fingerprint
from ledgergate.errors import SchemaError
from ledgergate.shared.settings import PROJECT_ROOT


def check_backward(reader_json: dict[str, Any], writer_json: dict[str, Any]) -> list[str]:
    """Problems that stop data written with `writer_json` from being read with `reader_json`; [] if none."""
    try:
        reader = avro.schema.parse(json.dumps(reader_json))
        writer = avro.schema.parse(json.dumps(writer_json))
    except (AvroException, TypeError, ValueError) as exc:
        return [f"invalid schema: {exc}"]
    result = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    # The checker keeps kinds, messages and locations as separate collections (it does not pair them),
    # so they are reported together: one problem per incompatible schema pair.
    kinds = ", ".join(sorted({k.value for k in result.incompatibilities}))
    locations = {loc for loc in result.locations if loc != "/"} or {"/"}  # "/" is the checker's seed
    where = ", ".join(sorted(_readable_location(reader_json, loc) for loc in locations))
    details = "; ".join(sorted(result.messages))
    return [f"{kinds} at {where}: {details}"]


def _readable_location(schema: Any, location: str) -> str:
    """'/fields/5/type' -> 'spent_micro_usd/type', walking the reader schema where it can."""
    out: list[str] = []
    tokens = [t for t in location.split("/") if t]
    node, i = schema, 0
    while i < len(tokens):
        token = tokens[i]
        fields = node.get("fields") if isinstance(node, dict) else None
        if token == "fields" and i + 1 < len(tokens) and tokens[i + 1].isdigit() and isinstance(fields, list):
            node = fields[int(tokens[i + 1])] if int(tokens[i + 1]) < len(fields) else None
            out.append(node["name"] if isinstance(node, dict) else tokens[i + 1])
            i += 2
            continue
        node = node.get(token) if isinstance(node, dict) else None
        out.append(token)
        i += 1
    return "/".join(out) or "/"


def _avro_dir(root: Path) -> Path:
    return root / "schemas" / "avro"


def _current(root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Current schemas by record name."""
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path in sorted(_avro_dir(root).glob("*.avsc")):
        raw = json.loads(path.read_text())
        out[raw["name"]] = (path, raw)
    return out


def _history_path(root: Path, name: str, fp: bytes) -> Path:
    # The hex of the header bytes (little-endian), so a file is found by `xxd` on a message.
    return _avro_dir(root) / "history" / name / f"{fp.hex()}.avsc"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # LC_ALL=C keeps git's messages matchable; schema files are UTF-8 whatever the locale says.
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, encoding="utf-8",
                          env={**os.environ, "LC_ALL": "C"}, check=False)


def _committed_versions(root: Path, path: Path) -> list[tuple[str, str]] | None:
    """(commit, file text) for every committed version of `path`; None when root is not in git."""
    rel = path.relative_to(root).as_posix()
    try:
        log = _git(root, "log", "--format=%H", "--", rel)
    except FileNotFoundError:  # no git binary: nothing to compare against
        return None
    if log.returncode != 0:
        if "not a git repository" in log.stderr:
            return None
        raise SchemaError(f"git log failed in {root}: {log.stderr.strip()}")
    versions = []
    for commit in log.stdout.split():
        shown = _git(root, "show", f"{commit}:./{rel}")
        if shown.returncode == 0:  # absent in the commit that deleted it
            versions.append((commit, shown.stdout))
    return versions


def check_all(root: Path) -> list[str]:
    """Every problem that would leave an earlier message undecodable; [] when the schemas are safe."""
    problems: list[str] = []
    current = _current(root)
    for path in sorted((_avro_dir(root) / "history").glob("*/*.avsc")):
        rel = path.relative_to(root)
        try:
            old = json.loads(path.read_text())
            expected = _history_path(root, old["name"], schema_fingerprint(old))
        except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
            problems.append(f"{rel}: not a valid schema: {exc!r}")
            continue
        if old["name"] not in current:
            problems.append(f"{rel}: history of {old['name']!r}, which has no current schema")
            continue
        if path != expected:  # the codec does not care, but freeze() and check_all() look for this name
            problems.append(f"{rel}: should be {expected.relative_to(root)}")
        problems += [f"{rel}: {p}" for p in check_backward(current[old["name"]][1], old)]
    for name, (path, raw) in current.items():
        versions = _committed_versions(root, path)
        if versions is None:
            return problems
        current_fp, git_rel = schema_fingerprint(raw), path.relative_to(root).as_posix()
        seen: set[bytes] = set()
        for commit, text in versions:
            where = f"{git_rel} at {commit[:12]}"
            try:
                old = json.loads(text)
                fp = schema_fingerprint(old)
            except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
                problems.append(f"{where}: committed version is not a valid schema: {exc!r}")
                continue
            if fp == current_fp or fp in seen:
                continue
            seen.add(fp)
            problems += [f"{where}: {p}" for p in check_backward(raw, old)]
            target = _history_path(root, old.get("name", name), fp)
            if not target.exists():
                hist = target.relative_to(root).as_posix()
                q = shlex.quote
                fix = f"mkdir -p {q(str(Path(hist).parent))} && git show {q(f'{commit}:./{git_rel}')} > {q(hist)}"
                problems.append(
                    f"{where}: this committed version (fingerprint {fp.hex()}) is not in history/, so its "
                    f"messages would become undecodable; fix with: {fix}")
    return problems


def freeze(root: Path, name: str) -> Path:
    """Copy the current schema `name` (record name or file stem) into history/; idempotent.

    Run it before changing a schema, so messages written with today's version stay decodable.
    """
    for record_name, (path, raw) in _current(root).items():
        if name in (record_name, path.stem):
            target = _history_path(root, record_name, schema_fingerprint(raw))
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text())
            return target
    raise SchemaError(f"no current schema named {name!r} in {_avro_dir(root)}")


def main(argv: list[str] | None = None) -> int:
    """`python -m ledgergate.shared.schema_compat check` or `... freeze Name [Name ...]`, from the project root."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["freeze"] and len(args) > 1:
        for name in args[1:]:
            print(freeze(PROJECT_ROOT, name))
        return 0
    if args in ([], ["check"]):
        problems = check_all(PROJECT_ROOT)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    print("usage: python -m ledgergate.shared.schema_compat [check | freeze NAME...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
