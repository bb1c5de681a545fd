"""The codec round-trips every event schema and turns every kind of bad input into a typed CodecError.

Samples are built from the schema JSON itself, so a new .avsc in schemas/avro/ is covered without
touching this file.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import avro.schema
import pytest
from fastavro import parse_schema, schemaless_writer

from ledgergate.codec import HEADER_LEN, MAGIC, Codec, schema_fingerprint
from ledgergate.errors import CodecError, MalformedMessageError, TruncatedMessageError, UnknownFingerprintError
from ledgergate.shared.settings import PROJECT_ROOT

SCHEMAS = PROJECT_ROOT / "schemas"
SCHEMA_FILES = sorted((SCHEMAS / "avro").glob("*.avsc"))
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _ids(path: Path) -> str:
    return path.stem


# --- a valid sample record, generically from the schema JSON -------------------------------------


class _Sampler:
    """Walks a schema and makes one valid value per type; values differ per field so swaps show."""

    def __init__(self) -> None:
        self.named: dict[str, Any] = {}
        self.counter = itertools.count(1)

    def value(self, schema: Any, namespace: str = "") -> Any:
        n = next(self.counter)
        if isinstance(schema, list):  # union: the first non-null branch, so the body is not trivial
            branch = next((b for b in schema if b != "null"), "null")
            return self.value(branch, namespace)
        if isinstance(schema, str):
            if schema in PRIMITIVES:
                return self._primitive(schema, n)
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            return self.value(self.named.get(full, self.named.get(schema)), namespace)
        kind = schema["type"]
        if kind in PRIMITIVES:
            return self._logical(schema.get("logicalType"), kind, n)
        if kind in ("record", "enum", "fixed"):
            namespace = self._register(schema, namespace)
        if kind == "record":
            return {f["name"]: self.value(f["type"], namespace) for f in schema["fields"]}
        if kind == "enum":
            return schema["symbols"][0]
        if kind == "fixed":
            return bytes(range(schema["size"]))
        if kind == "array":
            return [self.value(schema["items"], namespace) for _ in range(2)]
        if kind == "map":
            return {f"key{n}": self.value(schema["values"], namespace)}
        raise AssertionError(f"sampler does not know Avro type {kind!r}")

    def _register(self, schema: dict[str, Any], namespace: str) -> str:
        name = schema["name"]
        ns = name.rsplit(".", 1)[0] if "." in name else schema.get("namespace", namespace)
        short = name.rsplit(".", 1)[-1]
        self.named[f"{ns}.{short}" if ns else short] = schema
        self.named[short] = schema
        return ns

    @staticmethod
    def _primitive(kind: str, n: int) -> Any:
        return {
            "null": None,
            "boolean": n % 2 == 0,
            "int": 1000 + n,
            "long": 1_700_000_000_000 + n,  # multi-byte varints, like real timestamps and micro-USD
            "float": 0.5 + n,
            "double": 0.25 + n,
            "bytes": bytes([n % 256, 0, 255]),
            "string": f"value-{n}-é",
        }[kind]

    def _logical(self, logical: str | None, kind: str, n: int) -> Any:
        if logical == "timestamp-millis":
            return datetime(2024, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
        if logical == "timestamp-micros":
            return datetime(2024, 1, 2, 3, 4, 5, 6007, tzinfo=UTC)
        if logical == "date":
            return date(2024, 1, 2)
        if logical == "uuid":
            return str(uuid.UUID(int=n))
        return self._primitive(kind, n)


def sample(schema: dict[str, Any]) -> dict[str, Any]:
    return _Sampler().value(schema)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(SCHEMAS)


def _encoded(codec: Codec) -> Iterator[tuple[str, dict[str, Any], bytes]]:
    for path in SCHEMA_FILES:
        raw = _load(path)
        record = sample(raw)
        yield raw["name"], record, codec.encode(raw["name"], record)


# --- round trip ----------------------------------------------------------------------------------


def test_every_schema_file_is_loaded(codec: Codec) -> None:
    assert len(SCHEMA_FILES) > 0
    assert codec.names == sorted(_load(p)["name"] for p in SCHEMA_FILES)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_round_trip(codec: Codec, path: Path) -> None:
    raw = _load(path)
    name, record = raw["name"], sample(raw)
    data = codec.encode(name, record)
    assert data[:2] == b"\xc3\x01"
    assert data[2:HEADER_LEN] == schema_fingerprint(raw) == crc64_avro(_canonical(raw))
    assert codec.peek_name(data) == name
    assert codec.decode(data) == (name, record)


# --- fingerprint against an independent CRC-64-AVRO ---------------------------------------------

_EMPTY = 0xC15D213AA4D7A795  # the spec's CRC-64-AVRO seed and polynomial


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> bytes:
    """The Avro spec's table-driven Rabin fingerprint, 8 bytes little-endian as in the header."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def _canonical(raw: dict[str, Any]) -> bytes:
    # Parsing Canonical Form from the `avro` package, not fastavro (which the codec uses).
    return avro.schema.parse(json.dumps(raw)).canonical_form.encode()


def test_crc64_avro_matches_the_spec_test_vector() -> None:
    # Avro's schema-tests.txt: "null" fingerprints to 7195948357588979594.
    assert int.from_bytes(crc64_avro(b'"null"'), "little") == 7195948357588979594


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_fingerprint_is_crc64_avro_of_canonical_form(codec: Codec, path: Path) -> None:
    raw = _load(path)
    assert codec.schema(raw["name"]).fingerprint == crc64_avro(_canonical(raw))


# --- typed errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\xc3\x01\x00\x00\x00"], ids=["empty", "5-bytes"])
def test_shorter_than_header_is_truncated(codec: Codec, data: bytes) -> None:
    with pytest.raises(TruncatedMessageError):
        codec.decode(data)


def test_wrong_magic_is_malformed(codec: Codec) -> None:
    for _, _, data in _encoded(codec):
        for magic in (b"\xc3\x02", b"\x00\x01", b"{\""):
            with pytest.raises(MalformedMessageError):
                codec.decode(magic + data[2:])


def test_unknown_fingerprint(codec: Codec) -> None:
    name, _, data = next(_encoded(codec))
    unknown = bytes(8)
    assert unknown != codec.schema(name).fingerprint
    with pytest.raises(UnknownFingerprintError):
        codec.decode(MAGIC + unknown + data[HEADER_LEN:])


def test_body_cut_anywhere_is_truncated(codec: Codec) -> None:
    # Every prefix: cuts inside multi-byte varints (fastavro: IndexError), strings and bytes (EOFError).
    wrong = []
    for name, _, data in _encoded(codec):
        for cut in range(HEADER_LEN, len(data)):
            try:
                codec.decode(data[:cut])
                wrong.append((name, cut, "decoded"))
            except TruncatedMessageError:
                pass
            except CodecError as exc:
                wrong.append((name, cut, repr(exc)))
    assert wrong == []


def test_trailing_garbage_is_malformed(codec: Codec) -> None:
    for _, _, data in _encoded(codec):
        for garbage in (b"\x00", b"\x02\x02\x02"):
            with pytest.raises(MalformedMessageError):
                codec.decode(data + garbage)


def _required_fields(raw: dict[str, Any]) -> list[str]:
    def nullable(t: Any) -> bool:
        return t == "null" or (isinstance(t, list) and "null" in t)

    return [f["name"] for f in raw["fields"] if "default" not in f and not nullable(f["type"])]


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=_ids)
def test_missing_required_field_is_codec_error(codec: Codec, path: Path) -> None:
    raw = _load(path)
    required = _required_fields(raw)
    assert required, f"{path.name} has no required field"
    for field in required:
        record = sample(raw)
        del record[field]
        with pytest.raises(CodecError):
            codec.encode(raw["name"], record)


# --- historical writer schema -> current reader ----------------------------------------------------


def _fields_with_default(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """Top-level fields whose default reads back as itself (not bytes, whose JSON default is text)."""
    out = []
    for field in raw["fields"]:
        branch = field["type"][0] if isinstance(field["type"], list) else field["type"]
        if "default" in field and isinstance(branch, str) and branch in PRIMITIVES - {"bytes"}:
            out.append(field)
    return out


def test_historical_writer_decodes_into_current_shape_with_default(tmp_path: Path) -> None:
    candidates = [(r, f) for r in map(_load, SCHEMA_FILES) for f in _fields_with_default(r)]
    assert candidates, "no current schema has a field with a default"
    # Prefer a distinctive default (e.g. 1000000, not "" or null): filling it in is then unmistakable.
    raw, field = max(candidates, key=lambda rf: rf[1]["default"] not in (None, "", 0, False))
    old = copy.deepcopy(raw)
    old["fields"] = [f for f in raw["fields"] if f["name"] != field["name"]]
    old_fp = schema_fingerprint(old)
    assert old_fp != schema_fingerprint(raw)

    root = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, root)
    hist = root / "avro" / "history" / raw["name"] / f"{old_fp.hex()}.avsc"
    hist.parent.mkdir(parents=True, exist_ok=True)
    hist.write_text(json.dumps(old))
    codec = Codec(root)

    record = sample(raw)
    old_record = {k: v for k, v in record.items() if k != field["name"]}
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(old), old_record)
    data = MAGIC + old_fp + body.getvalue()

    assert codec.peek_name(data) == raw["name"]
    assert codec.decode(data) == (raw["name"], {**old_record, field["name"]: field["default"]})
    # The current version still round-trips beside its history.
    assert codec.decode(codec.encode(raw["name"], record)) == (raw["name"], record)
