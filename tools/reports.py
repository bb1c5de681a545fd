"""Command glue and readable output for the operator tools `ledgergate audit replay` and
`ledgergate reconcile`: settings in, a report dict out (written as JSON with --json), a table printed,
and the exit code (1 when the report shows a problem, so CI and cron jobs can alert on it)."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any

from ledgergate import topics
from ledgergate.shared.settings import KafkaSettings
from ledgergate.shared.units import iso_ms, usd
from ledgergate.tools.tables import table

SHOWN_DIFFERENCES = 50


def write_json(path: str | Path, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


# --- audit replay ------------------------------------------------------------------------------


def run_replay(args: argparse.Namespace) -> int:
    from ledgergate.tools.replay import AuditReplay, ReplayOptions

    settings = KafkaSettings()
    report = AuditReplay(ReplayOptions(
        connection=settings.kafka_connection, audit_topic=args.topic or settings.topic(topics.AUDIT),
        ledger_topic=args.ledger_topic or settings.topic(topics.LEDGER), from_ms=args.from_ms, tenant=args.tenant,
        pg_dsn=args.pg_dsn, progress_every=args.progress_every)).run()
    print(render_replay(report))
    if args.json:
        write_json(args.json, report)
    return 0 if report["ok"] else 1


def _when(ms: int | None) -> str:
    return "from the beginning" if ms is None else f"from {iso_ms(ms)}"


def _error(problem: dict[str, Any]) -> str:
    """verify_chain's messages start with the offset, which the report already names."""
    error: str = problem["error"]
    return error.removeprefix(f"offset {problem['offset']}: ")


def _status(part: dict[str, Any]) -> str:
    return "ok" if part["problem"] is None else f"BROKEN at offset {part['problem']['offset']}"


def render_replay(r: dict[str, Any]) -> str:
    out = [f"audit replay of {r['audit_topic']} against {r['ledger_topic']}, {_when(r['from_ms'])}, "
           f"{'tenant ' + r['tenant'] if r['tenant'] else 'all tenants'}: {r['records_read']:,} records "
           f"in {r['seconds']} s", ""]
    rows = [(p["partition"], p["records"], p["ledger_records"], p["decision_records"],
             "-" if p["first_offset"] is None else f"{p['first_offset']}..{p['last_offset']}",
             "-" if p["first_sequence"] is None else f"{p['first_sequence']}..{p['last_sequence']}",
             "genesis" if p["anchor"] == "genesis" else ("trusted" if p["anchor"] else "-"), _status(p))
            for p in r["partitions"]]
    out.append(table(["partition", "records", "ledger", "decision", "offsets", "sequences", "anchor", "chain"], rows))
    out += [f"  partition {p['partition']}: {p['anchor']}" for p in r["partitions"]
            if p["anchor"] not in ("", "genesis")]
    if r["first_problem"]:
        fp = r["first_problem"]
        out += ["", f"FIRST PROBLEM: partition {fp['partition']}, offset {fp['offset']}: {_error(fp)}"]
        out += [f"  also partition {p['partition']}, offset {p['problem']['offset']}: {_error(p['problem'])}"
                for p in r["partitions"] if p["problem"] and p["problem"] != fp]
    if r["coverage_problems"]:
        out += ["", f"LEDGER COVERAGE: {r['coverage_problems']} problem(s)"]
        out += [f"  {c['error']}" for c in r["coverage"][:20]]
    if r["unaudited_ledger_tail"]:
        out += ["", "note: recent ledger entries after the last audited one (router behind), not compared: "
                + ", ".join(f"partition {p}: {n}" for p, n in r["unaudited_ledger_tail"].items())]
    out += ["", "spend rebuilt from the audit log (ReservationSettled), per tenant, model and UTC day:"]
    spend = r["spend"]
    out.append(table(["tenant", "model", "day", "settlements", "usd"],
                     [(s["tenant_id"], s["model"], s["day"], s["settlements"], usd(s["actual_micro_usd"]))
                      for s in spend]) if spend else "  (no settlements in range)")
    for name in ("ledger", "postgres"):
        rec = r["reconciliation"][name]
        label = "ledger fold (budget.ledger)" if name == "ledger" else "PostgreSQL usage table"
        if not rec["checked"]:
            out.append(f"vs {label}: not checked ({rec['reason']})")
        elif not rec["differences"]:
            out.append(f"vs {label}: totals match ({len(spend)} tenant/model/day totals)")
        else:
            out += [f"vs {label}: {len(rec['differences'])} DIFFERENCE(S)", table(
                ["tenant", "model", "day", "audit n", "audit usd", f"{name} n", f"{name} usd"],
                [(d["tenant_id"], d["model"], d["day"], d["audit_settlements"], usd(d["audit_micro_usd"]),
                  d[f"{name}_settlements"], usd(d[f"{name}_micro_usd"]))
                 for d in rec["differences"][:SHOWN_DIFFERENCES]])]
    verdict = "OK" if r["ok"] else " and ".join(
        x for x, bad in (("CHAIN BROKEN", not r["chain_ok"]), ("TOTALS DIFFER", not r["totals_ok"])) if bad)
    out += ["", f"result: {verdict}"]
    return "\n".join(out)


# --- invoice reconciliation ----------------------------------------------------------------------


def run_reconcile(args: argparse.Namespace) -> int:
    from ledgergate.tools import metering
    from ledgergate.tools.reconcile import InvoiceError, compare, parse_invoice

    invoice = parse_invoice(Path(args.invoice))
    if not invoice:
        raise InvoiceError(f"{args.invoice} has a header but no rows")
    days = sorted({d for d, _ in invoice})
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    source, notes = None, []
    if args.pg_dsn:
        source, why = metering.from_postgres(args.pg_dsn, first, last)
        if source is None:
            notes.append(f"PostgreSQL not used ({why}); folded usage.metered from Kafka instead")
    if source is None:
        settings = KafkaSettings()
        source = metering.from_kafka(settings.kafka_connection, args.topic or settings.topic(topics.METERED),
                                     first, last,
                                     args.progress_every)
    # An invoice is one provider's: usage of models it never lists belongs to another provider's bill.
    models = {m for _, m in invoice}
    skipped: dict[str, int] = {}
    for m in source.rows:
        if m.model not in models:
            skipped[m.model] = skipped.get(m.model, 0) + m.requests
    if skipped:
        notes.append("not compared (models absent from this invoice): "
                     + ", ".join(f"{m} ({n} requests)" for m, n in sorted(skipped.items())))
    drifts = compare(invoice, [m for m in source.rows if m.model in models], args.threshold_pct)
    report = {"invoice": str(args.invoice), "source": source.name, "notes": source.notes + notes,
              "threshold_pct": str(args.threshold_pct), "first_day": days[0], "last_day": days[-1],
              "rows": [d.as_dict() for d in drifts], "flagged": sum(d.flagged for d in drifts)}
    report["ok"] = report["flagged"] == 0
    print(render_reconcile(report))
    if args.json:
        write_json(args.json, report)
    return 0 if report["ok"] else 1


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}%"


def render_reconcile(r: dict[str, Any]) -> str:
    out = [f"invoice {r['invoice']} ({r['first_day']}..{r['last_day']}) against {r['source']}, "
           f"threshold {r['threshold_pct']}%"]
    out += [f"  note: {n}" for n in r["notes"]]
    out.append("")
    rows = []
    for d in r["rows"]:
        metered = d["measured"]["cost_micro_usd"] + d["estimated"]["cost_micro_usd"]
        flag = "" if not d["flagged"] else ("drift (within estimates)" if d["within_estimated"] else "DRIFT")
        rows.append((d["day"], d["model"], d["measured_requests"], d["estimated_requests"],
                     *(_pct(d["drift_pct"][m]) for m in ("input_tokens", "cached_input_tokens", "output_tokens",
                                                         "reasoning_tokens", "cost_micro_usd")),
                     usd(d["invoice"]["cost_micro_usd"]), usd(metered), flag))
    out.append(table(["day", "model", "measured", "estimated", "input", "cached", "output", "reasoning", "cost",
                      "invoice usd", "metered usd", "flag"], rows))
    flagged = [d for d in r["rows"] if d["flagged"]]
    if flagged:
        out += ["", "flagged (invoice vs metered = measured + estimated):"]
        detail = []
        for d in flagged:
            for m in d["flagged_metrics"]:
                inv, mea, est = d["invoice"][m], d["measured"][m], d["estimated"][m]
                fmt = usd if m == "cost_micro_usd" else str
                label = "cost_usd" if m == "cost_micro_usd" else m
                detail.append((d["day"], d["model"], label, fmt(inv), fmt(mea), fmt(est), fmt(mea + est - inv),
                               _pct(d["drift_pct"][m])))
        out.append(table(["day", "model", "metric", "invoice", "measured", "estimated", "difference", "drift"], detail))
    out += ["", f"result: {'OK' if r['ok'] else str(r['flagged']) + ' day/model row(s) drift above the threshold'}"]
    return "\n".join(out)

