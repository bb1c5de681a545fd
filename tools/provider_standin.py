"""LOCAL STAND-IN for a model provider. It calls no model: we cannot reach real providers here.

Given what the gate granted, it invents what a provider would plausibly report when the call ends,
so the demo and the tests can exercise settlement: output between 20 % and 100 % of the granted
tokens, prompt caching for long repeated prefixes, reasoning tokens for thinking models, and the
untidy endings (a stream cut short with no usage, a cancelled call). Deterministic for a seeded
`random.Random`; it never sleeps (no simulated latency).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OK = "OK"
TRUNCATED = "TRUNCATED"
CANCELLED = "CANCELLED"

TRUNCATED_RATE = 0.02
CANCELLED_RATE = 0.01
# Providers cache prompt prefixes of at least 1,024 tokens, in 128-token steps (OpenAI's rule;
# Anthropic's is similar), and only when the same prefix was seen recently.
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
CACHE_HIT_RATE = 0.6
# model -> (how often it thinks at all, range of the share of its output spent on hidden reasoning).
REASONING_MODELS: dict[str, tuple[float, tuple[float, float]]] = {
    "claude-sonnet": (0.35, (0.15, 0.6)),  # extended thinking, when the agent asks for it
    "o1": (1.0, (0.5, 0.9)),
    "o3": (1.0, (0.4, 0.85)),
    "o3-mini": (1.0, (0.3, 0.8)),
    "o4-mini": (1.0, (0.3, 0.8)),
}
WORDS_PER_TOKEN = 0.75

_WORD_TEXT = """
the budget model agent request token cost tenant workflow ledger reservation settle policy limit
answer context summary retrieval document search plan step result error retry cache output input
analysis report customer order invoice shipment ticket support query vector embedding function tool
call response latency region deployment stream partition offset event schema record field value
because therefore however first second finally next then also only each every some many more less
is are was were be been has have had will would can could should may might must do does did make
find use check update create return compute compare explain list show describe verify confirm
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())


@dataclass(frozen=True, slots=True)
class ProviderOutcome:
    """What the provider reported: `usage` as InvocationCompleted wants it, or None for a cut stream."""

    status: str
    usage: dict[str, int] | None
    completion_text: str | None = None


def standin_call(model: str, prompt_tokens: int, granted_output_tokens: int, rng: random.Random, *,
                 cacheable_prefix_tokens: int | None = None) -> ProviderOutcome:
    """Pretend to call `model` with a prompt of `prompt_tokens` tokens, allowed `granted_output_tokens`.

    `cacheable_prefix_tokens` is the length of a prefix the caller has sent before (a repeated
    system prompt); None lets the stand-in assume a repeated prefix of a random share of the prompt.
    """
    if prompt_tokens < 0 or granted_output_tokens < 0:
        raise ValueError("token counts cannot be negative")
    roll = rng.random()
    if roll < CANCELLED_RATE:
        return ProviderOutcome(CANCELLED, {"input_tokens": 0, "cached_input_tokens": 0, "output_tokens": 0,
                                           "reasoning_tokens": 0})
    generated = _generated_tokens(granted_output_tokens, rng)
    if roll < CANCELLED_RATE + TRUNCATED_RATE:
        # The stream broke: no usage block arrives, only the text received so far.
        cut = rng.randint(0, generated) if generated else 0
        return ProviderOutcome(TRUNCATED, None, words(cut, rng))
    reasoning = _reasoning_tokens(model, generated, rng)
    usage = {
        "input_tokens": prompt_tokens,
        "cached_input_tokens": _cached_tokens(prompt_tokens, cacheable_prefix_tokens, rng),
        # Reasoning counts against the granted maximum too, so output + reasoning <= granted.
        "output_tokens": generated - reasoning,
        "reasoning_tokens": reasoning,
    }
    return ProviderOutcome(OK, usage)


def words(tokens: int, rng: random.Random) -> str:
    """About `tokens` tokens of filler text (never a real completion)."""
    count = max(1, round(tokens * WORDS_PER_TOKEN)) if tokens > 0 else 0
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _generated_tokens(granted: int, rng: random.Random) -> int:
    if granted == 0:
        return 0
    low = max(1, (granted * 20 + 99) // 100)
    return rng.randint(low, granted)


def _cached_tokens(prompt_tokens: int, prefix: int | None, rng: random.Random) -> int:
    if prefix is None:
        prefix = int(prompt_tokens * rng.uniform(0.3, 0.9))
    prefix = min(prefix, prompt_tokens)
    if prefix < CACHE_MIN_TOKENS or rng.random() >= CACHE_HIT_RATE:
        return 0
    return prefix - prefix % CACHE_STEP_TOKENS


def _reasoning_tokens(model: str, generated: int, rng: random.Random) -> int:
    spec = REASONING_MODELS.get(model)
    if spec is None or generated == 0:
        return 0
    probability, (low, high) = spec
    if rng.random() >= probability:
        return 0
    return min(generated - 1, int(generated * rng.uniform(low, high)))
