"""Prices beyond input/output: the optional cache-write and reasoning rates, price keys, and a tenant's
negotiated overrides from its policy document through the plan, the hold and the settlement, re-priced
exactly from what the ledger records."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledgergate.events import InvocationCounted, Usage
from ledgergate.services.policy.core import Burn, plan
from ledgergate.shared.catalogue import (
    PriceKey,
    PriceOverride,
    UnknownPriceError,
    load_prices,
    parse_price_key,
    price_key,
    prices,
)
from ledgergate.shared.errors import CatalogueError
from ledgergate.shared.ledger.decide import Candidate, Reserve, Settle, decide_command, decide_reserve, decide_settle
from ledgergate.shared.ledger.entries import ReservationPlaced, ReservationSettled
from ledgergate.shared.ledger.packing import pack, unpack
from ledgergate.shared.ledger.state import TENANT, TenantState, evolve
from ledgergate.shared.policy import MAX_PRICE_OVERRIDES, PolicyError, default_policy, parse_policy

T0 = 1_794_000_000_000  # 2026-11-06: version 2026-11-01
PV = "2026-11-01"

CATALOGUE = """
tiers: [premium]
versions:
  - version: "2026-01-01"
    effective_from_ms: 0
    models:
      plain: {tier: premium, input: 1000000, output: 4000000}
      full:  {tier: premium, input: 1000000, cached_input: 100000, cache_write: 1250000, output: 4000000,
              reasoning: 6000000, source: "anthropic/x"}
    regions: {eu: 1100000}
"""


@pytest.fixture
def catalogue(tmp_path: Path):
    path = tmp_path / "prices.yaml"
    path.write_text(CATALOGUE)
    return load_prices(path)


# ---------------------------------------------------------------------------------------------- rates


def test_optional_rates_default_to_input_and_output(catalogue) -> None:
    plain = catalogue.price("2026-01-01", "plain")
    assert plain.rates() == (1_000_000, 1_000_000, 1_000_000, 4_000_000, 4_000_000)
    assert plain.source is None and catalogue.price("2026-01-01", "full").source == "anthropic/x"


def test_reasoning_and_cache_write_tokens_are_priced_at_their_own_rates(catalogue) -> None:
    # 1,000 input of which 200 cached, 100 output, 50 reasoning, 10 cache-write tokens
    cost = catalogue.cost_micro_usd("2026-01-01", "full", 1_000, 200, 100, reasoning_tokens=50, cache_write_tokens=10)
    # (800 x 1.00 + 200 x 0.10 + 10 x 1.25 + 100 x 4.00 + 50 x 6.00) micro-USD = 1,532.5, rounded up
    assert cost == 1_533
    # where no reasoning rate is given, reasoning costs what output costs (as before)
    assert catalogue.cost_micro_usd("2026-01-01", "plain", 0, 0, 100, reasoning_tokens=50) == \
        catalogue.cost_micro_usd("2026-01-01", "plain", 0, 0, 150, reasoning_tokens=0)


def test_a_rate_above_the_limit_is_a_catalogue_error(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(CATALOGUE.replace("output: 4000000}", "output: 40000000000000}"))
    with pytest.raises(CatalogueError, match="plain"):
        load_prices(path)


# ---------------------------------------------------------------------------------------------- price keys


@pytest.mark.parametrize("key", [
    PriceKey("2026-11-01"),
    PriceKey("2026-11-01", "gpt-4o", PriceOverride(discount_ppm=150_000)),
    PriceKey("2026-11-01", "ft:gpt-4o:acme", PriceOverride(fixed=(1, 2, 3, 4, 5))),
    PriceKey("2026-11-01", region="eu-west"),
    PriceKey("2026-11-01", "ft:gpt-4o@x:acme", PriceOverride(discount_ppm=5), region="eu-west"),
])
def test_price_keys_round_trip(key: PriceKey) -> None:
    assert parse_price_key(key.text()) == key


def test_a_plain_version_is_its_own_key() -> None:
    assert price_key(PV, "gpt-4o", None) == PV
    assert price_key(PV, "gpt-4o", PriceOverride(discount_ppm=1)) == "2026-11-01+gpt-4o:discount_ppm=1"


@pytest.mark.parametrize("text", ["2026-11-01+gpt-4o", "2026-11-01+gpt-4o:discount_ppm=x",
                                  "2026-11-01+gpt-4o:discount_ppm=2000000", "2026-11-01+gpt-4o:fixed=1,2,3",
                                  "2026-11-01+:discount_ppm=1", "2026-11-01+gpt-4o:surcharge=5",
                                  "2026-11-01@", "2026-11-01@eu west", "2026-11-01@+gpt-4o:discount_ppm=1"])
def test_malformed_keys_are_unknown_prices(text: str) -> None:
    with pytest.raises(UnknownPriceError):
        parse_price_key(text)


def test_discount_applies_once_to_the_exact_total_after_the_region(catalogue) -> None:
    key = price_key("2026-01-01", "plain", PriceOverride(discount_ppm=150_000))
    got = catalogue.cost_micro_usd(key, "plain", 333, 0, 77, reasoning_tokens=0, region="eu")
    numerator = (333 * 1_000_000 + 77 * 4_000_000) * 1_100_000 * 850_000
    assert got == -(-numerator // 10**18)
    assert catalogue.price(key, "plain") == catalogue.price("2026-01-01", "plain")  # rates unchanged


def test_fixed_rates_replace_the_list_price_for_the_named_model_only(catalogue) -> None:
    key = price_key("2026-01-01", "plain", PriceOverride(fixed=(500_000, 50_000, 500_000, 2_000_000, 2_000_000)))
    assert catalogue.cost_micro_usd(key, "plain", 1_000, 0, 1_000, reasoning_tokens=0) == 2_500
    assert catalogue.tier_of("plain", key) == "premium"
    # another model settled under this key (a provider reporting something else) pays its list price
    assert catalogue.cost_micro_usd(key, "full", 1_000, 0, 1_000, reasoning_tokens=0) == 5_000


# ---------------------------------------------------------------------------------------------- the policy document


@pytest.mark.parametrize(("doc", "why"), [
    ('{"price_overrides": {"gpt-4o": {"discount_ppm": 1, "input": 1, "output": 1}}}', "not both"),
    ('{"price_overrides": {"gpt-4o": {}}}', "needs discount_ppm"),
    ('{"price_overrides": {"gpt-4o": {"input": 1}}}', "needs discount_ppm"),
    ('{"price_overrides": {"gpt-4o": {"discount_ppm": 1000001}}}', "less than or equal"),
    ('{"price_overrides": {"gpt-4o": {"discount_ppm": -1}}}', "greater than or equal"),
    ('{"price_overrides": {"gpt-4o": {"input": 1, "output": 100000000000}}}', "less than or equal"),
    ('{"price_overrides": {"gpt-4o": {"discount": 5}}}', "Extra inputs"),
    ('{"price_overrides": {"": {"discount_ppm": 5}}}', "printable"),
])
def test_invalid_overrides_are_rejected(doc: str, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parse_policy(doc, default_policy())


def test_override_count_is_limited() -> None:
    many = ", ".join(f'"m{i}": {{"discount_ppm": 1}}' for i in range(MAX_PRICE_OVERRIDES + 1))
    with pytest.raises(PolicyError, match="at most"):
        parse_policy(f'{{"price_overrides": {{{many}}}}}', default_policy())


def test_fixed_override_defaults_like_the_catalogue() -> None:
    policy = parse_policy('{"price_overrides": {"gpt-4o": {"input": 2000000, "output": 8000000}}}', default_policy())
    assert policy.price_override("gpt-4o") == PriceOverride(fixed=(2_000_000, 2_000_000, 2_000_000, 8_000_000,
                                                                   8_000_000))
    assert policy.price_override("gpt-4o-mini") is None
    assert default_policy().price_overrides == {}


# ---------------------------------------------------------------------------------------------- plan -> settle


def _counted(model: str = "gpt-4o") -> InvocationCounted:
    return InvocationCounted("r1", "acme", "", "", model, 500, "NORMAL", None, None, {}, T0, {}, 1_000, 1_100,
                             "o200k_base", 500, "sha", None, T0)


DISCOUNT = '{"price_overrides": {"gpt-4o": {"discount_ppm": 150000}}}'
FIXED = '{"price_overrides": {"gpt-4o": {"input": 2000000, "cached_input": 1000000, "output": 8000000}}}'


def test_the_plan_prices_with_the_override_and_carries_it_in_the_key() -> None:
    policy = parse_policy(DISCOUNT, default_policy())
    candidates, rejection = plan(_counted(), policy, Burn(0, 10**9), prices(), T0)
    assert rejection is None
    first, *downgrades = candidates
    assert first.price_version == "2026-11-01+gpt-4o:discount_ppm=150000"
    # list: 1,000 in at 2.50 = 2,500; 500 out at 10.00 = 5,000; each less 15 %
    assert (first.estimated_input_micro_usd, first.estimated_output_micro_usd) == (2_125, 4_250)
    assert all(c.price_version == PV for c in downgrades)  # no override: list price, the plain version


def _placed_and_settled(policy_json: str, usage: Usage, settled_model: str = "gpt-4o",
                        ) -> tuple[ReservationPlaced, ReservationSettled, TenantState]:
    policy = parse_policy(policy_json, default_policy())
    candidates, _ = plan(_counted(), policy, Burn(0, 10**9), prices(), T0)
    state = TenantState("acme")
    for e in decide_command(state, _limit(), T0):  # type: ignore[union-attr]
        evolve(state, e)
    reserve = Reserve("r1", "acme", "", "agent", "gpt-4o", "NORMAL", None, T0, "sha", 1_000, None, 1,
                      tuple(Candidate(c.model, c.tier, c.estimated_cost_micro_usd, c.granted_output_tokens,
                                      c.price_version) for c in candidates))
    placed = decide_reserve(state, reserve, T0, 60_000, "0:1")[-1]
    assert isinstance(placed, ReservationPlaced)
    evolve(state, placed)
    state, _ = unpack(pack(state))  # the hold survives a snapshot with its key
    settled = decide_settle(state, Settle("r1", "acme", settled_model, usage, False, False), T0 + 5, prices())[0]
    assert isinstance(settled, ReservationSettled)
    return placed, settled, state


def _limit():
    from ledgergate.shared.ledger.decide import Command

    return Command("set", "acme", "SET_LIMIT", TENANT, "acme", 100_000_000, None, None, "test")


@pytest.mark.parametrize("policy_json", [DISCOUNT, FIXED])
def test_a_settlement_with_an_override_re_prices_exactly_from_the_ledger(policy_json: str) -> None:
    usage = Usage(1_000, 400, 450, 50)
    placed, settled, _ = _placed_and_settled(policy_json, usage)
    assert settled.price_version == placed.price_version != PV
    # History alone (the entry's key and raw counts) gives the same charge, with the catalogue as it is.
    assert settled.actual_micro_usd == prices().cost_micro_usd(
        settled.price_version, settled.model, usage.input_tokens, usage.cached_input_tokens, usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens)
    if policy_json == DISCOUNT:  # 600 at 2.50 + 400 at 1.25 + 500 at 10.00 = 7,000, less 15 %
        assert settled.actual_micro_usd == 5_950
    else:  # 600 at 2.00 + 400 at 1.00 + 500 at 8.00 = 5,600
        assert settled.actual_micro_usd == 5_600
    # The estimate used the same effective price: the full grant settles at exactly the reserved amount.
    _, full, _ = _placed_and_settled(policy_json, Usage(1_000, 0, 500, 0))
    assert full.actual_micro_usd == full.reserved_micro_usd and full.released_micro_usd == 0


def test_a_settlement_for_another_model_pays_that_models_list_price() -> None:
    usage = Usage(1_000, 0, 500, 0)
    _, settled, _ = _placed_and_settled(DISCOUNT, usage, settled_model="gpt-4o-mini")
    assert settled.actual_micro_usd == prices().cost_micro_usd(PV, "gpt-4o-mini", 1_000, 0, 500, reasoning_tokens=0)


def test_the_region_a_key_carries_is_charged_its_surcharge(catalogue) -> None:
    # What the ledger settles with: the plan's key. A reservation for an eu request and its settlement both
    # pay eu's 10 %, with no region passed (the settlement has none but the key's).
    plain = catalogue.cost_micro_usd("2026-01-01", "plain", 1_000, 0, 1_000, reasoning_tokens=0)
    in_eu = price_key("2026-01-01", "plain", None, catalogue.surcharged("2026-01-01", "eu"))
    assert in_eu == "2026-01-01@eu"
    assert catalogue.cost_micro_usd(in_eu, "plain", 1_000, 0, 1_000, reasoning_tokens=0) == plain * 11 // 10
    assert catalogue.surcharged("2026-01-01", None) is None
    assert catalogue.surcharged("2026-01-01", "nowhere") is None  # no surcharge: the key stays the version
