"""The benchmark's hot-tenant shape: the same prompts as the fleet, redrawn senders, one tenant with
half the traffic, the rest falling off by rank, and a limit that binds for the hot tenant."""

from __future__ import annotations

from collections import Counter

from ledgergate.tools.bench.workload import HOT_SHARE, hot_tenant, limits, workload


def test_the_hot_tenant_sends_half_and_the_rest_fall_off_by_rank() -> None:
    fleet = workload(200, "u", 4000, 3)
    hot = workload(200, "u", 4000, 3, "hot")
    assert hot.agents == fleet.agents and len(hot.schedule) == len(fleet.schedule)
    senders = Counter(hot.agents[a].tenant for a, *_ in hot.schedule)
    top = hot_tenant(hot)
    assert abs(senders[top] / len(hot.schedule) - HOT_SHARE) < 0.03
    _, *others = sorted(senders)
    assert senders[others[0]] > 4 * max(1, senders[others[100]])
    # Every request still draws its user message from its agent's band.
    for a, user, _prio, _max_out in hot.schedule:
        lo, hi = hot.agents[a].sizes
        assert lo <= user <= hi


def test_the_hot_tenants_limit_is_a_share_of_its_demand() -> None:
    hot = workload(50, "v", 1000, 5, "hot")
    top = hot_tenant(hot)
    assert limits(hot, top)[top] < limits(hot)[top]
