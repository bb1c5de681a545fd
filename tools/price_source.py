"""genai-prices as the source of price versions: reads the catalogue the package ships (its bundled data,
never the network) for the models shared/data/price_sources.yaml maps, as exact decimals.

genai-prices can refresh its data from GitHub at run time, but only through `UpdatePrices` (a background
thread that a caller starts); `calc_price` and `data_snapshot.get_snapshot()` use the bundled snapshot
unless such an updater has replaced it. This module never starts one and reads `genai_prices.data.providers`
(the bundled data) directly, so what it returns depends on the pinned package version alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from ledgergate.shared.catalogue import DATA_DIR
from ledgergate.shared.errors import CatalogueError

SOURCES_PATH = DATA_DIR / "price_sources.yaml"
MAX_SOURCES = 1_000


@dataclass(frozen=True, slots=True)
class SourceRef:
    """One of our model names mapped to genai-prices' provider id and model id (exact ids, no matching)."""

    provider: str
    model: str

    def text(self) -> str:
        return f"{self.provider}/{self.model}"


@dataclass(frozen=True, slots=True)
class SourcePrice:
    """What the source publishes for one model on one date: USD per million tokens, exact. None: the
    source has no such price (the importer's defaults apply)."""

    ref: str
    input_usd_per_m: Decimal
    output_usd_per_m: Decimal
    cached_input_usd_per_m: Decimal | None
    cache_write_usd_per_m: Decimal | None
    reasoning_usd_per_m: Decimal | None
    # The first input-token threshold above which the source charges another rate (Anthropic's long
    # context prices); ledgergate prices the base rate (docs/prices.md). None: a flat price.
    token_tier_from: int | None = None


@dataclass(frozen=True, slots=True)
class SourceMap:
    label: str  # e.g. "genai-prices==0.2.3": the package and version the figures come from
    refs: dict[str, SourceRef]
    tiers: dict[str, str]  # a tier for a model that no earlier version prices


def load_sources(path: Path = SOURCES_PATH) -> SourceMap:
    doc = yaml.safe_load(path.read_text())
    models: Mapping[str, Mapping[str, Any]] = doc.get("models") or {}
    if len(models) > MAX_SOURCES:
        raise CatalogueError(f"{path}: more than {MAX_SOURCES} models")
    try:
        refs = {name: SourceRef(str(m["provider"]), str(m["model"])) for name, m in models.items()}
    except (KeyError, TypeError) as exc:
        raise CatalogueError(f"{path}: every model needs provider and model ({exc!r})") from None
    tiers = {name: str(m["tier"]) for name, m in models.items() if m.get("tier")}
    return SourceMap(f"genai-prices=={package_version()}", refs, tiers)


def package_version() -> str:
    from importlib.metadata import version

    return version("genai-prices")


def _decimal(value: object) -> tuple[Decimal | None, int | None]:
    from genai_prices.types import TieredPrices

    if value is None:
        return None, None
    if isinstance(value, TieredPrices):
        return value.base, (value.tiers[0].start if value.tiers else None)
    assert isinstance(value, Decimal), value
    return value, None


def read(refs: Mapping[str, SourceRef], at: datetime) -> tuple[dict[str, SourcePrice], dict[str, str]]:
    """The source's prices in force at `at` for each mapped model, and why each other one has none."""
    from genai_prices import data  # the bundled snapshot (module docstring)

    providers = {p.id: p for p in data.providers}
    found: dict[str, SourcePrice] = {}
    missing: dict[str, str] = {}
    for name, ref in refs.items():
        provider = providers.get(ref.provider)
        info = next((m for m in provider.models if m.id == ref.model), None) if provider else None
        if info is None:
            missing[name] = f"genai-prices {package_version()} has no {ref.text()}"
            continue
        # The standard price of that date (time-conditional prices resolved); request variants such as
        # OpenAI's flex or priority service tiers are not ours to choose, so none is applied.
        p = info.get_prices(at)
        inp, tier_in = _decimal(p.input_mtok)
        out, tier_out = _decimal(p.output_mtok)
        if inp is None or out is None:
            missing[name] = f"{ref.text()} has no per-token input and output price"
            continue
        cached, tier_c = _decimal(p.cache_read_mtok)
        write, tier_w = _decimal(p.cache_write_mtok)
        reasoning, tier_r = _decimal(p.output_reasoning_mtok)
        tier_from = min((t for t in (tier_in, tier_out, tier_c, tier_w, tier_r) if t is not None), default=None)
        found[name] = SourcePrice(ref.text(), inp, out, cached, write, reasoning, tier_from)
    return found, missing
