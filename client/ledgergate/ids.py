"""The one rule for the strings clients choose: ids, names and labels. Every edge checks it (the
token-counter, the API, the SDK), so nothing past the edge has to cope with what it forbids.

Why these limits: PostgreSQL `text` and `jsonb` cannot hold NUL, so one NUL in a request id once froze
the read model for every tenant; control characters forge log lines and break CSV exports; and an
unbounded id costs memory in every service and index space in every table.

- ids (tenant_id, request_id, workflow_id, agent_id, command ids): 1..128 characters of
  `A-Z a-z 0-9 . _ : @ -`, starting with a letter or digit (UUIDs, slugs, `team:agent@host`).
- names (model, region, label keys): 1..128 printable characters (`str.isprintable`: no control,
  format, surrogate, private-use or unassigned code point, no separator but the ASCII space).
- label values: 0..256 printable characters; at most 32 labels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from ledgergate import templates
from ledgergate.events import InvocationRequested, TemplateRef

MAX_ID_CHARS = 128
MAX_NAME_CHARS = 128
MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 256
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
_ID = re.compile(ID_PATTERN)


def id_problem(field: str, value: str, *, required: bool = True) -> str | None:
    """Why `value` is not a valid id, or None. An optional id may be empty."""
    if not value:
        return f"{field} is empty" if required else None
    if len(value) > MAX_ID_CHARS:
        return f"{field} is longer than {MAX_ID_CHARS} characters"
    if _ID.fullmatch(value) is None:
        return f"{field} may hold only letters, digits and . _ : @ - (and must start with a letter or digit)"
    return None


def name_problem(field: str, value: str, *, required: bool = True, max_chars: int = MAX_NAME_CHARS) -> str | None:
    """Why `value` is not a valid name (or label value), or None."""
    if not value:
        return f"{field} is empty" if required else None
    if len(value) > max_chars:
        return f"{field} is longer than {max_chars} characters"
    if not value.isprintable():
        return f"{field} holds a control or non-printable character"
    return None


def printable(text: str) -> str:
    """`text` with every non-printable character escaped (`\\x00`): error messages quote what was
    wrong and are stored and logged too, so they must never carry it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def request_problem(req: InvocationRequested) -> str | None:
    """The rule over every client-chosen string of a request (the token-counter answers a violation
    DENY invalid_request; the SDK raises before publishing)."""
    problem = (id_problem("request_id", req.request_id) or id_problem("tenant_id", req.tenant_id)
               or id_problem("workflow_id", req.workflow_id, required=False)
               or id_problem("agent_id", req.agent_id, required=False)
               or name_problem("requested_model", req.requested_model)
               or name_problem("region", req.region or "", required=False)
               or labels_problem(req.labels) or sampling_problem(req.sampling_json)
               or template_problem(req.template))
    if problem is not None:
        return problem
    for i, message in enumerate(req.messages):
        problem = name_problem(f"messages[{i}].role", message.role) or name_problem(
            f"messages[{i}].name", message.name or "", required=False)
        if problem is not None:
            return problem
    return None


# The sampling parameters a request may carry: the ones that change an answer (OpenAI's names), which the
# response cache's key covers (shared/cache.py). Others (user, stream, metadata) do not belong on a request.
SAMPLING_PARAMS = frozenset({"temperature", "top_p", "seed", "stop", "n", "presence_penalty", "frequency_penalty",
                             "logit_bias", "response_format", "tool_choice", "reasoning_effort", "logprobs",
                             "top_logprobs"})
MAX_SAMPLING_JSON_CHARS = 4096
# The label a request carries to neither be served from the tenant's response cache nor stored into it (the
# SDK sends it when it asks again after a CACHE_HIT without text; a caller may send it like any label).
CACHE_LABEL = "cache"
CACHE_BYPASS = "bypass"


def template_problem(template: TemplateRef | None) -> str | None:
    """The rule over a request's template reference: an id, a positive version, variable names and bounded,
    NUL-free values (ledgergate.templates renders them; whether the template exists is the gate's to say)."""
    if template is None:
        return None
    problem = id_problem("template.template_id", template.template_id)
    if problem is not None:
        return problem
    if not 1 <= template.version <= 2**31 - 1:
        return "template.version must be a positive int"
    if len(template.variables) > templates.VARIABLES_MAX:
        return f"template.variables holds at most {templates.VARIABLES_MAX} values"
    for name, value in template.variables.items():
        if not templates.NAME.fullmatch(name):
            return f"template.variables: {name[:64]!r} is not a variable name"
        if "\x00" in value:
            return f"template.variables[{name}] holds a NUL character"
    if sum(len(v) for v in template.variables.values()) > templates.VALUE_CHARS_MAX:
        return f"template.variables total more than {templates.VALUE_CHARS_MAX} characters"
    return None


def sampling_problem(sampling_json: str | None) -> str | None:
    if sampling_json is None:
        return None
    if len(sampling_json) > MAX_SAMPLING_JSON_CHARS:
        return f"sampling_json is longer than {MAX_SAMPLING_JSON_CHARS} characters"
    try:
        sampling = json.loads(sampling_json)
    except ValueError:
        return "sampling_json is not JSON"
    if not isinstance(sampling, dict):
        return "sampling_json must be a JSON object"
    unknown = set(sampling) - SAMPLING_PARAMS
    if unknown:
        return f"sampling_json names unknown parameters {sorted(unknown)}; known: {sorted(SAMPLING_PARAMS)}"
    return None


def labels_problem(labels: Mapping[str, str]) -> str | None:
    if len(labels) > MAX_LABELS:
        return f"more than {MAX_LABELS} labels"
    for key, value in labels.items():
        problem = name_problem("label key", key) or name_problem(
            f"label {key!r}", value, required=False, max_chars=MAX_LABEL_VALUE_CHARS)
        if problem is not None:
            return problem
    return None
