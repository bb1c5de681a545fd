"""The price import's pure core: from the previous version and the source's figures, the next version;
its text for prices.yaml; what changed between two versions; one model's prices across versions. No I/O.

Rules (docs/prices.md): a new version prices every model the deployment catalogue uses, plus every model
of the previous version (carried unchanged, so no model a tenant uses disappears); a model the source
lacks keeps its previous figures; tiers and regions carry over; USD per million become integer micro-USD
per million, rounded up (exact for any price in whole micro-dollars, so for cents).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import ROUND_CEILING, Decimal

from ledgergate.shared.catalogue import ModelPrice, PriceCatalogue, PriceVersion
from ledgergate.shared.errors import CatalogueError
from ledgergate.shared.units import iso_ms
from ledgergate.tools.price_source import SourceMap, SourcePrice

MICRO_PER_USD = 1_000_000
MAX_MODELS = 1_000
RATE_FIELDS = ("input", "cached_input", "cache_write", "output", "reasoning")
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
VERSION_ID = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class ImportPlan:
    version: PriceVersion
    notes: dict[str, str]  # model -> what the reader of the file and the operator should know


def to_micro_per_m(usd_per_m: Decimal) -> tuple[int, bool]:
    """(micro-USD per million, rounded?): rounded up, so an imported price never under-charges."""
    exact = usd_per_m * MICRO_PER_USD
    micro = int(exact.to_integral_value(rounding=ROUND_CEILING))
    assert micro >= 0, usd_per_m
    return micro, Decimal(micro) != exact


def rates(p: ModelPrice) -> dict[str, int]:
    return dict(zip(RATE_FIELDS, p.rates(), strict=True))


def _from_source(name: str, tier: str, s: SourcePrice) -> tuple[ModelPrice, list[str]]:
    notes: list[str] = []

    def micro(value: Decimal | None, default: int) -> int:
        if value is None:
            return default
        m, rounded = to_micro_per_m(value)
        if rounded:
            notes.append(f"${value}/M rounded up to {m} micro-USD/M")
        return m

    inp = micro(s.input_usd_per_m, 0)
    out = micro(s.output_usd_per_m, 0)
    price = ModelPrice(name, tier, inp, micro(s.cached_input_usd_per_m, inp), out, micro(s.cache_write_usd_per_m, inp),
                       micro(s.reasoning_usd_per_m, out), s.ref)
    if s.token_tier_from is not None:
        notes.append(f"the source charges more from {s.token_tier_from} input tokens; the base rate is used")
    return price, notes


def build_version(previous: PriceVersion, deployed: Sequence[str], found: Mapping[str, SourcePrice],
                  missing: Mapping[str, str], sources: SourceMap, version_id: str, effective_from_ms: int,
                  tiers: Sequence[str]) -> ImportPlan:
    """The next version after `previous`; raises CatalogueError for a model it cannot price at all."""
    if not VERSION_ID.fullmatch(version_id):
        raise CatalogueError(f"version id {version_id!r} is not a date (YYYY-MM-DD)")
    if effective_from_ms <= previous.effective_from_ms:
        raise CatalogueError(f"a new version must start after {previous.version} "
                             f"({iso_ms(previous.effective_from_ms)})")
    names = list(dict.fromkeys([*previous.models, *deployed]))
    if len(names) > MAX_MODELS:
        raise CatalogueError(f"more than {MAX_MODELS} models")
    models: dict[str, ModelPrice] = {}
    notes: dict[str, str] = {}
    for name in names:
        before = previous.models.get(name)
        tier = before.tier if before else sources.tiers.get(name)
        if tier is None or tier not in tiers:
            raise CatalogueError(f"{name} is new to the catalogue: give it a tier ({', '.join(tiers)}) in "
                                 "price_sources.yaml")
        source = found.get(name)
        if source is not None:
            models[name], said = _from_source(name, tier, source)
        elif before is not None:
            models[name] = before
            why = missing.get(name) or ("not deployed" if name not in deployed else "no source in price_sources.yaml")
            said = [f"kept from {previous.version}: {why}"]
        else:
            raise CatalogueError(f"{name} is deployed but has no price: {missing.get(name, 'no source mapped')}")
        if said:
            notes[name] = "; ".join(said)
    version = PriceVersion(version_id, effective_from_ms, models, dict(previous.region_ppm), sources.label)
    return ImportPlan(version, notes)


def _name(text: str) -> str:
    return text if _PLAIN_NAME.fullmatch(text) else json.dumps(text)


def render_version(plan: ImportPlan) -> str:
    """The version as a YAML list item under `versions:`, in prices.yaml's own layout."""
    v = plan.version
    width = max(len(_name(m)) for m in v.models) + 1
    lines = [f'  - version: "{v.version}"',
             f"    effective_from_ms: {v.effective_from_ms}   # {iso_ms(v.effective_from_ms).replace('.000Z', 'Z')}"]
    if v.source:
        lines.append(f"    source: {json.dumps(v.source)}")
    lines.append("    models:")
    for name, p in v.models.items():
        if name in plan.notes:
            lines.append(f"      # {name}: {plan.notes[name]}")
        body = ", ".join([f"tier: {p.tier}", *(f"{k}: {x}" for k, x in rates(p).items())]
                         + ([f"source: {json.dumps(p.source)}"] if p.source else []))
        lines.append(f"      {(_name(name) + ':').ljust(width)} {{{body}}}")
    lines.append("    regions:")
    lines.extend(f"      {_name(region)}: {ppm}" for region, ppm in v.region_ppm.items())
    return "\n".join(lines) + "\n"


def same_version(a: PriceVersion, b: PriceVersion) -> bool:
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(PriceVersion))


@dataclass(frozen=True, slots=True)
class Change:
    model: str
    field: str
    old: str
    new: str


def diff(old: PriceVersion, new: PriceVersion) -> list[Change]:
    """Model by model, every figure (rates in micro-USD per million), tier and source that differs."""
    changes: list[Change] = []
    for name in dict.fromkeys([*old.models, *new.models]):
        a, b = old.models.get(name), new.models.get(name)
        if a is None or b is None:
            changes.append(Change(name, "model", "-" if a is None else "priced", "-" if b is None else "priced"))
            continue
        pairs = [("tier", a.tier, b.tier), *((k, str(x), str(rates(b)[k])) for k, x in rates(a).items()),
                 ("source", a.source or "-", b.source or "-")]
        changes.extend(Change(name, f, str(x), str(y)) for f, x, y in pairs if x != y)
    for region in dict.fromkeys([*old.region_ppm, *new.region_ppm]):
        x, y = old.region_ppm.get(region), new.region_ppm.get(region)
        if x != y:
            changes.append(Change(f"region {region}", "ppm", str(x or "-"), str(y or "-")))
    return changes


def history(catalogue: PriceCatalogue, model: str) -> list[tuple[PriceVersion, ModelPrice]]:
    """The model's prices in every version that has it, oldest first."""
    return [(v, v.models[model]) for v in catalogue.versions if model in v.models]
