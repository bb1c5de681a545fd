"""`ledgergate prices import | diff | show` on the real installed genai-prices data (its bundled snapshot,
offline), against catalogues made in tmp_path."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import data

from ledgergate.shared.catalogue import DATA_DIR, load_prices
from ledgergate.shared.errors import CatalogueError
from ledgergate.shared.units import day_start_ms
from ledgergate.tools import price_build, price_source, prices
from ledgergate.tools.cli import main

NOW_MS = day_start_ms(date(2026, 12, 2)) + 36_000_000  # 2026-12-02T10:00Z
TOMORROW = date(2026, 12, 3)
FIRST = """# hand-written
tiers: [premium, standard, economy]
versions:
  - version: "2026-11-01"
    effective_from_ms: 1793491200000
    models:
      gpt-4o:       {tier: premium, input: 2400000, cached_input: 1250000, output: 10000000}
      claude-haiku: {tier: standard, input: 800000, cached_input: 80000, output: 4000000}
      legacy:       {tier: economy, input: 1, output: 2}
    regions:
      eu-west: 1100000
"""
DEPLOYED = """deployments:
  gpt-4o: [{endpoint: "https://x/v1/gpt-4o", region: us-east}]
  claude-haiku: [{endpoint: "https://x/v1/claude-haiku", region: us-east}]
  local-llama: [{endpoint: "https://x/v1/local", region: us-east}]
"""
SOURCES = """models:
  gpt-4o:       {provider: openai, model: gpt-4o}
  claude-haiku: {provider: anthropic, model: claude-3-5-haiku-latest}
  local-llama:  {provider: groq, model: llama-3.1-8b-instant, tier: economy}
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("prices", FIRST), ("deployments", DEPLOYED), ("sources", SOURCES)):
        out[name] = tmp_path / f"{name}.yaml"
        out[name].write_text(text)
    return out


def _plan(files: dict[str, Path], effective: date = TOMORROW) -> price_build.ImportPlan:
    return prices.plan_import(files["prices"], files["deployments"], files["sources"], effective, NOW_MS)


def _package(provider: str, model: str, key: str) -> int:
    """The package's own figure, USD per million as micro-USD per million (exact for these)."""
    info = next(m for p in data.providers if p.id == provider for m in p.models if m.id == model)
    value = getattr(info.get_prices(datetime(2026, 12, 3, tzinfo=UTC)), key)
    return int(Decimal(value) * 1_000_000)


def test_import_builds_from_the_bundled_data(files: dict[str, Path]) -> None:
    plan = _plan(files)
    v = plan.version
    assert (v.version, v.effective_from_ms, v.source) == ("2026-12-03", day_start_ms(TOMORROW),
                                                          f"genai-prices=={price_source.package_version()}")
    gpt = v.models["gpt-4o"]
    assert (gpt.input_micro_usd_per_m, gpt.cached_input_micro_usd_per_m, gpt.output_micro_usd_per_m) == (
        _package("openai", "gpt-4o", "input_mtok"), _package("openai", "gpt-4o", "cache_read_mtok"),
        _package("openai", "gpt-4o", "output_mtok"))
    assert gpt.cache_write_micro_usd_per_m == gpt.input_micro_usd_per_m  # OpenAI publishes no cache-write price
    assert gpt.reasoning_micro_usd_per_m == gpt.output_micro_usd_per_m
    assert (gpt.tier, gpt.source) == ("premium", "openai/gpt-4o")
    haiku = v.models["claude-haiku"]
    assert haiku.cache_write_micro_usd_per_m == _package("anthropic", "claude-3-5-haiku-latest", "cache_write_mtok")
    assert haiku.tier == "standard"  # tiers carry over
    assert v.models["local-llama"].tier == "economy"  # new to the catalogue: the mapping's tier
    assert v.models["legacy"] == load_prices(files["prices"]).versions[0].models["legacy"]  # not deployed: kept
    assert "kept from 2026-11-01: not deployed" in plan.notes["legacy"]
    assert v.region_ppm == {"eu-west": 1_100_000}


def test_a_model_the_source_lacks_keeps_its_previous_prices(files: dict[str, Path]) -> None:
    files["sources"].write_text(SOURCES.replace("claude-3-5-haiku-latest", "claude-0-imaginary"))
    plan = _plan(files)
    assert plan.version.models["claude-haiku"] == load_prices(files["prices"]).versions[0].models["claude-haiku"]
    assert "has no anthropic/claude-0-imaginary" in plan.notes["claude-haiku"]


def test_a_deployed_model_that_nothing_prices_stops_the_import(files: dict[str, Path]) -> None:
    files["sources"].write_text(SOURCES.replace("llama-3.1-8b-instant", "no-such-model"))
    with pytest.raises(CatalogueError, match="local-llama is deployed but has no price"):
        _plan(files)
    files["sources"].write_text(SOURCES.replace(", tier: economy", ""))
    with pytest.raises(CatalogueError, match="give it a tier"):
        _plan(files)


def test_a_version_must_start_in_the_future_and_be_new(files: dict[str, Path]) -> None:
    with pytest.raises(CatalogueError, match="has begun"):
        _plan(files, date(2026, 12, 2))
    files["prices"].write_text(prices.appended(files["prices"], _plan(files)))
    with pytest.raises(CatalogueError, match="exists already"):
        _plan(files)


def test_rounding_is_up_to_the_micro_dollar() -> None:
    assert price_build.to_micro_per_m(Decimal("2.5")) == (2_500_000, False)
    assert price_build.to_micro_per_m(Decimal("0.0375")) == (37_500, False)
    assert price_build.to_micro_per_m(Decimal("0.00000001")) == (1, True)


def test_append_keeps_every_old_byte_and_reads_back(files: dict[str, Path]) -> None:
    plan = _plan(files)
    text = prices.appended(files["prices"], plan)
    assert text.startswith(FIRST)
    files["prices"].write_text(text)
    after = load_prices(files["prices"])
    assert [v.version for v in after.versions] == ["2026-11-01", "2026-12-03"]
    assert price_build.same_version(after.versions[1], plan.version)
    assert after.at(NOW_MS).version == "2026-11-01"  # not in force before its date


def test_append_refuses_a_file_whose_last_key_is_not_versions(files: dict[str, Path]) -> None:
    files["prices"].write_text(FIRST + "extra: 1\n")
    with pytest.raises(CatalogueError, match="last key"):
        prices.appended(files["prices"], _plan(files))


def test_diff_names_every_changed_figure(files: dict[str, Path]) -> None:
    old = load_prices(files["prices"]).versions[0]
    changes = {(c.model, c.field): (c.old, c.new) for c in price_build.diff(old, _plan(files).version)}
    assert changes[("gpt-4o", "input")] == ("2400000", "2500000")
    assert changes[("claude-haiku", "cache_write")] == ("800000", "1000000")
    assert changes[("local-llama", "model")] == ("-", "priced")
    assert ("legacy", "input") not in changes and ("claude-haiku", "input") not in changes
    assert price_build.diff(old, old) == []


def _rows(out: str) -> set[tuple[str, ...]]:
    return {tuple(line.split()) for line in out.splitlines()}


def test_cli_import_diff_and_show(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--prices", str(files["prices"]), "--sources", str(files["sources"])]
    building = [*common, "--deployments", str(files["deployments"]), "--effective-from", "2099-01-01"]
    assert main(["prices", "diff", *building]) == 0
    assert ("gpt-4o", "input", "2.40", "2.50") in _rows(capsys.readouterr().out)
    assert main(["prices", "import", *building, "--dry-run"]) == 0
    assert '  - version: "2099-01-01"' in capsys.readouterr().out and files["prices"].read_text() == FIRST
    assert main(["prices", "import", *building]) == 0
    capsys.readouterr()
    assert main(["prices", "show", "gpt-4o", *common]) == 0
    shown = capsys.readouterr().out
    assert "gpt-4o: source openai/gpt-4o" in shown
    assert "2026-11-01" in shown and "2099-01-01" in shown and "by hand" in shown
    assert main(["prices", "diff", *common, "--versions", "2026-11-01", "2099-01-01"]) == 0
    assert ("claude-haiku", "cache_write", "0.80", "1.00") in _rows(capsys.readouterr().out)
    assert main(["prices", "show", "nothing", *common]) == 2


def test_the_committed_import_is_what_the_pinned_package_gives() -> None:
    """shared/data/prices.yaml's imported version equals a fresh build from the installed genai-prices: a
    bump of the pin that changes figures must come with a new version, never an edited one."""
    catalogue = load_prices(DATA_DIR / "prices.yaml")
    imported = next(v for v in catalogue.versions if v.source and v.source.startswith("genai-prices"))
    before = catalogue.versions[catalogue.versions.index(imported) - 1]
    sources = price_source.load_sources()
    found, missing = price_source.read(sources.refs, datetime.fromtimestamp(imported.effective_from_ms / 1000, UTC))
    deployed = list(imported.models)
    rebuilt = price_build.build_version(before, deployed, found, missing, sources, imported.version,
                                        imported.effective_from_ms, catalogue.tiers).version
    if imported.source != sources.label:
        pytest.skip(f"the catalogue was imported from {imported.source}, {sources.label} is installed")
    assert price_build.same_version(rebuilt, imported)
