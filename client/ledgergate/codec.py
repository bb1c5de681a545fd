"""Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint + body), registry-free.

Every schema in schemas/avro/ (the current versions) and schemas/avro/history/ (earlier versions,
kept so old ledger entries stay readable forever) is loaded once; a message's 8-byte fingerprint
names its writer schema, and fastavro resolves it to the current reader schema by record name.
fastavro is the hot path (about 10x the `avro` package); `avro` serves schema tooling only.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from ledgergate.errors import (
    CodecError,
    MalformedMessageError,
    SchemaError,
    TruncatedMessageError,
    UnknownFingerprintError,
)

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
# Avro bodies here are small events; anything larger is corrupt or hostile, not an invocation.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


# The package carries the schemas: in a checkout `schemas` is a link to the repository's schemas/ (their
# single source), in an installed wheel a copy made when it was built.
PACKAGED_SCHEMAS_DIR = Path(__file__).parent / "schemas"


def schemas_dir() -> Path:
    return Path(os.environ.get("LEDGERGATE_SCHEMAS_DIR", PACKAGED_SCHEMAS_DIR))


def schema_fingerprint(schema: Mapping[str, Any]) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, little-endian as the spec's header wants."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(dict(schema)), "CRC-64-AVRO"))


@dataclass(frozen=True, slots=True)
class WriterSchema:
    name: str  # short record name, e.g. "GateDecision"
    fingerprint: bytes
    parsed: Any
    reader: Any | None  # None when this is the current version: no resolution needed


class Codec:
    """Encodes and decodes every ledgergate event. Build once per process (see `codec()`)."""

    def __init__(self, root: Path) -> None:
        self._current: dict[str, WriterSchema] = {}
        self._by_fingerprint: dict[bytes, WriterSchema] = {}
        current_dir = root / "avro"
        files = sorted(current_dir.glob("*.avsc"))
        if not files:
            raise SchemaError(f"no Avro schemas found in {current_dir}")
        for path in files:
            raw = _load_json(path)
            entry = WriterSchema(raw["name"], schema_fingerprint(raw), parse_schema(raw), None)
            if entry.name in self._current:
                raise SchemaError(f"two current schemas named {entry.name} (second in {path})")
            self._current[entry.name] = entry
            self._by_fingerprint[entry.fingerprint] = entry
        for path in sorted((current_dir / "history").glob("*/*.avsc")):
            raw = _load_json(path)
            reader = self._current.get(raw["name"])
            if reader is None:
                raise SchemaError(f"{path} is history of {raw['name']}, which has no current schema")
            fp = schema_fingerprint(raw)
            if fp not in self._by_fingerprint:
                self._by_fingerprint[fp] = WriterSchema(raw["name"], fp, parse_schema(raw), reader.parsed)
        # Preallocated per-name headers keep the encode path to one buffer and two writes.
        self._headers = {name: MAGIC + e.fingerprint for name, e in self._current.items()}

    @property
    def names(self) -> list[str]:
        return sorted(self._current)

    def schema(self, name: str) -> WriterSchema:
        try:
            return self._current[name]
        except KeyError:
            raise SchemaError(f"no schema named {name!r}; known: {', '.join(self.names)}") from None

    def enum_symbols(self, name: str, field_name: str) -> tuple[str, ...]:
        """The symbols of an enum field of a current schema, so code takes its choices from the schema."""
        for field in self.schema(name).parsed["fields"]:
            if field["name"] == field_name and isinstance(field["type"], dict) and field["type"]["type"] == "enum":
                return tuple(field["type"]["symbols"])
        raise SchemaError(f"{name} has no enum field {field_name!r}")

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        entry = self.schema(name)
        buf = io.BytesIO()
        buf.write(self._headers[name])
        try:
            schemaless_writer(buf, entry.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CodecError(f"cannot encode {name}: {exc}") from exc
        return buf.getvalue()

    def encode_body(self, name: str, record: Mapping[str, Any], fingerprint: bytes | None = None) -> bytes:
        """The Avro binary body alone (no header) of `record` under the version of `name` whose
        fingerprint is given (default: the current one). A signature covers this (ledgergate.signing):
        the verifier re-encodes under the writer's own version, so a client on an older schema still
        verifies against a newer server."""
        entry = self.schema(name) if fingerprint is None else self._by_fingerprint.get(bytes(fingerprint))
        if entry is None or entry.name != name:
            raise UnknownFingerprintError(f"no version of {name} has fingerprint {bytes(fingerprint or b'').hex()}")
        buf = io.BytesIO()
        try:
            schemaless_writer(buf, entry.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CodecError(f"cannot encode {name}: {exc}") from exc
        return buf.getvalue()

    def last_field(self, fingerprint: bytes) -> str | None:
        """The name of the last field of the schema version with this fingerprint (None: no such version)."""
        entry = self._by_fingerprint.get(bytes(fingerprint))
        return None if entry is None else str(entry.parsed["fields"][-1]["name"])

    @staticmethod
    def fingerprint_of(data: bytes) -> bytes:
        """The writer fingerprint in a message's header (the caller has decoded it, so the header is there)."""
        assert len(data) >= HEADER_LEN and data[:2] == MAGIC, "fingerprint_of a message that is not single-object Avro"
        return bytes(data[2:HEADER_LEN])

    # Both take `bytes | None` because that is what confluent-kafka's Message.value() gives: None is a
    # tombstone (a record without a value), refused like any message shorter than the header.
    def peek_name(self, data: bytes | None) -> str:
        """The event type of a message without decoding its body."""
        return self._writer(_present(data)).name

    def decode(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        data = _present(data)
        writer = self._writer(data)
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        try:
            record = schemaless_reader(buf, writer.parsed, writer.reader)
        except EOFError as exc:
            raise TruncatedMessageError(f"{writer.name} body ends early ({len(data)} bytes)") from exc
        except Exception as exc:  # fastavro raises assorted types on garbage; all mean the same to us
            if buf.tell() >= len(data):  # a multi-byte varint cut short surfaces as IndexError, not EOFError
                raise TruncatedMessageError(f"{writer.name} body ends early ({len(data)} bytes)") from exc
            raise MalformedMessageError(f"{writer.name} body is not valid Avro: {exc!r}") from exc
        if buf.tell() != len(data):
            raise MalformedMessageError(
                f"{writer.name} body has {len(data) - buf.tell()} trailing bytes; wrong schema or corrupt")
        return writer.name, record  # type: ignore[return-value]

    def _writer(self, data: bytes) -> WriterSchema:
        if len(data) < HEADER_LEN:
            raise TruncatedMessageError(f"message of {len(data)} bytes is shorter than the {HEADER_LEN}-byte header")
        if len(data) > MAX_MESSAGE_BYTES:
            raise MalformedMessageError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        if data[:2] != MAGIC:
            raise MalformedMessageError(f"not Avro single-object encoding: starts with {data[:2].hex()}, not c301")
        fp = bytes(data[2:HEADER_LEN])
        writer = self._by_fingerprint.get(fp)
        if writer is None:
            raise UnknownFingerprintError(f"no schema in schemas/ has fingerprint {fp.hex()}")
        return writer


def _present(data: bytes | None) -> bytes:
    if data is None:
        raise TruncatedMessageError(f"message of 0 bytes is shorter than the {HEADER_LEN}-byte header")
    return data


def _load_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record" or "name" not in raw:
        raise SchemaError(f"{path} is not an Avro record schema")
    return raw


@cache
def codec() -> Codec:
    """The process-wide codec, built on first use."""
    return Codec(schemas_dir())
