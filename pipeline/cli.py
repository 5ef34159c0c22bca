"""The ``riposte`` command line.

    riposte run [-c FILE]            consume from the configured sources until SIGTERM/SIGINT
    riposte demo [--enforce]         the whole pipeline on a local AWS stand-in and sample events
    riposte check-config FILE [--resolve-secrets]   validate a config, print it with secrets
                                     masked; optionally resolve every secret reference
    riposte replay INPUT... [--compare OTHER.toml]   backtest archived events, change nothing
    riposte actions list|pause|resume
    riposte approve PLAN_ID | reject PLAN_ID
    riposte rollback ACTION_ID | --incident ID
    riposte init-state [-c FILE]     create the state store (DynamoDB table + TTL, or SQLite)
    riposte dead-letters list [--source kinesis|sink] [--stream NAME] [--limit N] [--json]
    riposte dead-letters redrive --stream NAME [--dry-run]   put Kinesis dead letters back
    riposte dead-letters redrive --sink NAME [--dry-run]     send a sink its refused items again

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline import __version__
from pipeline.clock import utc_from_epoch
from pipeline.config import RiposteConfig, load_config, masked_dump
from pipeline.errors import ConfigError, RiposteError

log = logging.getLogger("riposte")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _add_config_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("-c", "--config", metavar="FILE", required=required,
                   help="TOML configuration file (RIPOSTE__SECTION__KEY variables override it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="riposte",
        description="Security-response pipeline for AWS: consumes GuardDuty, Inspector, "
                    "CloudTrail and Security Hub events from SQS and Kinesis, correlates and "
                    "scores them, contains threats (dry-run by default) and fans out to your "
                    "tools.")
    parser.add_argument("--version", action="version", version=f"riposte {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume from the configured sources until SIGTERM/SIGINT")
    _add_config_arg(run)

    demo = sub.add_parser(
        "demo", help="run the whole pipeline on a local AWS stand-in with bundled sample events")
    demo.add_argument("--enforce", action="store_true",
                      help="apply containment to the local stand-in, verify, then roll back")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument("--verbose", action="store_true", help="show the pipeline's own logs")

    check = sub.add_parser("check-config",
                           help="validate a config file and print it with secrets masked")
    check.add_argument("config", metavar="FILE")
    check.add_argument("--resolve-secrets", action="store_true",
                       help="also resolve every env: and secretsmanager: secret reference as "
                            "`run` does, and report each one that cannot be resolved "
                            "(values are never printed)")

    replay = sub.add_parser(
        "replay", help="run archived events through detection and simulated response, "
                       "on event time, and write a report (never changes anything)")
    replay.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="files, directories (JSON, JSON lines, .gz, CloudTrail log files, "
                             "SQS dumps) or s3://bucket/prefix")
    _add_config_arg(replay)
    replay.add_argument("--from", dest="since", metavar="TIME",
                        help="only events at or after this ISO 8601 time")
    replay.add_argument("--to", dest="until", metavar="TIME",
                        help="only events at or before this ISO 8601 time")
    replay.add_argument("--account", action="append", default=[], help="only this account")
    replay.add_argument("--region", action="append", default=[], help="only this region")
    replay.add_argument("--kind", action="append", default=[],
                        choices=["guardduty", "inspector2", "cloudtrail", "securityhub",
                                 "unknown"], help="only this event kind")
    replay.add_argument("--out", metavar="DIR", default="replay-report",
                        help="where report.json, report.md and report.html go "
                             "(default: replay-report)")
    replay.add_argument("--compare", metavar="OTHER.toml",
                        help="also run this config on the same input and report differences")
    replay.add_argument("--sinks", action="store_true",
                        help="send to the configured sinks too (off by default)")
    replay.add_argument("--reorder-window", type=float, default=300.0, metavar="SECONDS",
                        help="how far out of event-time order the input may be (default 300)")
    replay.add_argument("--state", metavar="FILE",
                        help="SQLite state file (default: a fresh temporary one; "
                             "':memory:' keeps state in memory, faster); a file whose "
                             "last replay did not finish is refused")

    actions = sub.add_parser("actions", help="containment actions: list, pause, resume")
    actions.add_argument("verb", choices=["list", "pause", "resume"])
    _add_config_arg(actions)
    actions.add_argument("--status", help="only list actions with this status")

    for verb, what in (("approve", "apply a stored plan"), ("reject", "reject a stored plan")):
        p = sub.add_parser(verb, help=what)
        p.add_argument("plan_id", metavar="PLAN_ID")
        _add_config_arg(p)

    rollback = sub.add_parser("rollback", help="restore the before-state of applied actions")
    rollback.add_argument("action_id", metavar="ACTION_ID", nargs="?")
    rollback.add_argument("--incident", metavar="ID", help="roll back every action of an incident")
    _add_config_arg(rollback)

    init = sub.add_parser("init-state",
                          help="create the configured state store (DynamoDB table with TTL "
                               "enabled, or the SQLite file)")
    _add_config_arg(init)

    dead = sub.add_parser("dead-letters",
                          help="list dead letters in the state store, or send them again "
                               "(Kinesis records to their stream, refused items to their sink)")
    dead_verbs = dead.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = dead_verbs.add_parser(
        "list", help="key, reason, time and size of each dead letter (no payload unless "
                     "--show-payload)")
    _add_config_arg(listing)
    listing.add_argument("--source", choices=["kinesis", "sink"], default="kinesis",
                         help="Kinesis records (default) or items a sink refused")
    listing.add_argument("--stream", metavar="NAME", help="only this Kinesis stream")
    listing.add_argument("--limit", type=_positive_int, metavar="N",
                         help="at most N dead letters, in key order")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.add_argument("--show-payload", action="store_true",
                         help="include each record's payload (it may hold sensitive data)")
    redrive = dead_verbs.add_parser(
        "redrive", help="put a stream's dead letters back on it with PutRecords, or send a "
                        "sink the items it refused; each dead letter is deleted only once "
                        "its record or item was accepted")
    _add_config_arg(redrive)
    target = redrive.add_mutually_exclusive_group(required=True)
    target.add_argument("--stream", metavar="NAME",
                        help="the Kinesis stream whose dead letters go back on it")
    target.add_argument("--sink", metavar="NAME",
                        help="the configured sink (by name) to send its refused items to "
                             "again, once the cause is fixed")
    redrive.add_argument("--dry-run", action="store_true",
                         help="only say what would be put back or sent; change nothing")
    redrive.add_argument("--limit", type=_positive_int, metavar="N",
                         help="at most N dead letters, the first in key order")
    redrive.add_argument("--json", action="store_true", help="print the outcome as JSON")
    return parser


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return number


def _load(path: str | None) -> RiposteConfig:
    return load_config(path)


async def run_service(config: RiposteConfig) -> int:
    from pipeline.assemble import build_pipeline, open_context
    from pipeline.ops_server import OpsServer
    from pipeline.secrets import resolve_secrets
    from pipeline.worker import Runner

    if not config.sources:
        raise ConfigError("no sources configured: add a [[sources]] table (type sqs or kinesis)")
    ctx = await open_context(config)
    config = await resolve_secrets(config, ctx.aws)
    ctx.config = config
    pipeline = await build_pipeline(config, ctx)
    runner = Runner(pipeline.sources, pipeline.chain, concurrency=config.service.concurrency,
                    shutdown_deadline=config.service.shutdown_deadline,
                    on_close=[pipeline.aclose], gc_policy=config.service.gc_policy())
    ops: OpsServer | None = None
    if config.metrics.enabled:
        ops = OpsServer(config.metrics.host, config.metrics.port, lambda: runner.ready)
        await ops.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop)
    log.info("riposte running", extra={
        "sources": [s.name for s in pipeline.sources],
        "sinks": [s.name for s in config.sinks],
        "containment_mode": config.containment.mode,
        "metrics_port": ops.bound_port if ops else None})
    escalation: asyncio.Task[None] | None = None
    if config.containment.sla_seconds:
        escalation = asyncio.create_task(
            _escalate_overdue(ctx, pipeline.fanout, config.containment.sla_seconds))
    try:
        stats = await runner.run()
    finally:
        if escalation is not None:
            escalation.cancel()
        if ops is not None:
            await ops.aclose()
    log.info("riposte stopped", extra={"received": stats.received, **dict(stats.outcomes)})
    if stats.failed_sources:
        log.error("stopped because a source failed", extra={"sources": stats.failed_sources})
        return EXIT_FAILURE
    return EXIT_OK


async def _escalate_overdue(ctx: Any, fanout: Any, sla: float) -> None:
    """Every so often, send incidents not contained within the SLA to the alert sinks."""
    from pipeline.actions import ops

    interval = max(5.0, min(60.0, sla / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            for record in await ops.escalate_overdue(ctx):
                await fanout.process(record)
        except Exception:  # escalation must never take the service down
            log.warning("SLA escalation pass failed; will try again", exc_info=True)


def _check_config(path: str, *, resolve_secrets: bool = False) -> int:
    config = _load(path)
    resolved = ""
    if resolve_secrets:
        check = asyncio.run(_check_secrets(config))
        if not check.ok:
            # Paths and reference names only: a value is never printed, resolved or not.
            for problem in check.problems:
                print(f"riposte: {path}: {problem}", file=sys.stderr)
            print(f"riposte: {path}: {len(check.problems)} secret reference(s) cannot be "
                  f"resolved ({check.resolved} resolved)", file=sys.stderr)
            return EXIT_USAGE
        resolved = f"; {check.resolved} secret reference(s) resolved"
    _print_json(masked_dump(config))
    print(f"ok: {path} is valid{resolved}", file=sys.stderr)
    return EXIT_OK


async def _check_secrets(config: RiposteConfig) -> Any:
    """Resolve every reference as `run` does; no state store is opened for a check."""
    from pipeline.aws import AwsClients
    from pipeline.secrets import check_secrets

    aws = AwsClients(config.service.region)
    try:
        return await check_secrets(config, aws)
    finally:
        await aws.aclose()


async def _ops(args: argparse.Namespace) -> int:
    from pipeline.actions import ops
    from pipeline.assemble import open_context
    from pipeline.secrets import resolve_secrets

    config = _load(args.config)
    ctx = await open_context(config)
    try:
        # Approving or rolling back may assume member-account roles: their external ids
        # can be secret references, resolved exactly as `riposte run` resolves them.
        ctx.config = await resolve_secrets(config, ctx.aws)
        result: Any
        if args.command == "actions":
            if args.verb == "list":
                result = await ops.list_actions(ctx, status=args.status)
            elif args.verb == "pause":
                result = await ops.pause(ctx)
            else:
                result = await ops.resume(ctx)
        elif args.command == "approve":
            result = await ops.approve(ctx, args.plan_id)
        elif args.command == "reject":
            result = await ops.reject(ctx, args.plan_id)
        else:
            if not args.action_id and not args.incident:
                raise ConfigError("rollback needs an ACTION_ID or --incident ID")
            result = await ops.rollback(ctx, action_id=args.action_id,
                                        incident_id=args.incident)
        _print_json(result, default=str)
    finally:
        await ctx.aclose()
    return EXIT_OK


async def _init_state(config: RiposteConfig) -> int:
    from pipeline.aws import AwsClients
    from pipeline.config import DynamoDbStateConfig

    state = config.state
    if isinstance(state, DynamoDbStateConfig):
        from pipeline.state.dynamodb import DynamoDbStore

        aws = AwsClients(state.region or config.service.region)
        try:
            store = await DynamoDbStore.open(state.table, aws, region=state.region)
            created = await store.create_table()
        finally:
            await aws.aclose()
        print(f"dynamodb table {state.table}: {'created' if created else 'already exists'}")
        return EXIT_OK
    from pipeline.state.sqlite import SqliteStore

    sqlite_store = await SqliteStore.open(state.path)
    await sqlite_store.aclose()
    print(f"sqlite state file {state.path}: ready")
    return EXIT_OK


def _iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return utc_from_epoch(ts).isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_json(value: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=default).decode())
    sys.stdout.write("\n")


def _print_dead_letters(letters: Sequence[Any], *, show_payload: bool) -> None:
    rows = [(d.key, d.reason or "-", _iso(d.at), _iso(d.expires_at), str(d.size))
            for d in letters]
    header = ("KEY", "REASON", "DEAD-LETTERED", "EXPIRES", "BYTES")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for letter, row in zip(letters, rows, strict=True):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if show_payload:
            print(f"    payload: {letter.summary(show_payload=True)['payload']}")


async def _dead_letters(args: argparse.Namespace) -> int:
    from pipeline import dead_letters
    from pipeline.assemble import open_context
    from pipeline.config import KinesisSourceConfig

    config = _load(args.config)
    if args.verb == "list" and args.source == "sink" and args.stream:
        raise ConfigError("--stream applies to Kinesis dead letters; drop it with --source sink")
    ctx = await open_context(config)
    try:
        if args.verb == "list":
            letters = await dead_letters.list_dead_letters(
                ctx.store, source=args.source, stream=args.stream, limit=args.limit)
            if args.json:
                _print_json([d.summary(show_payload=args.show_payload) for d in letters])
            elif letters:
                _print_dead_letters(letters, show_payload=args.show_payload)
            print(f"{len(letters)} dead letter(s)", file=sys.stderr)
            return EXIT_OK
        if args.sink is not None:
            report = await _redrive_sink(config, ctx, args)
        else:
            # The stream's own source decides the region; a stream no longer configured
            # uses the service region.
            region = next((s.region for s in config.sources if isinstance(s, KinesisSourceConfig)
                           and s.stream_name == args.stream), None)
            client = await ctx.aws.client("kinesis", region=region)
            report = await dead_letters.redrive_kinesis(ctx.store, client, args.stream,
                                                        dry_run=args.dry_run, limit=args.limit)
    finally:
        await ctx.aclose()
    return _print_redrive(report, args)


async def _redrive_sink(config: RiposteConfig, ctx: Any, args: argparse.Namespace) -> Any:
    from pipeline import dead_letters
    from sinks.fanout import build_runners

    sink_config = next((s for s in config.sinks if s.name == args.sink), None)
    if sink_config is None:
        names = ", ".join(s.name for s in config.sinks) or "none"
        raise ConfigError(f"no sink named {args.sink!r} in the configuration "
                          f"(configured: {names})")
    (runner,) = build_runners([sink_config], ctx)
    try:
        if not args.dry_run:
            await runner.healthcheck()  # a sink still refusing its credentials: stop here
        report = await dead_letters.redrive_sink(ctx.store, runner, dry_run=args.dry_run,
                                                 limit=args.limit)
        await runner.drain(sink_config.retry.budget)
    finally:
        await runner.aclose()
    return report


def _print_redrive(report: Any, args: argparse.Namespace) -> int:
    if report.target_kind == "sink":
        would, done, sent = ("would be sent again to", "item(s) sent again to", "sent")
        where = f"sink {report.target}"
    else:
        would, done, sent = ("would go back on", "record(s) put back on", "put")
        where = report.target
    if args.json:
        _print_json(report.as_dict())
    else:
        for outcome in report.outcomes:
            if outcome.status in ("failed", "put_not_deleted"):
                print(f"{outcome.status}: {outcome.key}: {outcome.detail}", file=sys.stderr)
        if args.dry_run:
            print(f"dry run: {report.count('would_redrive')} dead letter(s) {would} {where}, "
                  f"{report.count('failed')} cannot")
        else:
            print(f"redrive: {report.count('redriven')} {done} {where}, "
                  f"{report.count('failed')} failed and kept, "
                  f"{report.count('put_not_deleted')} {sent} but not deleted")
    return EXIT_OK if report.ok else EXIT_FAILURE


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"not an ISO 8601 time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


async def _replay(args: argparse.Namespace) -> int:
    from pipeline import report
    from pipeline.replay import ReplayOptions, run_replay

    opts = ReplayOptions(
        inputs=args.inputs, since=_parse_time(args.since), until=_parse_time(args.until),
        accounts=frozenset(args.account), regions=frozenset(args.region),
        kinds=frozenset(args.kind), reorder_window=args.reorder_window,
        state_path=args.state, send_to_sinks=args.sinks, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any work
    first = report.build_report(await run_replay(_load(args.config), opts))
    (out / "report.json").write_bytes(report.to_json(first))
    (out / "report.md").write_text(report.to_markdown(first), encoding="utf-8")
    (out / "report.html").write_text(report.to_html(first), encoding="utf-8")
    inputs = first["inputs"]
    line = {"events": inputs["events"], "inputs": inputs["files"],
            "incidents": len(first["incidents"]), "actions": len(first["actions"]),
            "held_for_approval": first["held_for_approval"],
            "unreadable": sum(inputs["errors"].values()), "report": str(out)}
    if not sys.stdout.isatty():  # piped or in CI: one JSON line a program can read
        print(orjson.dumps({"replay": line}).decode())
    else:
        print(f"replay: {inputs['events']} events from {inputs['files']} inputs; "
              f"{len(first['incidents'])} incidents, {len(first['actions'])} planned actions, "
              f"{sum(inputs['errors'].values())} unreadable; report in {out}/")
    if args.compare:
        if opts.state_path and opts.state_path != ":memory:":
            raise ConfigError("--compare needs fresh state for each run; drop --state")
        second = report.build_report(await run_replay(_load(args.compare), opts))
        diff = report.compare_reports(first, second)
        (out / "compare.json").write_bytes(report.to_json(diff))
        if not sys.stdout.isatty():
            print(orjson.dumps({"compare": {k: len(v) for k, v in diff.items()}}).decode())
            return EXIT_OK
        print(f"compare: {len(diff['incidents_only_in_a'])} incidents only with "
              f"{args.config or 'defaults'}, {len(diff['incidents_only_in_b'])} only with "
              f"{args.compare}; {len(diff['actions_only_in_a'])} / "
              f"{len(diff['actions_only_in_b'])} actions; details in {out}/compare.json")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline import logs

    args = build_parser().parse_args(argv)
    try:
        if args.command == "check-config":
            return _check_config(args.config, resolve_secrets=args.resolve_secrets)
        if args.command == "demo":
            from pipeline.demo import run_demo

            return run_demo(enforce=args.enforce, as_json=args.json, verbose=args.verbose)
        if args.command == "replay":
            logs.configure("ERROR", "text")
            return asyncio.run(_replay(args))
        if args.command == "run":
            config = _load(args.config)
            logs.configure(config.logging.level, config.logging.format)
            return asyncio.run(run_service(config))
        logs.configure("WARNING", "text")
        if args.command == "init-state":
            return asyncio.run(_init_state(_load(args.config)))
        if args.command == "dead-letters":
            return asyncio.run(_dead_letters(args))
        return asyncio.run(_ops(args))
    except ConfigError as exc:
        print(f"riposte: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RiposteError as exc:  # e.g. an approval or rollback the ledger refuses
        print(f"riposte: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
