"""A tenant's policy document: validated data, never code. Unknown keys are errors, so a typo in a
policy cannot silently fall back to a default."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledgergate.shared.errors import PolicyError

DEFAULT_PATH = Path(__file__).parent / "data" / "default_policy.yaml"


class TierRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    priority: Literal["LOW", "NORMAL", "HIGH"]
    burn_pct_at_least: int = Field(ge=0, le=1000)
    max_tier: str


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
        return Policy.model_validate({**base.model_dump(), **doc})
    except (ValueError, ValidationError) as exc:
        raise PolicyError(f"invalid policy document: {exc}") from exc
