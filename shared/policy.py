"""A tenant's policy document: validated data, never code. Unknown keys are errors, so a typo in a
policy cannot silently fall back to a default."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ledgergate.shared.cache import ENTRY_BYTES_MAX, REDACTION_PATTERNS_MAX, CacheRule
from ledgergate.shared.catalogue import MAX_PRICE_MICRO_USD_PER_M, PPM, PriceOverride
from ledgergate.shared.errors import PolicyError

DEFAULT_PATH = Path(__file__).parent / "data" / "default_policy.yaml"
MAX_PRICE_OVERRIDES = 64
MAX_MODEL_NAME_CHARS = 128  # client/ledgergate/ids.py's name rule


class TierRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    priority: Literal["LOW", "NORMAL", "HIGH"]
    burn_pct_at_least: int = Field(ge=0, le=1000)
    max_tier: str


class AnomalyRule(BaseModel):
    """The spend/token-rate anomaly detector's thresholds (services/anomaly/core.py). A window is anomalous
    when the detector has seen `warmup_windows` windows of the series, its rate is at least the metric's
    minimum, and it is above the band: max(mean + z_threshold * std, mean * min_ratio) of the EWMA."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    z_threshold: float = Field(default=5.0, ge=1.0, le=100.0)
    min_ratio: float = Field(default=3.0, ge=1.0, le=1000.0)
    ewma_alpha: float = Field(default=0.1, gt=0.0, le=1.0)
    # So that a quiet tenant's first requests are no anomaly: that many windows seen (empty ones count) first.
    warmup_windows: int = Field(default=10, ge=1, le=10_000)
    # An episode ends after this many windows back inside the band; only then can the next one alert.
    cooldown_windows: int = Field(default=5, ge=1, le=10_000)
    min_spend_micro_usd_per_min: int = Field(default=100_000, ge=0, le=10**15)
    min_tokens_per_min: int = Field(default=20_000, ge=0, le=10**12)


class CacheRuleModel(BaseModel):
    """A tenant's response cache (shared/cache.py; docs/decisions/0013): off unless the policy turns it on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    ttl_s: int = Field(default=3600, ge=1, le=30 * 24 * 3600)
    max_entry_bytes: int = Field(default=64 * 1024, ge=1, le=ENTRY_BYTES_MAX)
    # Serve temperature > 0 (or unset) requests from the cache: their answers were one sample of many.
    serve_nondeterministic: bool = False
    forbidden_labels: tuple[str, ...] = Field(default=("pii",), max_length=64)
    workflows: tuple[str, ...] | None = Field(default=None, max_length=1024)
    # Regular expressions whose matches are replaced before an answer is stored.
    redact_patterns: tuple[str, ...] = Field(default=(), max_length=REDACTION_PATTERNS_MAX)

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _patterns(value)

    def to_rule(self, redact_patterns: tuple[str, ...] = ()) -> CacheRule:
        """`redact_patterns`: the policy's own, which apply to every stored text and so to entries too."""
        workflows = None if self.workflows is None else frozenset(self.workflows)
        return CacheRule(self.enabled, self.ttl_s * 1000, self.max_entry_bytes, self.serve_nondeterministic,
                         frozenset(self.forbidden_labels), workflows, (*redact_patterns, *self.redact_patterns))


def _patterns(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        if len(pattern) > 512:
            raise ValueError("redact_patterns: at most 512 characters each")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"redact_patterns: {pattern!r} is not a regular expression: {exc}") from None
    return value


_Rate = Field(default=None, ge=0, le=MAX_PRICE_MICRO_USD_PER_M)


class PriceOverrideRule(BaseModel):
    """A negotiated price for one model: `discount_ppm` off the catalogue's price (150000 = 15 %), or fixed
    rates in micro-USD per million tokens (input and output required; cached_input and cache_write default
    to input, reasoning to output, as in prices.yaml). Exactly one of the two."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    discount_ppm: int | None = Field(default=None, ge=0, le=PPM)
    input: int | None = _Rate
    cached_input: int | None = _Rate
    cache_write: int | None = _Rate
    output: int | None = _Rate
    reasoning: int | None = _Rate

    @model_validator(mode="after")
    def _one_kind(self) -> PriceOverrideRule:
        fixed = (self.input, self.cached_input, self.cache_write, self.output, self.reasoning)
        if self.discount_ppm is not None and any(r is not None for r in fixed):
            raise ValueError("a price override is a discount_ppm or fixed rates, not both")
        if self.discount_ppm is None and (self.input is None or self.output is None):
            raise ValueError("a price override needs discount_ppm, or fixed rates with at least input and output")
        return self

    def to_override(self) -> PriceOverride:
        if self.discount_ppm is not None:
            return PriceOverride(discount_ppm=self.discount_ppm)
        assert self.input is not None and self.output is not None
        return PriceOverride(fixed=(self.input, self.cached_input if self.cached_input is not None else self.input,
                                    self.cache_write if self.cache_write is not None else self.input, self.output,
                                    self.reasoning if self.reasoning is not None else self.output))


MAX_TOKEN_RATE_RULES = 16


class TokenRateRule(BaseModel):
    """Tokens per minute per tenant, workflow or model (match None: each workflow/model separately)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per: Literal["tenant", "workflow", "model"]
    match: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_CHARS)
    count: Literal["input", "output", "total"] = "total"
    tokens_per_min: int = Field(ge=1, le=10**9)


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_models: tuple[str, ...] | None = None
    max_prompt_tokens: int = Field(default=128_000, ge=1, le=10_000_000)
    max_output_tokens: int = Field(default=4096, ge=1, le=1_000_000)
    request_envelope_micro_usd: int | None = Field(default=None, ge=0)
    downgrades: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    tier_rules: tuple[TierRule, ...] = ()
    rate_limit_per_s: int | None = Field(default=None, ge=1, le=1_000_000)
    rate_burst: int = Field(default=100, ge=1, le=10_000_000)
    anomaly: AnomalyRule = AnomalyRule()
    # What an SDK process may spend per minute on calls made without a decision while the gate is away
    # (ledgergate.admission; the client's own setting may only lower it). 0: those calls fail closed.
    fail_open_micro_usd_per_min: int = Field(default=0, ge=0, le=10**12)
    cache: CacheRuleModel = CacheRuleModel()
    # Regular expressions whose matches are replaced ("[redacted]") in any prompt or answer text before it is
    # stored where it lasts: a cache entry, a dead letter's original bytes (shared/redaction.py).
    redact_patterns: tuple[str, ...] = Field(default=(), max_length=REDACTION_PATTERNS_MAX)
    # Negotiated prices by model (catalogue model names); the policy's estimate and the settlement both
    # price through them, and the ledger records the override with each charge (docs/decisions/0012).
    price_overrides: dict[str, PriceOverrideRule] = Field(default_factory=dict, max_length=MAX_PRICE_OVERRIDES)
    # Data locality: the deployment regions this tenant's calls may go to (deployments.yaml's names); None: any.
    # A request no allowed region serves (nor any downgrade) is DENY data_locality; each candidate is held on
    # its region's REGION scope, so a REGION budget applies.
    allowed_regions: tuple[str, ...] | None = Field(default=None, min_length=1, max_length=64)
    # Token-rate limits (services/policy/tokenrate.py): a plan counts its estimate when made, corrected by
    # its metered usage; over a limit is THROTTLE (rate_limited) with retry_after_ms.
    token_rate_limits: tuple[TokenRateRule, ...] = Field(default=(), max_length=MAX_TOKEN_RATE_RULES)

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _patterns(value)

    @field_validator("allowed_regions")
    @classmethod
    def _region_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for region in value or ():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", region):
                raise ValueError(f"allowed_regions: {region[:80]!r} is not a region name "
                                 "(letters, digits, '.', '_', '-')")
        return value

    @field_validator("price_overrides")
    @classmethod
    def _override_models(cls, value: dict[str, PriceOverrideRule]) -> dict[str, PriceOverrideRule]:
        for model in value:
            if not 0 < len(model) <= MAX_MODEL_NAME_CHARS or not model.isprintable():
                raise ValueError(f"price_overrides: model names are 1..{MAX_MODEL_NAME_CHARS} printable characters")
        return value

    def price_override(self, model: str) -> PriceOverride | None:
        rule = self.price_overrides.get(model)
        return rule.to_override() if rule is not None else None


def tenant_price_override(policy_json: str, model: str) -> PriceOverride | None:
    """The override a tenant's own document sets for `model` (None without one, or when the document is not
    valid: it was checked when set, so only an old ledger could hold a bad one). For the ledger's settlement of
    a call that had no plan (a fail-open call); planned calls carry the override in their price key."""
    try:
        doc = json.loads(policy_json) if policy_json else {}
        rule = (doc.get("price_overrides") or {}).get(model) if isinstance(doc, dict) else None
        return None if rule is None else PriceOverrideRule.model_validate(rule).to_override()
    except (ValueError, ValidationError, AttributeError):
        return None


@cache
def default_policy(path: Path = DEFAULT_PATH) -> Policy:
    try:
        return Policy.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise PolicyError(f"default policy {path} is invalid: {exc}") from exc


def parse_policy(policy_json: str, base: Policy) -> Policy:
    """A tenant document overrides the base field by field."""
    try:
        doc = json.loads(policy_json)
        if not isinstance(doc, dict):
            raise PolicyError("a policy document must be a JSON object")
        merged = {**base.model_dump(), **doc}
        for nested in ("anomaly", "cache"):  # nested: the tenant's keys override the base's one by one
            if isinstance(doc.get(nested), dict):
                merged[nested] = {**getattr(base, nested).model_dump(), **doc[nested]}
        return Policy.model_validate(merged)
    except (ValueError, ValidationError) as exc:
        raise PolicyError(f"invalid policy document: {exc}") from exc
