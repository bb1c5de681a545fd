"""`ledgergate prices import | diff | show`: price versions from genai-prices (docs/prices.md).

import  builds the next effective-dated version for every model the deployment catalogue uses and
        appends it to prices.yaml (existing versions are never rewritten: the file's text is kept byte for
        byte, and the result is re-read and checked before it replaces the file).
diff    what an import would change against the version in force now, or between two stored versions.
show    one model's prices in every version, with the source id of each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from ledgergate.shared.catalogue import DATA_DIR, PriceCatalogue, deployments, load_prices
from ledgergate.shared.errors import CatalogueError
from ledgergate.shared.units import day_start_ms, iso_ms, usd
from ledgergate.tools import price_build, price_source
from ledgergate.tools.tables import table

PRICES_PATH = DATA_DIR / "prices.yaml"
DEPLOYMENTS_PATH = DATA_DIR / "deployments.yaml"


def _now_ms() -> int:
    return int(datetime.now(tz=UTC).timestamp() * 1000)


def next_day(now_ms: int) -> date:
    """The default effective date: tomorrow (UTC), so a new version never re-prices a moment already past
    (the tools that price by `at(completed_at)`, metering and the anomaly detector, would see it)."""
    return date.fromisoformat(iso_ms(now_ms)[:10]) + timedelta(days=1)


def plan_import(prices_path: Path, deployments_path: Path, sources_path: Path, effective: date,
                now_ms: int) -> price_build.ImportPlan:
    catalogue = load_prices(prices_path)
    effective_ms = day_start_ms(effective)
    if effective_ms <= now_ms:
        raise CatalogueError(f"--effective-from {effective} has begun: a version must start in the future, so "
                             "nothing already charged or metered is priced differently")
    if any(v.version == effective.isoformat() for v in catalogue.versions):
        raise CatalogueError(f"price version {effective} exists already (versions are immutable)")
    previous = catalogue.versions[-1]
    deployed = list(deployments(deployments_path).by_model)
    sources = price_source.load_sources(sources_path)
    found, missing = price_source.read({m: r for m, r in sources.refs.items() if m in deployed},
                                       datetime(effective.year, effective.month, effective.day, tzinfo=UTC))
    return price_build.build_version(previous, deployed, found, missing, sources, effective.isoformat(),
                                     effective_ms, catalogue.tiers)


def appended(prices_path: Path, plan: price_build.ImportPlan) -> str:
    """prices.yaml's text with the version appended; checked: every old version reads back unchanged."""
    text = prices_path.read_text()
    import yaml

    if list(yaml.safe_load(text))[-1] != "versions":
        raise CatalogueError(f"{prices_path}: `versions` must be the file's last key for an import to append")
    new_text = (text if text.endswith("\n") else text + "\n") + price_build.render_version(plan)
    before = load_prices(prices_path)
    with tempfile.TemporaryDirectory() as tmp:
        check = Path(tmp) / "prices.yaml"
        check.write_text(new_text)
        after = load_prices(check)
    kept = {v.version: v for v in after.versions}
    assert all(price_build.same_version(v, kept[v.version]) for v in before.versions), "an old version changed"
    assert price_build.same_version(kept[plan.version.version], plan.version), "the new version reads back wrong"
    return new_text


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _per_m(micro: int) -> str:
    """Micro-USD per million as dollars per million, trailing zeros dropped (2500000 -> 2.50)."""
    whole, frac = usd(micro).split(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def _changes_table(changes: list[price_build.Change]) -> str:
    rows = [(c.model, c.field, *((_per_m(int(c.old)) if c.old.isdigit() else c.old,
                                  _per_m(int(c.new)) if c.new.isdigit() else c.new)
                                 if c.field in price_build.RATE_FIELDS else (c.old, c.new))) for c in changes]
    return table(("model", "field", "old", "new"), rows) if rows else "no change"


def cmd_import(args: argparse.Namespace) -> int:
    now = _now_ms()
    effective = date.fromisoformat(args.effective_from) if args.effective_from else next_day(now)
    plan = plan_import(Path(args.prices), Path(args.deployments), Path(args.sources), effective, now)
    previous = load_prices(Path(args.prices)).versions[-1]
    print(f"version {plan.version.version} from {plan.version.source}, against {previous.version}:")
    print(_changes_table(price_build.diff(previous, plan.version)))
    for model, note in plan.notes.items():
        print(f"note: {model}: {note}")
    if args.dry_run:
        print(price_build.render_version(plan), end="")
        return 0
    out = Path(args.out or args.prices)
    _write(out, appended(Path(args.prices), plan))
    print(f"appended version {plan.version.version} to {out}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    catalogue = load_prices(Path(args.prices))
    if args.versions:
        old, new = (catalogue.version(v) for v in args.versions)
    else:
        now = _now_ms()
        effective = date.fromisoformat(args.effective_from) if args.effective_from else next_day(now)
        old = catalogue.at(now)
        new = plan_import(Path(args.prices), Path(args.deployments), Path(args.sources), effective, now).version
    print(f"{old.version} -> {new.version} (rates in USD per million tokens)")
    print(_changes_table(price_build.diff(old, new)))
    return 0


def show_text(catalogue: PriceCatalogue, model: str, sources: price_source.SourceMap) -> str:
    found = price_build.history(catalogue, model)
    if not found:
        raise CatalogueError(f"no price version prices {model!r}")
    ref = sources.refs.get(model)
    head = f"{model}: source {ref.text() if ref else 'none mapped'} (shared/data/price_sources.yaml)"
    rows: list[tuple[Any, ...]] = [(v.version, iso_ms(v.effective_from_ms)[:10], p.tier,
                                    *(_per_m(r) for r in p.rates()), p.source or "by hand") for v, p in found]
    return head + "\n" + table(("version", "from", "tier", *price_build.RATE_FIELDS, "source"), rows) + \
        "\n(USD per million tokens)"


def cmd_show(args: argparse.Namespace) -> int:
    print(show_text(load_prices(Path(args.prices)), args.model, price_source.load_sources(Path(args.sources))))
    return 0


def register(sub: Any) -> None:
    """Adds `prices` to the `ledgergate` parser (tools/cli.py)."""
    p = sub.add_parser("prices", help="price versions from genai-prices: import a new one, diff, show a model")
    actions = p.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prices", default=str(PRICES_PATH), help="the price catalogue (default: the packaged one)")
    common.add_argument("--sources", default=str(price_source.SOURCES_PATH),
                        help="our model names -> genai-prices provider/model")
    building = argparse.ArgumentParser(add_help=False)
    building.add_argument("--deployments", default=str(DEPLOYMENTS_PATH), help="the deployment catalogue")
    building.add_argument("--effective-from", help="ISO date the new version starts (UTC midnight; default tomorrow)")
    a = actions.add_parser("import", parents=[common, building], help="append a new version built from genai-prices")
    a.add_argument("--out", help="write the catalogue here instead of over --prices")
    a.add_argument("--dry-run", action="store_true", help="print the version and what changes; write nothing")
    a.set_defaults(func=cmd_import)
    d = actions.add_parser("diff", parents=[common, building],
                           help="what an import would change vs the version in force, or between two versions")
    d.add_argument("--versions", nargs=2, metavar=("OLD", "NEW"), help="compare two stored versions instead")
    d.set_defaults(func=cmd_diff)
    s = actions.add_parser("show", parents=[common], help="one model's prices in every version")
    s.add_argument("model")
    s.set_defaults(func=cmd_show)
