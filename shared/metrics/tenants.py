"""Which tenant value a metric carries: the rule that keeps the tenant label's cardinality bounded.

Every labelled series is a time series Prometheus stores for as long as it is scraped; thousands of
tenants times outcomes, models and tiers is a series explosion. So the tenant label is a setting
(LEDGERGATE_METRICS_TENANT_LABEL):

- `off` (the default): no metric has a tenant label;
- `top`: the N busiest tenants (LEDGERGATE_METRICS_TENANT_TOP_N) get their own value and every other
  tenant counts as `other`, so a process exposes at most N + 1 tenant values;
- `all`: every tenant its own value: only for installs with few tenants.

How `top` picks them: a space-saving counter (Metwally, Agrawal, El Abbadi 2005) of 4N slots counts how
often each tenant is seen, in bounded memory whatever the number of tenants. Every RERANK_EVERY
observations the free labels go to the highest counts not yet labelled. A tenant keeps its label for
the life of the process (a label that moved would end one series and start another), so once N are
given the counting stops and the rule costs one set lookup; a tenant that becomes busy later is
`other` until the process restarts. Until the first re-rank (the first RERANK_EVERY observations of a
process) every tenant counts as `other`: labels go by counts, never to whoever happens to come first.
"""

from __future__ import annotations

from typing import Literal

Mode = Literal["off", "top", "all"]
OTHER = "other"
RERANK_EVERY = 1000


class TenantLabels:
    def __init__(self, mode: Mode, top_n: int) -> None:
        assert mode in ("off", "top", "all"), mode
        assert top_n >= 1, top_n
        self.mode = mode
        self.top_n = top_n
        self.slots = 4 * top_n
        self.labelled: set[str] = set()
        self.counts: dict[str, int] = {}  # the space-saving counter: tenant -> count (an overestimate)
        self.seen = 0

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def label(self, tenant_id: str) -> str:
        """The tenant label value to record `tenant_id` under (call only when `enabled`)."""
        if self.mode == "all":
            return tenant_id
        if tenant_id in self.labelled:
            return tenant_id
        if len(self.labelled) >= self.top_n:
            return OTHER
        self._count(tenant_id)
        return tenant_id if tenant_id in self.labelled else OTHER

    def _count(self, tenant_id: str) -> None:
        counts = self.counts
        if tenant_id in counts:
            counts[tenant_id] += 1
        elif len(counts) < self.slots:
            counts[tenant_id] = 1
        else:
            # Space-saving: the newcomer takes the smallest slot and inherits its count (+1), so a
            # tenant's count never underestimates it. O(slots), only until every label is given.
            smallest = min(counts, key=counts.__getitem__)
            counts[tenant_id] = counts.pop(smallest) + 1
        self.seen += 1
        if self.seen % RERANK_EVERY == 0:
            self._rerank()

    def _rerank(self) -> None:
        free = self.top_n - len(self.labelled)
        ranked = sorted((t for t in self.counts if t not in self.labelled), key=self.counts.__getitem__, reverse=True)
        self.labelled.update(ranked[:free])
        if len(self.labelled) >= self.top_n:
            self.counts = {}  # every label given: nothing left to rank
        assert len(self.labelled) <= self.top_n
