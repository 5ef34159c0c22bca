"""The replay report: JSON for machines, Markdown and one self-contained HTML file for people.

The JSON is deterministic: keys sorted, lists in a defined order, no wall-clock
times, durations or paths that depend on the machine, so the same input and
config give a byte-identical report and two reports can be diffed.
"""

from __future__ import annotations

import html
import statistics
from collections import Counter, defaultdict
from typing import Any

from pipeline import serde
from pipeline.actions import registry
from pipeline.models import ActionRecord, ActionStatus, Incident
from pipeline.replay import ReplayResult

REPORT_VERSION = 1


def _iso(dt: Any) -> str | None:
    return None if dt is None else dt.isoformat().replace("+00:00", "Z")


def _incident_summary(inc: Incident) -> dict[str, Any]:
    score = inc.score
    return {
        "id": inc.id,
        "title": inc.title,
        "account": inc.account,
        "region": inc.region,
        "resources": sorted(r.key for r in inc.resources),
        "findings": sorted(f.event_id for f in inc.findings),
        "finding_types": sorted({f.type for f in inc.findings}),
        "score": score.value if score else None,
        "label": (score.label.value if score else inc.severity_label.value),
        "reasons": [f"{r.factor}: {r.detail} (+{r.points:g})" for r in score.reasons]
        if score else [],
        "mitre": sorted(inc.mitre),
        "correlated": inc.correlated,
        "sample": inc.sample,
        "observe_only": inc.observe_only,
        "first_seen": _iso(inc.first_seen),
        "last_seen": _iso(inc.last_seen),
        "revision": inc.revision,
    }


def _action_summary(act: ActionRecord) -> dict[str, Any]:
    return {
        "incident_id": act.incident_id,
        "kind": act.kind,
        "resource": act.resource.key,
        "mode": act.mode.value,
        "status": act.status.value,
        "reason": act.reason,
        "planned_at": _iso(act.planned_at),
        "calls": [f"{c.service}.{c.operation}" for c in act.calls],
    }


def _disruptive(kind: str) -> bool:
    try:
        return registry.get(kind).disruptive
    except Exception:  # an unknown kind in an old ledger entry: count it, say it contains
        return True


def _time_to_contain(result: ReplayResult) -> dict[str, Any]:
    """Simulated: from the earliest finding behind an incident to its first planned action.

    Only containing (disruptive) actions that would have run unattended count: a
    snapshot or a tag contains nothing, and skipped, recorded and held-for-approval
    plans wait on a person, not on the pipeline.
    """
    first: dict[str, float] = {}
    for act in result.actions.values():
        inc = result.incidents.get(act.incident_id)
        if inc is None or act.planned_at is None or not _disruptive(act.kind) or act.status in (
                ActionStatus.SKIPPED, ActionStatus.RECORDED, ActionStatus.AWAITING_APPROVAL,
                ActionStatus.FAILED):
            continue
        delay = max(0.0, (act.planned_at - inc.first_seen).total_seconds())
        first[inc.id] = min(delay, first.get(inc.id, delay))
    delays = sorted(first.values())
    if not delays:
        return {"count": 0}
    return {
        "count": len(delays),
        "p50_seconds": round(statistics.median(delays), 3),
        "p90_seconds": round(delays[min(len(delays) - 1, int(len(delays) * 0.9))], 3),
        "max_seconds": round(delays[-1], 3),
    }


def build_report(result: ReplayResult) -> dict[str, Any]:
    """The report as plain data; ``to_json`` makes it bytes."""
    by_kind: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, type_), n in result.events_by_type.items():
        by_kind[kind][type_] = n
    by_hour: dict[str, dict[str, int]] = defaultdict(dict)
    for (hour, kind), n in result.events_by_hour.items():
        by_hour[hour][kind] = n
    incidents = sorted((_incident_summary(i) for i in result.incidents.values()),
                       key=lambda i: (-(i["score"] or 0), i["id"]))
    actions = sorted((_action_summary(a) for a in result.actions.values()),
                     key=lambda a: (a["planned_at"] or "", a["incident_id"], a["kind"],
                                    a["resource"]))
    held = [a for a in actions if a["status"] == ActionStatus.AWAITING_APPROVAL.value]
    return {
        "report_version": REPORT_VERSION,
        "simulated": True,
        "inputs": {
            "files": result.inputs,
            "messages": result.messages,
            "events": result.events,
            "filtered_out": result.filtered_out,
            "errors": dict(sorted(result.errors.items())),
            "error_examples": dict(sorted(result.error_examples.items())),
        },
        "time_range": {"first": _iso(result.first_time), "last": _iso(result.last_time)},
        "events_by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "events_by_hour": {h: dict(sorted(v.items())) for h, v in sorted(by_hour.items())},
        "detections_by_rule": dict(sorted(result.detections_by_rule.items())),
        "incidents_by_label": dict(sorted(Counter(i["label"] for i in incidents).items())),
        "incidents": incidents,
        "actions": actions,
        "actions_by_status": dict(sorted(Counter(a["status"] for a in actions).items())),
        "held_for_approval": len(held),
        "held_for_approval_by_reason": dict(sorted(Counter(a["reason"] for a in held).items())),
        "time_to_contain": _time_to_contain(result),
    }


def to_json(report: dict[str, Any]) -> bytes:
    return serde.dumps(report, sort_keys=True) + b"\n"


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What each configuration produces that the other does not."""

    def incident_keys(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {i["id"]: i for i in r["incidents"]}

    def action_keys(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {f"{x['incident_id']}|{x['kind']}|{x['resource']}|{x['status']}": x
                for x in r["actions"]}

    ia, ib = incident_keys(a), incident_keys(b)
    aa, ab = action_keys(a), action_keys(b)
    changed = sorted(k for k in ia.keys() & ib.keys()
                     if (ia[k]["score"], ia[k]["label"]) != (ib[k]["score"], ib[k]["label"]))
    return {
        "incidents_only_in_a": [ia[k] for k in sorted(ia.keys() - ib.keys())],
        "incidents_only_in_b": [ib[k] for k in sorted(ib.keys() - ia.keys())],
        "incidents_scored_differently": [
            {"id": k, "a": [ia[k]["score"], ia[k]["label"]], "b": [ib[k]["score"], ib[k]["label"]]}
            for k in changed],
        "actions_only_in_a": [aa[k] for k in sorted(aa.keys() - ab.keys())],
        "actions_only_in_b": [ab[k] for k in sorted(ab.keys() - aa.keys())],
    }


# --- human formats ----------------------------------------------------------------------------
def to_markdown(report: dict[str, Any]) -> str:
    inp = report["inputs"]
    out = ["# Riposte replay report", "",
           f"- inputs: {inp['files']} files, {inp['messages']} messages, "
           f"{inp['events']} events ({inp['filtered_out']} filtered out)",
           f"- event time: {report['time_range']['first']} → {report['time_range']['last']}",
           f"- unreadable or rejected: {sum(inp['errors'].values())}", ""]
    if inp["errors"]:
        out += ["| reason | count | example |", "|---|---:|---|"]
        out += [f"| {r} | {n} | {inp['error_examples'].get(r, '')[:80]} |"
                for r, n in inp["errors"].items()]
        out.append("")
    out += ["## Events by kind and type", "", "| kind | type | events |", "|---|---|---:|"]
    for kind, types in report["events_by_kind"].items():
        out += [f"| {kind} | {t} | {n} |" for t, n in types.items()]
    out += ["", "## Detections per rule", "", "| rule | fired |", "|---|---:|"]
    out += [f"| {r} | {n} |" for r, n in report["detections_by_rule"].items()]
    out += ["", "## Incidents", "", "| score | label | incident | title | MITRE |",
            "|---:|---|---|---|---|"]
    out += [f"| {i['score']} | {i['label']} | {i['id']} | {i['title'][:60]} | "
            f"{', '.join(i['mitre'])} |" for i in report["incidents"]]
    out += ["", "## Actions that would have run", "",
            "| planned at (event time) | action | resource | status | reason |",
            "|---|---|---|---|---|"]
    out += [f"| {a['planned_at']} | {a['kind']} | {a['resource']} | {a['status']} | "
            f"{a['reason']} |" for a in report["actions"]]
    ttc = report["time_to_contain"]
    held = report["held_for_approval"]
    if ttc["count"]:
        ttc_text = (f"p50 {ttc['p50_seconds']} s, p90 {ttc['p90_seconds']} s, "
                    f"max {ttc['max_seconds']} s over {ttc['count']} actions")
    else:
        ttc_text = "no action planned"
    out += ["", f"Held back for approval by the blast-radius limit: {held}", "",
            f"Simulated time to contain: {ttc_text}", ""]
    return "\n".join(out)


def _bar_chart(title: str, data: dict[str, float], width: int = 640) -> str:
    if not data:
        return f"<h3>{html.escape(title)}</h3><p>none</p>"
    bar_h, gap, label_w = 18, 6, 260
    top = max(data.values()) or 1
    height = len(data) * (bar_h + gap)
    rows = []
    for i, (label, value) in enumerate(data.items()):
        y = i * (bar_h + gap)
        w = max(1.0, (width - label_w - 60) * value / top)
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{html.escape(label[:40])}'
            f'</text><rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#3b6ea5"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{value:g}</text>')
    return (f"<h3>{html.escape(title)}</h3><svg xmlns='http://www.w3.org/2000/svg' "
            f"width='{width}' height='{height}' font-size='12' font-family='sans-serif'>"
            + "".join(rows) + "</svg>")


def to_html(report: dict[str, Any]) -> str:
    hours: dict[str, float] = {h: float(sum(v.values()))
                               for h, v in report["events_by_hour"].items()}
    kinds: dict[str, float] = {k: float(sum(v.values()))
                               for k, v in report["events_by_kind"].items()}
    charts = "".join([
        _bar_chart("Events by kind", kinds),
        _bar_chart("Events over time (per hour)", dict(list(hours.items())[-48:])),
        _bar_chart("Detections per rule", {k: float(v) for k, v in
                                           report["detections_by_rule"].items()}),
        _bar_chart("Incidents by label", {k: float(v) for k, v in
                                          report["incidents_by_label"].items()}),
        _bar_chart("Actions by status", {k: float(v) for k, v in
                                         report["actions_by_status"].items()}),
    ])
    md = html.escape(to_markdown(report))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Riposte replay</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "pre{white-space:pre-wrap;background:#f6f6f6;padding:1em}</style></head><body>"
            "<h1>Riposte replay report</h1>" + charts + "<h2>Details</h2><pre>" + md
            + "</pre></body></html>\n")
