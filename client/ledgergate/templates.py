"""Prompt templates: a tenant registers a text with `{name}` variables once (the admin API, `prompt.templates`)
and its requests name it and give the values; the gate renders it as the request's first message, counts it
(caching the count per template and values) and reports spend per template.

    text = "You answer questions about {product}. Be {tone}."
    render(text, {"product": "ledgergate", "tone": "terse"})   # the message the gate and the provider see
    messages_with(Template("faq", 3, text), {"product": ...}, messages)  # what to send the provider

`{{` and `}}` are literal braces. Rendering is strict: a variable the text names must be given, a value the
text does not name is refused (a typo would otherwise be a different prompt than the author meant). The SDK
and the gate render with this one function, so what was counted is what was sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TEMPLATE_CHARS_MAX = 64 * 1024
VARIABLES_MAX = 64
VALUE_CHARS_MAX = 64 * 1024  # all of a request's values together
NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
ROLES = ("system", "user", "developer")
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


class TemplateError(ValueError):
    """A template or its values that cannot render; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Template:
    template_id: str
    version: int
    text: str
    role: str = "system"

    @property
    def ref(self) -> str:
        return f"{self.template_id}@{self.version}"


def record_key(tenant_id: str, template_id: str, version: int) -> bytes:
    """A template version's key on prompt.templates (compacted: one record per version), which the API writes
    on the tenant's partition and the token-counter reads."""
    return f"{tenant_id}/{template_id}@{version}".encode()


def _parts(text: str) -> list[tuple[str, bool]]:
    """(literal text, False) and (variable name, True) in order; raises on a malformed text."""
    parts: list[tuple[str, bool]] = []
    at = 0
    for m in _TOKEN.finditer(text):
        if m.start() > at:
            parts.append((text[at:m.start()], False))
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append((token[0], False))
        elif m.group(1) is not None:
            name = m.group(1)
            if not NAME.fullmatch(name):
                raise TemplateError(f"{{{name}}} is not a variable name (lower case letters, digits, _; at most 64)")
            parts.append((name, True))
        else:
            raise TemplateError(f"a lone {token!r} at character {m.start()}: write {token * 2} for a literal brace")
        at = m.end()
    if at < len(text):
        parts.append((text[at:], False))
    return parts


def variables(text: str) -> tuple[str, ...]:
    """The variables `text` names, in order of first use; raises TemplateError for a text that cannot be one."""
    if not text or len(text) > TEMPLATE_CHARS_MAX:
        raise TemplateError(f"a template's text must be 1 to {TEMPLATE_CHARS_MAX} characters")
    if "\x00" in text:
        raise TemplateError("a template's text must not hold a NUL character")
    names = tuple(dict.fromkeys(name for name, is_variable in _parts(text) if is_variable))
    if len(names) > VARIABLES_MAX:
        raise TemplateError(f"a template names at most {VARIABLES_MAX} variables, this one {len(names)}")
    return names


def render(text: str, values: Mapping[str, str]) -> str:
    """`text` with every variable replaced by its value."""
    names = variables(text)
    missing = [n for n in names if n not in values]
    unknown = sorted(set(values) - set(names))
    if missing or unknown:
        raise TemplateError(f"template variables: missing {missing}, unknown {unknown}" if missing and unknown
                            else f"template variables missing: {missing}" if missing
                            else f"template variables the text does not name: {unknown}")
    if any(not isinstance(v, str) for v in values.values()):
        raise TemplateError("template values must be strings")
    if sum(len(v) for v in values.values()) > VALUE_CHARS_MAX:
        raise TemplateError(f"template values total at most {VALUE_CHARS_MAX} characters")
    if any("\x00" in v for v in values.values()):
        raise TemplateError("a template value must not hold a NUL character")
    return "".join(values[part] if is_variable else part for part, is_variable in _parts(text))


def messages_with(template: Template, values: Mapping[str, str],
                  messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages a request naming `template` stands for: the rendered template first, then `messages`."""
    return [{"role": template.role, "content": render(template.text, values)}, *map(dict, messages)]
