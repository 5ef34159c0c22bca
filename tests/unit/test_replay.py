"""`riposte replay` over the real sample fixtures: report, determinism, filters, event time.

Replay's AWS clients point at the session's moto server (``moto_server`` sets
AWS_ENDPOINT_URL), so the one sample that names an S3 object (an S3 notification)
is looked up there and never anywhere else.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import metrics, report
from pipeline.cli import main
from pipeline.config import RiposteConfig, parse_config
from pipeline.errors import ConfigError
from pipeline.replay import MEMORY_STATE, STATE_MARKER, Progress, ReplayOptions, run_replay
from pipeline.state.sqlite import SqliteStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SAMPLES = FIXTURES / "samples"
DERIVED = FIXTURES / "derived"
GD_PAIRED = DERIVED / "guardduty" / "gd-ec2-paired-finding.json"
INSPECTOR_PAIRED = DERIVED / "inspector2" / "inspector-ec2-paired-finding.json"
PAIRED_INSTANCE = "ec2.instance:i-0abc123def4567890"

pytestmark = pytest.mark.usefixtures("moto_server")


def config(data: dict[str, Any] | None = None) -> RiposteConfig:
    return parse_config({"service": {"region": "us-east-1"}, **(data or {})}, env={})


async def replay_report(inputs: list[Path | str], cfg: RiposteConfig | None = None,
                        **opts: Any) -> dict[str, Any]:
    result = await run_replay(cfg or config(), ReplayOptions(inputs=[str(p) for p in inputs],
                                                             **opts))
    return report.build_report(result)


async def test_samples_report_counts_every_input_and_finds_the_incidents() -> None:
    rep = await replay_report([SAMPLES, DERIVED])
    inputs = rep["inputs"]
    assert inputs["files"] == 32
    # Each unusable input has its reason: the manifests and the Lambda test batches whose
    # records are no events, the SNS sample's non-JSON Message, and the notification of a
    # CloudTrail object that does not exist here.
    assert inputs["errors"] == {"decode:s3_object_missing": 1, "decode:sns_invalid_message": 1,
                                "unrecognized_document": 4}
    assert inputs["events"] + sum(inputs["errors"].values()) >= inputs["files"]
    kinds = rep["events_by_kind"]
    assert set(kinds) == {"cloudtrail", "guardduty", "inspector2", "securityhub", "unknown"}
    assert sum(kinds["guardduty"].values()) == 8
    assert rep["detections_by_rule"] == {"iam_admin_policy_attached": 1,
                                         "root_credential_use": 1,
                                         "sensitive_api_untrusted_network": 1}
    by_id = {i["id"]: i for i in rep["incidents"]}
    assert len(by_id) == 13
    # The paired Inspector finding on i-0abc123def4567890 is closed later in event time
    # (derived/...-closed.json), so the instance's incident ends uncorrelated.
    ec2 = [i for i in by_id.values() if i["resources"] == [PAIRED_INSTANCE]]
    assert len(ec2) == 1 and not ec2[0]["correlated"]
    assert ec2[0]["score"] >= 50 and ec2[0]["reasons"]
    assert not any(i["correlated"] for i in by_id.values())
    assert rep["time_range"]["first"] < rep["time_range"]["last"]
    assert rep["simulated"] is True and rep["actions"] == []


async def test_two_runs_give_byte_identical_reports(tmp_path: Path) -> None:
    first = report.to_json(await replay_report([SAMPLES, DERIVED]))
    second = report.to_json(await replay_report([SAMPLES, DERIVED],
                                                state_path=str(tmp_path / "s.db")))
    third = report.to_json(await replay_report([SAMPLES, DERIVED], state_path=MEMORY_STATE))
    assert first == second == third
    assert report.to_markdown(orjson.loads(first)) == report.to_markdown(orjson.loads(second))


async def test_input_order_within_the_window_does_not_change_the_report(
        tmp_path: Path) -> None:
    """Archives are only roughly ordered: the re-ordering window absorbs it."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    gd = orjson.loads(GD_PAIRED.read_bytes())
    later = _finding_update(gd, "2024-09-04T17:06:00.000Z", count=3)
    # a/: oldest first; b/: newest first (file names sort the other way round).
    (a / "1.json").write_bytes(GD_PAIRED.read_bytes())
    (a / "2.json").write_bytes(orjson.dumps(later))
    (b / "1.json").write_bytes(orjson.dumps(later))
    (b / "2.json").write_bytes(GD_PAIRED.read_bytes())
    (a / "3.json").write_bytes(INSPECTOR_PAIRED.read_bytes())
    (b / "3.json").write_bytes(INSPECTOR_PAIRED.read_bytes())
    rep_a = await replay_report([a])
    rep_b = await replay_report([b])
    assert rep_a["incidents"] == rep_b["incidents"]
    assert rep_a["incidents"][0]["correlated"]
    assert report.to_json(rep_a) == report.to_json(rep_b)


def _finding_update(gd: dict[str, Any], updated: str, count: int) -> dict[str, Any]:
    out: dict[str, Any] = orjson.loads(orjson.dumps(gd))
    out["id"] = f"{out['id']}-{count}"
    out["time"] = updated[:19] + "Z"
    out["detail"]["updatedAt"] = updated
    out["detail"]["service"]["count"] = count
    return out


def _shifted_inspector(day: str) -> bytes:
    """The paired Inspector finding observed on another day of September 2024."""
    text = INSPECTOR_PAIRED.read_text()
    return text.replace("Sep 04", f"Sep {day}").replace("2024-09-04", f"2024-09-{day}").encode()


@pytest.mark.parametrize(("day", "window", "correlated"), [
    ("04", None, True),        # minutes apart, default 7-day window
    ("01", None, True),        # 3 days earlier: inside 7 days
    ("02", 86400.0, False),    # 2 days earlier, 1-day window: outside
    ("04", 86400.0, True),
])
async def test_correlation_window_runs_on_event_time(tmp_path: Path, day: str,
                                                     window: float | None,
                                                     correlated: bool) -> None:
    """2024 findings replayed in 2026: only the distance in event time decides."""
    (tmp_path / "gd.json").write_bytes(GD_PAIRED.read_bytes())
    (tmp_path / "insp.json").write_bytes(_shifted_inspector(day))
    cfg = config({"correlate": {"window_seconds": window}} if window else None)
    rep = await replay_report([tmp_path], cfg)
    ec2 = [i for i in rep["incidents"] if i["resources"] == [PAIRED_INSTANCE]]
    assert any(i["correlated"] for i in ec2) is correlated
    if correlated:
        assert {t.split("/")[0] for i in ec2 for t in i["finding_types"]} >= {
            "Backdoor:EC2", "PACKAGE_VULNERABILITY"}


@pytest.mark.parametrize(("opts", "kept"), [
    ({"kinds": frozenset({"guardduty"})}, {"guardduty"}),
    ({"kinds": frozenset({"cloudtrail", "inspector2"})}, {"cloudtrail", "inspector2"}),
    ({"since": datetime(2024, 9, 4, tzinfo=UTC)}, {"guardduty", "inspector2"}),
    ({"until": datetime(2017, 1, 1, tzinfo=UTC)}, {"cloudtrail"}),
    ({"accounts": frozenset({"123456789012"}), "regions": frozenset({"us-east-1"}),
      "kinds": frozenset({"guardduty"})}, {"guardduty"}),
])
async def test_filters(opts: dict[str, Any], kept: set[str]) -> None:
    everything = await replay_report([SAMPLES, DERIVED])
    rep = await replay_report([SAMPLES, DERIVED], **opts)
    assert set(rep["events_by_kind"]) == kept
    assert rep["inputs"]["events"] + rep["inputs"]["filtered_out"] == \
        everything["inputs"]["events"]
    first, last = rep["time_range"]["first"], rep["time_range"]["last"]
    if "since" in opts:
        assert first >= "2024-09-04"
    if "until" in opts:
        assert last <= "2017-01-01"
    if "accounts" in opts:
        assert all(i["account"] == "123456789012" for i in rep["incidents"])


async def test_filtered_out_events_never_reach_correlation(tmp_path: Path) -> None:
    (tmp_path / "gd.json").write_bytes(GD_PAIRED.read_bytes())
    (tmp_path / "insp.json").write_bytes(INSPECTOR_PAIRED.read_bytes())
    rep = await replay_report([tmp_path], kinds=frozenset({"guardduty"}))
    assert not any(i["correlated"] for i in rep["incidents"])
    assert rep["inputs"]["filtered_out"] == 1


async def test_malformed_inputs_are_counted_and_the_run_goes_on(tmp_path: Path) -> None:
    import gzip

    (tmp_path / "good.json").write_bytes(GD_PAIRED.read_bytes())
    (tmp_path / "truncated.json.gz").write_bytes(gzip.compress(GD_PAIRED.read_bytes())[:-20])
    (tmp_path / "broken.json").write_bytes(b'{"detail-type": "GuardDuty Finding", "so')
    (tmp_path / "other.json").write_bytes(orjson.dumps({"name": "not an event", "n": 1}))
    (tmp_path / "list.json").write_bytes(b"[1, 2]")
    (tmp_path / "forged.json").write_bytes(GD_PAIRED.read_bytes().replace(
        b'"source": "aws.guardduty"', b'"source": "evil.example"'))
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    rep = await replay_report([tmp_path, empty, tmp_path / "missing.json"])
    errors = rep["inputs"]["errors"]
    assert errors["bad_gzip"] == 1
    assert errors["invalid_json"] == 1
    assert errors["unrecognized_document"] == 1
    assert errors["decode:not_an_object"] == 2
    assert errors["empty_input"] == 1
    assert errors["missing_input"] == 1
    assert rep["inputs"]["events"] >= 1 and len(rep["incidents"]) >= 1
    assert set(rep["inputs"]["error_examples"]) == set(errors)
    md = report.to_markdown(rep)
    assert "bad_gzip" in md and "unrecognized_document" in md


async def test_compare_disabling_a_rule() -> None:
    base = await replay_report([SAMPLES, DERIVED])
    other = await replay_report([SAMPLES, DERIVED], config(
        {"detections": {"disabled_rules": ["root_credential_use"]}}))
    diff = report.compare_reports(base, other)
    assert [i["title"] for i in diff["incidents_only_in_a"]] == ["Root credentials used"]
    assert diff["incidents_only_in_b"] == []
    assert report.compare_reports(base, base) == {
        "incidents_only_in_a": [], "incidents_only_in_b": [], "incidents_scored_differently": [],
        "actions_only_in_a": [], "actions_only_in_b": []}


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_quiet_off_a_terminal_and_a_line_on_one() -> None:
    quiet = io.StringIO()
    p = Progress(True, 10, quiet)
    p.update(100, 5, final=True)
    assert quiet.getvalue() == ""
    tty = _Tty()
    p = Progress(True, 10, tty)
    p.update(100, 5)
    p.update(200, 10, final=True)
    text = tty.getvalue()
    assert "ETA" in text and "events" in text and text.endswith("\n")
    off = _Tty()
    Progress(False, 10, off).update(1, 1, final=True)
    assert off.getvalue() == ""


async def test_html_is_one_self_contained_file() -> None:
    rep = await replay_report([SAMPLES, DERIVED])
    page = report.to_html(rep)
    assert page.startswith("<!doctype html>") and page.count("<svg") >= 4
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        if external in ("http://", "https://"):
            # SVG's namespace is an identifier, not a fetch; nothing else may name a URL.
            assert page.replace("http://www.w3.org/2000/svg", "").count(external) == 0
        else:
            assert external not in page


async def test_cli_writes_the_three_reports_and_the_comparison(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "in"
    data.mkdir()
    shutil.copy(GD_PAIRED, data)
    shutil.copy(INSPECTOR_PAIRED, data)
    other = tmp_path / "other.toml"
    other.write_text('[correlate]\nwindow_seconds = 1\n')
    out = tmp_path / "out"
    # The CLI runs its own event loop: run it in a worker thread of this test.
    import asyncio

    code = await asyncio.to_thread(main, ["replay", str(data), "--out", str(out),
                                          "--compare", str(other), "--kind", "guardduty",
                                          "--kind", "inspector2"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"report.json", "report.md", "report.html",
                                               "compare.json"}
    rep = orjson.loads((out / "report.json").read_bytes())
    diff = orjson.loads((out / "compare.json").read_bytes())
    (paired,) = [i for i in rep["incidents"] if i["correlated"]]
    # A one-second window cannot pair findings minutes apart: same incident, lower score.
    (changed,) = diff["incidents_scored_differently"]
    assert changed["id"] == paired["id"] and changed["a"][0] > changed["b"][0]
    printed = capsys.readouterr()
    # Not a terminal: one JSON line per run, no progress bar.
    lines = [orjson.loads(x) for x in printed.out.splitlines()]
    assert lines[0]["replay"]["incidents"] == len(rep["incidents"])
    assert lines[0]["replay"]["events"] == 2
    assert lines[1]["compare"]["incidents_scored_differently"] == 1
    assert "\r" not in printed.err, "no progress bar when stderr is not a terminal"


@pytest.mark.parametrize("send", [False, True])
async def test_sinks_are_off_unless_asked(tmp_path: Path, send: bool) -> None:
    out = tmp_path / "out.jsonl"
    cfg = config({"sinks": [{"type": "jsonl", "name": "out", "path": str(out),
                             "routing": {"kinds": ["incident"]}}]})
    rep = await replay_report([GD_PAIRED, INSPECTOR_PAIRED], cfg, send_to_sinks=send)
    if not send:
        assert not out.exists() or out.read_bytes() == b""
        return
    sent = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {i["id"] for i in sent} == {i["id"] for i in rep["incidents"]}
    assert all(i["item_kind"] == "incident" for i in sent)


async def test_one_bad_record_of_a_log_file_does_not_lose_its_neighbours(
        tmp_path: Path) -> None:
    import gzip

    record = orjson.loads((SAMPLES / "cloudtrail" / "panther-createuser-console.json")
                          .read_bytes())
    bad = dict(record, userIdentity="not an object", eventID="bad")
    records = [dict(record, eventID="one"), bad, dict(record, eventID="two")]
    tree = tmp_path / "AWSLogs" / "123456789012" / "CloudTrail" / "us-east-1" / "2019" / "01"
    tree.mkdir(parents=True)
    (tree / "f.json.gz").write_bytes(gzip.compress(orjson.dumps({"Records": records})))
    counted = metrics.value(metrics.EVENTS, kind="cloudtrail")
    rep = await replay_report([tmp_path])
    assert rep["inputs"]["events"] == 2
    # A log file's events are counted as one batch: the two made, not the one refused.
    assert metrics.value(metrics.EVENTS, kind="cloudtrail") - counted == 2
    assert rep["inputs"]["files"] == 1 and rep["inputs"]["messages"] == 1
    (reason,) = rep["inputs"]["errors"]
    assert reason.startswith("normalize:") and rep["inputs"]["errors"][reason] == 1


async def test_a_state_file_of_a_replay_that_did_not_finish_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.db"
    first = await replay_report([GD_PAIRED, INSPECTOR_PAIRED], state_path=str(state))
    # A finished run's file can be used again (its baselines carry over).
    again = await replay_report([GD_PAIRED, INSPECTOR_PAIRED], state_path=str(state))
    assert first["inputs"]["events"] == again["inputs"]["events"] == 2
    store = await SqliteStore.open(state)
    try:
        marker = await store.get(STATE_MARKER)
        assert marker is not None and marker.value == {"complete": True}
        # What a replay killed mid-way leaves: the marker it wrote when it started.
        await store.put(STATE_MARKER, {"complete": False})
    finally:
        await store.aclose()
    with pytest.raises(ConfigError, match="did not finish"):
        await replay_report([GD_PAIRED], state_path=str(state))
    code = await asyncio.to_thread(main, ["replay", str(GD_PAIRED), "--state", str(state),
                                          "--out", str(tmp_path / "out")])
    assert code == 2 and "did not finish" in capsys.readouterr().err
