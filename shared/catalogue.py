"""The price and deployment catalogues: data files in shared/data/, loaded once and validated."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ledgergate.shared.errors import CatalogueError, UnknownPriceError

DATA_DIR = Path(__file__).with_name("data")
PPM = 1_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens


MAX_PRICE_MICRO_USD_PER_M = 10**10  # $10,000 per million tokens: anything above is a typo
MAX_PRICE_KEY_CHARS = 256


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices in one version, integer micro-USD per million tokens. `source` names where the
    figures came from (genai-prices' `provider/model`), None when they were written by hand."""

    model: str
    tier: str
    input_micro_usd_per_m: int
    cached_input_micro_usd_per_m: int
    output_micro_usd_per_m: int
    cache_write_micro_usd_per_m: int
    reasoning_micro_usd_per_m: int
    source: str | None = None

    def __post_init__(self) -> None:
        for rate in self.rates():
            assert 0 <= rate <= MAX_PRICE_MICRO_USD_PER_M, (self.model, rate)

    def rates(self) -> tuple[int, int, int, int, int]:
        """(input, cached_input, cache_write, output, reasoning): the order of a fixed override's key."""
        return (self.input_micro_usd_per_m, self.cached_input_micro_usd_per_m, self.cache_write_micro_usd_per_m,
                self.output_micro_usd_per_m, self.reasoning_micro_usd_per_m)


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """A tenant's negotiated price for one model (policy `price_overrides`): exactly one of a discount on
    the catalogue's price, in parts per million, or fixed rates (input, cached_input, cache_write, output,
    reasoning; micro-USD per million tokens) that replace the catalogue's figures."""

    discount_ppm: int | None = None
    fixed: tuple[int, int, int, int, int] | None = None

    def __post_init__(self) -> None:
        assert (self.discount_ppm is None) != (self.fixed is None), self
        assert self.discount_ppm is None or 0 <= self.discount_ppm <= PPM, self
        assert self.fixed is None or all(0 <= r <= MAX_PRICE_MICRO_USD_PER_M for r in self.fixed), self

    def spec(self) -> str:
        if self.fixed is not None:
            return "fixed=" + ",".join(str(r) for r in self.fixed)
        return f"discount_ppm={self.discount_ppm}"


@dataclass(frozen=True, slots=True)
class PriceKey:
    """What a reservation and its settlement record as `price_version`: the catalogue version, the region
    whose surcharge applies (only when it has one), and the tenant's override for the one model it names.
    Written `VERSION[@REGION][+MODEL:SPEC]`, so the ledger alone re-prices any charge exactly
    (docs/decisions/0012)."""

    version: str
    model: str | None = None
    override: PriceOverride | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        assert "+" not in self.version and "@" not in self.version, self
        assert (self.model is None) == (self.override is None), self
        assert self.region is None or _REGION_IN_KEY.fullmatch(self.region), self

    def text(self) -> str:
        head = self.version if self.region is None else f"{self.version}@{self.region}"
        if self.override is None:
            return head
        return f"{head}+{self.model}:{self.override.spec()}"


# A region as a key holds it: the catalogue's region names (letters, digits, '.', '_', '-').
_REGION_IN_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}")


def price_key(version: str, model: str, override: PriceOverride | None, region: str | None = None) -> str:
    """`region`: the request's region when the version charges it a surcharge (None otherwise)."""
    key = PriceKey(version, model if override else None, override, region).text()
    assert len(key) <= MAX_PRICE_KEY_CHARS, key
    return key


def parse_price_key(text: str) -> PriceKey:
    """The inverse of `PriceKey.text`; a version id alone (every entry before overrides) is a key too."""
    head, plus, rest = text.partition("+")
    version, at, region = head.partition("@")
    if at and not _REGION_IN_KEY.fullmatch(region):
        raise UnknownPriceError(f"price key {text[:MAX_PRICE_KEY_CHARS]!r} names no valid region")
    where = region if at else None
    if not plus:
        return PriceKey(version, region=where)
    model, colon, spec = rest.rpartition(":")  # a model name may hold ':', a spec never does
    name, eq, value = spec.partition("=")
    try:
        if colon and model and eq and name == "discount_ppm":
            return PriceKey(version, model, PriceOverride(discount_ppm=int(value)), where)
        rates = tuple(int(x) for x in value.split(","))
        if colon and model and eq and name == "fixed" and len(rates) == 5:
            return PriceKey(version, model, PriceOverride(fixed=(rates[0], rates[1], rates[2], rates[3], rates[4])),
                            where)
    except (ValueError, AssertionError):
        pass
    raise UnknownPriceError(f"price key {text[:MAX_PRICE_KEY_CHARS]!r} is not VERSION[@REGION][+MODEL:SPEC]")


@dataclass(frozen=True, slots=True)
class PriceVersion:
    version: str
    effective_from_ms: int
    models: dict[str, ModelPrice]
    region_ppm: dict[str, int]
    source: str | None = None  # e.g. "genai-prices==0.2.3" for an imported version


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

    def version(self, key: str) -> PriceVersion:
        """The catalogue version of a price key (a version id, or a key carrying a tenant's override)."""
        return self._version(parse_price_key(key).version)

    def _version(self, version: str) -> PriceVersion:
        for v in self.versions:
            if v.version == version:
                return v
        raise UnknownPriceError(f"no price version {version!r}")

    def list_price(self, key: str, model: str) -> ModelPrice:
        """The catalogue's figures, before any override the key carries."""
        try:
            return self.version(key).models[model]
        except KeyError:
            raise UnknownPriceError(f"model {model!r} has no price in version {key}") from None

    def surcharged(self, version: str, region: str | None) -> str | None:
        """`region` when `version` charges it a surcharge (so a price key must carry it), else None."""
        if region is None or self._version(version).region_ppm.get(region, PPM) == PPM:
            return None
        return region

    def _resolve(self, key: str, model: str) -> tuple[ModelPrice, PriceVersion, int, str | None]:
        """(the rates charged, the catalogue version, the discount in ppm, the key's surcharged region) of
        `model` under `key`."""
        parsed = parse_price_key(key)
        version = self._version(parsed.version)
        listed = version.models.get(model)
        if listed is None:
            raise UnknownPriceError(f"model {model!r} has no price in version {parsed.version}")
        override = parsed.override if parsed.model == model else None  # it names one model; others pay list
        if override is None:
            return listed, version, 0, parsed.region
        if override.fixed is None:
            return listed, version, override.discount_ppm or 0, parsed.region
        inp, cached, write, out, reasoning = override.fixed
        return ModelPrice(model, listed.tier, inp, cached, out, write, reasoning, "override"), version, 0, parsed.region

    def price(self, key: str, model: str) -> ModelPrice:
        """The rates this key charges `model`: a fixed override's figures replace the catalogue's (the tier
        stays the catalogue's); a discount is applied to the cost (`cost_micro_usd`), not to the rates."""
        return self._resolve(key, model)[0]

    def cost_micro_usd(self, key: str, model: str, input_tokens: int, cached_input_tokens: int, output_tokens: int,
                       *, reasoning_tokens: int, region: str | None = None, cache_write_tokens: int = 0) -> int:
        """Integer cost, rounded up once. Output and reasoning tokens are disjoint counts (the Usage record's),
        each at its own rate; cached input is part of input. Cache-write tokens are priced when a caller
        has them (no Usage record carries them yet: docs/prices.md). The region's surcharge: `region`'s, else
        the one the key carries (what a reservation and its settlement record)."""
        assert min(input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cache_write_tokens) >= 0
        p, version, discount_ppm, key_region = self._resolve(key, model)
        uncached = max(0, input_tokens - cached_input_tokens)
        cached = min(cached_input_tokens, input_tokens)
        numerator = (uncached * p.input_micro_usd_per_m + cached * p.cached_input_micro_usd_per_m
                     + cache_write_tokens * p.cache_write_micro_usd_per_m
                     + output_tokens * p.output_micro_usd_per_m + reasoning_tokens * p.reasoning_micro_usd_per_m)
        region_ppm = version.region_ppm.get(region or key_region or "", PPM)
        cost = _ceil_div(numerator * region_ppm * (PPM - discount_ppm), TOKENS_PER_PRICE_UNIT * PPM * PPM)
        assert cost >= 0, (key, model, cost)
        return cost

    def tier_of(self, model: str, key: str) -> str:
        return self.list_price(key, model).tier


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

    def regions_of(self, model: str) -> frozenset[str]:
        return frozenset(d.region for d in self.by_model.get(model, ()))

    def choose(self, model: str, region: str | None, request_id: str, *, strict: bool = False) -> Deployment | None:
        """A deployment of `model`, in `region` when one is there (only there when `strict`: data locality)."""
        options = self.by_model.get(model, ())
        if not options:
            return None
        local = [d for d in options if d.region == region]
        if not local and strict:
            return None
        local = local or list(options)
        # crc32, not hash(): the choice must be the same in every process and after restarts.
        return local[zlib.crc32(request_id.encode()) % len(local)]

    def find(self, model: str, endpoint: str) -> Deployment | None:
        """The catalogue's entry for a decision's deployment."""
        return next((d for d in self.by_model.get(model, ()) if d.endpoint == endpoint), None)


def _model_price(name: str, m: dict[str, object], version: str) -> ModelPrice:
    # Optional rates default as providers bill them when they publish none: cached input and cache
    # writes at the input rate, reasoning at the output rate.
    try:
        inp, out = int(str(m["input"])), int(str(m["output"]))
        return ModelPrice(name, str(m["tier"]), inp, int(str(m.get("cached_input", inp))), out,
                          int(str(m.get("cache_write", inp))), int(str(m.get("reasoning", out))),
                          str(m["source"]) if m.get("source") else None)
    except (KeyError, ValueError, AssertionError) as exc:
        raise CatalogueError(f"price version {version}: model {name!r} is invalid ({exc!r})") from None


def load_prices(path: Path) -> PriceCatalogue:
    doc = yaml.safe_load(path.read_text())
    versions: list[PriceVersion] = []
    for v in doc["versions"]:
        version = str(v["version"])
        models = {name: _model_price(name, m, version) for name, m in v["models"].items()}
        if any(m.tier not in doc["tiers"] for m in models.values()):
            raise CatalogueError(f"price version {version} names a tier outside {doc['tiers']}")
        if "+" in version or "@" in version or any(x.version == version for x in versions):
            raise CatalogueError(f"price version id {version!r} is repeated or holds '+' or '@'")
        bad = [r for r in (v.get("regions") or {}) if not _REGION_IN_KEY.fullmatch(str(r))]
        if bad:
            raise CatalogueError(f"price version {version}: region names {bad} are not letters, digits, '.', '_', '-'")
        versions.append(PriceVersion(version, int(v["effective_from_ms"]), models,
                                     {k: int(x) for k, x in (v.get("regions") or {}).items()},
                                     str(v["source"]) if v.get("source") else None))
    versions.sort(key=lambda x: x.effective_from_ms)
    if not versions:
        raise CatalogueError(f"{path} has no price versions")
    return PriceCatalogue(tuple(versions), tuple(doc["tiers"]))


@cache
def prices(path: Path = DATA_DIR / "prices.yaml") -> PriceCatalogue:
    return load_prices(path)


@cache
def deployments(path: Path = DATA_DIR / "deployments.yaml") -> DeploymentCatalogue:
    doc = yaml.safe_load(path.read_text())
    return DeploymentCatalogue({model: tuple(Deployment(model, d["endpoint"], d["region"], d.get("base_url"),
                                                        d.get("api_key_env"), d.get("upstream_model"))
                                             for d in items)
                                for model, items in doc["deployments"].items()})
