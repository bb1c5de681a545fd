"""Prompt templates: strict rendering (ledgergate.templates), the edge rule over a request's template, and the
token-counter's count of a templated request (exact, cached per template version and values)."""

from __future__ import annotations

import pytest

from ledgergate.events import ChatMessage, InvocationRequested, TemplateRef
from ledgergate.ids import template_problem
from ledgergate.services.token_counter.core import TemplateCounts, count_request, request_sha256, validate
from ledgergate.shared.tokenizers import count_chat, encoding_for_model
from ledgergate.templates import Template, TemplateError, messages_with, render, variables

TEXT = "You answer questions about {product} for {team}. Be {tone}; {{braces}} stay."
FAQ = Template("faq", 2, TEXT)
VALUES = {"product": "ledgergate", "team": "finance", "tone": "terse"}
T0 = 1_794_000_000_000


def test_render_replaces_every_variable_and_keeps_escaped_braces() -> None:
    assert variables(TEXT) == ("product", "team", "tone")
    assert render(TEXT, VALUES) == "You answer questions about ledgergate for finance. Be terse; {braces} stay."
    assert render("{a}{a}", {"a": "x"}) == "xx"


@pytest.mark.parametrize("text, values, says", [
    (TEXT, {"product": "p", "team": "t"}, "missing: ['tone']"),
    (TEXT, {**VALUES, "colour": "red"}, "does not name: ['colour']"),
    ("a {lone", {}, "lone '{'"),
    ("{Not-A-Name}", {}, "not a variable name"),
    ("", {}, "1 to"),
    ("{a}", {"a": "x\x00"}, "NUL"),
])
def test_render_refuses_what_would_not_be_the_authors_prompt(text: str, values: dict[str, str], says: str) -> None:
    with pytest.raises(TemplateError, match=says.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        render(text, values)


def request(template: TemplateRef | None, messages: tuple[ChatMessage, ...] = (ChatMessage("user", "hi", None),),
            ) -> InvocationRequested:
    return InvocationRequested("req-1", "acme", "wf", "a", "gpt-4o", messages, None, 100, "NORMAL", None, None, {},
                               T0, {}, None, template)


def test_the_edge_rule_over_a_template_reference() -> None:
    assert template_problem(TemplateRef("faq", 2, VALUES)) is None
    assert "version" in (template_problem(TemplateRef("faq", 0, {})) or "")
    assert "variable name" in (template_problem(TemplateRef("faq", 1, {"Bad Name": "x"})) or "")
    assert "NUL" in (template_problem(TemplateRef("faq", 1, {"a": "\x00"})) or "")
    # A templated request may carry no other message; an untemplated one may not.
    assert validate(request(TemplateRef("faq", 2, VALUES), ()), "acme", 64) is None
    assert validate(request(None, ()), "acme", 64) == "messages is empty"


def test_a_templated_request_counts_as_its_rendered_messages_and_the_count_is_cached() -> None:
    ref = TemplateRef("faq", 2, VALUES)
    counts = TemplateCounts()
    counted = count_request(request(ref), encoding_for_model, 4096, FAQ, counts)
    expected = count_chat(messages_with(FAQ, VALUES, [{"role": "user", "content": "hi"}]), "gpt-4o")
    assert counted.input_tokens == expected and counted.template == "faq@2"
    again = count_request(request(ref), encoding_for_model, 4096, FAQ, counts)
    # gpt-4o's encoding is the accounting one: one count serves both figures, then every repeat.
    assert again == counted and (counts.misses, counts.hits) == (1, 3)
    other = count_request(request(TemplateRef("faq", 2, {**VALUES, "tone": "kind and very detailed"})),
                          encoding_for_model, 4096, FAQ, counts)
    assert other.input_tokens > counted.input_tokens and counts.misses == 2
    # The values and the version are the request's content: its digest and its cache key.
    assert other.request_sha256 != counted.request_sha256 and other.cache_key != counted.cache_key
    newer = count_request(request(TemplateRef("faq", 3, VALUES)), encoding_for_model, 4096,
                          Template("faq", 3, TEXT), counts)
    assert newer.cache_key != counted.cache_key  # a template version change invalidates what it should
    assert request_sha256(request(None)) != counted.request_sha256


def test_values_that_do_not_fit_the_template_are_refused() -> None:
    with pytest.raises(TemplateError):
        count_request(request(TemplateRef("faq", 2, {"product": "p"})), encoding_for_model, 4096, FAQ)


def test_the_template_counts_are_bounded() -> None:
    counts = TemplateCounts(max_entries=2)
    for tone in ("a", "b", "c"):
        count_request(request(TemplateRef("faq", 2, {**VALUES, "tone": tone})), encoding_for_model, 4096, FAQ,
                      counts)
    assert len(counts._counts) == 2
