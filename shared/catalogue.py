"""The price and deployment catalogues: data files in shared/data/, loaded once and validated."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ledgergate.shared.errors import CatalogueError, UnknownPriceError

DATA_DIR = Path(__file__).with_name("data")
PPM = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens


@dataclass(frozen=True, slots=True)
class ModelPrice:
    model: str
    tier: str
    input_micro_usd_per_m: int
    cached_input_micro_usd_per_m: int
    output_micro_usd_per_m: int


@dataclass(frozen=True, slots=True)
class PriceVersion:
    version: str
    effective_from_ms: int
    models: dict[str, ModelPrice]
    region_ppm: dict[str, int]


def _ceil_div(numerator: int, denominator: int) -> int:
    # Round charges up: a budget gate must never under-count spend by a rounding micro-dollar.
    return -(-numerator // denominator)


@dataclass(frozen=True)
class PriceCatalogue:
    versions: tuple[PriceVersion, ...]  # ascending effective_from_ms
    tiers: tuple[str, ...]  # most capable first

    def at(self, now_ms: int) -> PriceVersion:
        current = self.versions[0]
        for v in self.versions:
            if v.effective_from_ms <= now_ms:
                current = v
        return current

    def version(self, version: str) -> PriceVersion:
        for v in self.versions:
            if v.version == version:
                return v
        raise UnknownPriceError(f"no price version {version!r}")

    def price(self, version: str, model: str) -> ModelPrice:
        try:
            return self.version(version).models[model]
        except KeyError:
            raise UnknownPriceError(f"model {model!r} has no price in version {version}") from None

    def cost_micro_usd(self, version: str, model: str, input_tokens: int, cached_input_tokens: int,
                       output_tokens: int, region: str | None = None) -> int:
        """Integer cost. Reasoning tokens are billed as output, so callers pass output + reasoning."""
        assert input_tokens >= 0 and cached_input_tokens >= 0 and output_tokens >= 0
        p = self.price(version, model)
        uncached = max(0, input_tokens - cached_input_tokens)
        cached = min(cached_input_tokens, input_tokens)
        numerator = (uncached * p.input_micro_usd_per_m + cached * p.cached_input_micro_usd_per_m
                     + output_tokens * p.output_micro_usd_per_m)
        ppm = self.version(version).region_ppm.get(region or "", PPM)
        return _ceil_div(numerator * ppm, TOKENS_PER_PRICE_UNIT * PPM)

    def tier_of(self, model: str, version: str) -> str:
        return self.price(version, model).tier


@dataclass(frozen=True, slots=True)
class Deployment:
    model: str
    endpoint: str
    region: str
    # Where the proxy (services/proxy) forwards a call the gate sent here: an OpenAI-compatible base URL,
    # the environment variable holding its API key, and the provider's own name for the model.
    base_url: str | None = None
    api_key_env: str | None = None
    upstream_model: str | None = None


@dataclass(frozen=True)
class DeploymentCatalogue:
    by_model: dict[str, tuple[Deployment, ...]]

    def choose(self, model: str, region: str | None, request_id: str) -> Deployment | None:
        options = self.by_model.get(model, ())
        if not options:
            return None
        local = [d for d in options if d.region == region] or list(options)
        # crc32, not hash(): the choice must be the same in every process and after restarts.
        return local[zlib.crc32(request_id.encode()) % len(local)]

    def find(self, model: str, endpoint: str) -> Deployment | None:
        """The catalogue's entry for a decision's deployment."""
        return next((d for d in self.by_model.get(model, ()) if d.endpoint == endpoint), None)


@cache
def prices(path: Path = DATA_DIR / "prices.yaml") -> PriceCatalogue:
    doc = yaml.safe_load(path.read_text())
    versions = []
    for v in doc["versions"]:
        models = {name: ModelPrice(name, m["tier"], int(m["input"]), int(m["cached_input"]), int(m["output"]))
                  for name, m in v["models"].items()}
        if any(m.tier not in doc["tiers"] for m in models.values()):
            raise CatalogueError(f"price version {v['version']} names a tier outside {doc['tiers']}")
        versions.append(PriceVersion(str(v["version"]), int(v["effective_from_ms"]), models,
                                     {k: int(x) for k, x in (v.get("regions") or {}).items()}))
    versions.sort(key=lambda x: x.effective_from_ms)
    if not versions:
        raise CatalogueError(f"{path} has no price versions")
    return PriceCatalogue(tuple(versions), tuple(doc["tiers"]))


@cache
def deployments(path: Path = DATA_DIR / "deployments.yaml") -> DeploymentCatalogue:
    doc = yaml.safe_load(path.read_text())
    return DeploymentCatalogue({model: tuple(Deployment(model, d["endpoint"], d["region"], d.get("base_url"),
                                                        d.get("api_key_env"), d.get("upstream_model"))
                                             for d in items)
                                for model, items in doc["deployments"].items()})
