"""The provider stand-in: usage shapes, bounds and determinism."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ledgergate.tools.provider_standin import (
    CACHE_MIN_TOKENS,
    CACHE_STEP_TOKENS,
    CANCELLED,
    OK,
    TRUNCATED,
    ProviderOutcome,
    standin_call,
    words,
)

USAGE_KEYS = {"input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens"}
MODELS = ["gpt-4o", "gpt-4.1", "claude-sonnet", "gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1-nano"]


def _many(seed: int, n: int = 5000, **kwargs: object) -> list[ProviderOutcome]:
    rng = random.Random(seed)
    return [standin_call(MODELS[i % len(MODELS)], 100 + (i * 37) % 8000, 50 + i % 2000, rng, **kwargs)  # type: ignore[arg-type]
            for i in range(n)]


def test_same_seed_same_outcomes_other_seed_differs() -> None:
    assert _many(7) == _many(7)
    assert _many(7) != _many(8)


def test_ok_usage_shape_and_bounds() -> None:
    rng = random.Random(1)
    for i in range(3000):
        prompt, granted = 50 + i * 3, 100 + i % 900
        outcome = standin_call(MODELS[i % len(MODELS)], prompt, granted, rng)
        if outcome.status != OK:
            continue
        usage = outcome.usage
        assert usage is not None and set(usage) == USAGE_KEYS
        assert all(isinstance(v, int) and v >= 0 for v in usage.values())
        assert usage["input_tokens"] == prompt
        assert usage["cached_input_tokens"] <= prompt
        generated = usage["output_tokens"] + usage["reasoning_tokens"]
        assert granted * 0.2 <= generated <= granted
        assert usage["output_tokens"] >= 1
        assert outcome.completion_text is None


def test_mix_of_endings_is_roughly_as_documented() -> None:
    statuses = Counter(o.status for o in _many(3, n=20000))
    assert 0.013 <= statuses[TRUNCATED] / 20000 <= 0.027
    assert 0.005 <= statuses[CANCELLED] / 20000 <= 0.015
    assert statuses[OK] > 0.95 * 20000


def test_truncated_has_no_usage_but_text_and_cancelled_has_zero_usage() -> None:
    outcomes = _many(11, n=20000)
    truncated = [o for o in outcomes if o.status == TRUNCATED]
    cancelled = [o for o in outcomes if o.status == CANCELLED]
    assert truncated and cancelled
    assert all(o.usage is None and isinstance(o.completion_text, str) for o in truncated)
    assert any(o.completion_text for o in truncated)
    assert all(o.usage == dict.fromkeys(USAGE_KEYS, 0) and o.completion_text is None for o in cancelled)


def test_caching_follows_the_prefix_rule() -> None:
    rng = random.Random(5)
    cached = [standin_call("gpt-4o", 5000, 100, rng, cacheable_prefix_tokens=3000) for _ in range(2000)]
    hits = [o.usage["cached_input_tokens"] for o in cached if o.status == OK and o.usage["cached_input_tokens"]]
    assert hits and all(h == 3000 - 3000 % CACHE_STEP_TOKENS for h in hits)
    short = [standin_call("gpt-4o", 5000, 100, rng, cacheable_prefix_tokens=CACHE_MIN_TOKENS - 1)
             for _ in range(500)]
    assert all(o.usage is None or o.usage["cached_input_tokens"] == 0 for o in short)


def test_reasoning_only_for_thinking_models() -> None:
    outcomes = _many(9, n=6000)
    by_model: dict[str, int] = Counter()
    for i, o in enumerate(outcomes):
        if o.usage:
            by_model[MODELS[i % len(MODELS)]] += o.usage["reasoning_tokens"]
    assert by_model["claude-sonnet"] > 0
    assert all(by_model[m] == 0 for m in MODELS if m != "claude-sonnet")


def test_zero_grant_and_bad_input() -> None:
    outcome = standin_call("gpt-4o", 10, 0, random.Random(0))
    assert outcome.usage is None or outcome.usage["output_tokens"] + outcome.usage["reasoning_tokens"] == 0
    with pytest.raises(ValueError):
        standin_call("gpt-4o", -1, 10, random.Random(0))
    assert words(0, random.Random(0)) == ""
    assert len(words(100, random.Random(0)).split()) == 75
