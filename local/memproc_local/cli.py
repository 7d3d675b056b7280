"""`memproc`: the local API server, the queue processor and cleanup from a terminal (migrate and
reembed live in memproc_local.maintenance)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from memproc.settings import ConfigurationError, get_settings, load_settings
from memproc_local import devredis, maintenance

ROOT = Path(__file__).resolve().parents[2]  # local/memproc_local/cli.py -> the project


def _progress_printer() -> Any:
    """A one-line live progress display on a terminal; nothing when output is redirected."""
    if not sys.stderr.isatty():
        return None

    def show(report: Any) -> None:
        rate = f"{report.processed / report.seconds:.1f}/s" if report.seconds else "-"
        sys.stderr.write(
            f"\r  processed {report.processed}  retried {report.retried}  dead {report.dead}  "
            f"memories +{report.memories_created} (merged {report.memories_merged})  {rate}   "
        )
        sys.stderr.flush()

    return show


def cmd_process(args: argparse.Namespace) -> int:
    """Drain once, or forever every PROCESSING_INTERVAL_SECONDS; a store outage is waited out with
    backoff, as the scheduled Lambda would simply run again (leases make it safe)."""
    from memproc.dal.connection import StoreError
    from memproc.processor import build_processor

    # Flags override the environment only when given: one source of truth for each setting.
    overrides = {
        name: value
        for name, value in (
            ("processing_interval_seconds", args.interval),
            ("batch_size", args.batch_size),
            ("concurrency", args.concurrency),
        )
        if value is not None
    }
    settings = load_settings(**overrides)
    processor = build_processor(settings)
    stop = threading.Event()
    progress = _progress_printer()
    print(
        f"memproc process: provider={processor.provider.name} model={processor.provider.chat_model} "
        f"concurrency={settings.concurrency} batch={settings.batch_size} "
        f"interval={settings.processing_interval_seconds}s "
        f"retention={settings.raw_retention_days}d (RAW_RETENTION_DAYS)",
        file=sys.stderr,
    )
    backoff = 0.0
    try:
        while True:
            try:
                report = processor.drain(stop=stop, progress=progress, max_items=args.max_items)
            except StoreError as exc:
                if args.run_once:
                    raise
                backoff = min(30.0, max(0.5, backoff * 2))
                logging.getLogger("memproc.process").warning(
                    "the store is unavailable (%s); trying again in %.1f s", exc, backoff
                )
                if stop.wait(backoff):
                    return 0
                continue
            backoff = 0.0
            if progress:
                sys.stderr.write("\n")
            print(json.dumps(report.summary()), flush=True)
            if args.run_once or stop.wait(settings.processing_interval_seconds):
                return 0
    except KeyboardInterrupt:
        stop.set()
        return 130


def _scheduled(function: str, code_uri: str, every: float, stop: threading.Event) -> threading.Thread:
    """Invoke a scheduled function's real handler on an interval, as EventBridge Scheduler would."""
    from memproc_local.events import LambdaContext
    from memproc_local.handlers import load_handler
    from memproc_local.routing import Route

    route = Route(
        method="", resource="", function=function, code_uri=Path(code_uri), handler="app.lambda_handler"
    )

    def loop() -> None:
        handler = load_handler(route, ROOT)
        while not stop.is_set():
            event = {
                "source": "aws.scheduler",
                "detail-type": "Scheduled Event",
                "detail": {},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            try:
                result = handler(event, LambdaContext(function, timeout_seconds=300))
                if isinstance(result, dict) and result.get("processed"):
                    print(f"{function}: processed {result['processed']} sessions", file=sys.stderr)
            except Exception as exc:  # keep the dev loop alive, loudly
                logging.getLogger("memproc.dev").exception("%s failed: %s", function, exc)
            stop.wait(every)

    thread = threading.Thread(target=loop, name=function, daemon=True)
    thread.start()
    return thread


def cmd_serve(args: argparse.Namespace) -> int:
    from memproc_local.gateway_auth import LocalAuth
    from memproc_local.server import LocalApiServer

    try:
        auth = LocalAuth.from_env()
    except ValueError as exc:
        raise SystemExit(f"memproc serve: {exc}") from None
    url, redis_proc = devredis.start_dev_redis()
    os.environ["REDIS_URL"] = url
    # The heartbeat reports the interval this dev loop really runs at.
    os.environ["PROCESSING_INTERVAL_SECONDS"] = str(max(1, math.ceil(args.process_interval)))
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    # The handlers check callers the way the simulated API Gateway authenticated them.
    os.environ["AUTH_MODE"] = auth.auth_mode
    get_settings.cache_clear()
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        raise SystemExit(str(exc)) from None
    server = LocalApiServer(ROOT / "template.yaml", ROOT, args.host, args.port, auth=auth)
    stop = threading.Event()
    interval = args.process_interval
    if redis_proc:
        data = devredis.data_dir()
        shown = data.relative_to(ROOT) if data.is_relative_to(ROOT) else data
        print(
            f"memproc dev: Redis at {url} (started here; data in {shown}, MEMPROC_DEV_DATA to move it, "
            "make dev-reset to delete it)",
            file=sys.stderr,
        )
    else:
        print(
            f"memproc dev: Redis at {url} (yours: REDIS_URL / REDIS_HOST / REDIS_PORT / REDIS_DB)",
            file=sys.stderr,
        )
    print(f"memproc dev: API on {server.url}\n{server.describe()}", file=sys.stderr)
    print(f"memproc dev: auth: {auth.describe()}", file=sys.stderr)
    llm = (
        "OpenAI"
        if settings.openai_api_key
        else "offline LLM provider: set OPENAI_API_KEY for real extraction"
    )
    print(
        f"memproc dev: queue processor every {interval}s ({llm}); cleanup every {args.cleanup_interval}s",
        file=sys.stderr,
    )
    binary = os.environ.get("MEMPROC_REDIS_SERVER")
    cli = Path(binary).with_name("redis-cli") if binary else None
    direct = f"{cli} -u {url}" if cli and cli.exists() else f"redis-cli -u {url}"
    print(
        f"memproc dev: debug with  make redis-cli CMD='ZCARD RAW_MEMORY_QUEUE'  (that is: {direct} ...)",
        file=sys.stderr,
    )
    _scheduled("ProcessQueueFunction", "functions/process_queue", interval, stop)
    _scheduled("CleanupFunction", "functions/cleanup", args.cleanup_interval, stop)
    # `kill` stops the dev server as cleanly as Ctrl-C (and the Redis it started with it).
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        server.shutdown()
        devredis.forget_url()
        if redis_proc:
            redis_proc.terminate()
            redis_proc.wait(10)
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """One vectorstore (a bounded step, repeated until complete) or the scheduled run over all."""
    from pydantic import ValidationError

    from memproc import retention
    from memproc.dal.connection import get_store
    from memproc.errors import ApiError
    from memproc.schemas.requests import CleanupQuery

    settings = get_settings()
    r = get_store(settings)
    try:
        q = CleanupQuery(retention_days=args.retention_days, dry_run=args.dry_run, limit=args.limit)
        while args.vectorstore:
            receipt = retention.cleanup(r, settings, args.vectorstore, q)
            print(receipt.model_dump_json(), flush=True)
            if receipt.complete or args.dry_run:
                return 0
    except (ApiError, ValidationError) as exc:
        print(f"memproc cleanup: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    if args.retention_days:
        settings = settings.model_copy(update={"raw_retention_days": args.retention_days})
    report = retention.run_scheduled(r, settings, dry_run=args.dry_run, limit=args.limit)
    print(report.model_dump_json(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="memproc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve", help="serve the API locally (routes from template.yaml) with the processor running"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument(
        "--process-interval", type=float, default=5.0, help="seconds between processor runs (default 5)"
    )
    p.add_argument(
        "--cleanup-interval",
        type=float,
        default=86_400.0,
        help="seconds between cleanup runs (default daily)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("process", help="drain the queue: once, or every --interval seconds")
    p.add_argument("--run-once", action="store_true", help="drain once and exit")
    p.add_argument(
        "--interval",
        type=int,
        default=None,
        metavar="SECONDS",
        help="seconds between runs (default PROCESSING_INTERVAL_SECONDS)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="items claimed per Redis call (default BATCH_SIZE)"
    )
    p.add_argument("--concurrency", type=int, default=None, help="sessions in flight (default CONCURRENCY)")
    p.add_argument("--max-items", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_process)

    p = sub.add_parser("cleanup", help="delete old processed transcripts, trim indexes, reconcile the queue")
    p.add_argument("--vectorstore", help="one vectorstore (default: every vectorstore, as the schedule does)")
    p.add_argument(
        "--retention-days",
        type=int,
        default=None,
        metavar="N",
        help="keep processed raw transcripts N days (default RAW_RETENTION_DAYS)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")
    p.add_argument("--limit", type=int, default=1000, help="index entries examined per step (default 1000)")
    p.set_defaults(func=cmd_cleanup)

    maintenance.add_commands(sub)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"memproc: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
