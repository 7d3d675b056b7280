"""`memproc migrate` and `memproc reembed`: operator commands that rewrite a vectorstore's memories
(to another backend or store, or with another embedding model), resumably and with progress."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from memproc.settings import get_settings, load_settings


def _target_settings(args: argparse.Namespace) -> Any:
    """The target store's settings: --target-url (or TARGET_REDIS_URL), else --target-host and
    friends, else the source store itself. Long socket timeouts: a batch of memories with large
    vectors is one call that may take a while on the target."""
    timeouts = {"redis_socket_timeout_seconds": 60.0}
    url = args.target_url or os.environ.get("TARGET_REDIS_URL")
    if url:
        return load_settings(redis_url=url, redis_secret_arn=None, **timeouts)
    if args.target_host:
        return load_settings(
            redis_url=None,
            redis_secret_arn=None,
            redis_host=args.target_host,
            redis_port=args.target_port,
            redis_db=args.target_db,
            redis_tls=args.target_tls,
            redis_username=args.target_username,
            redis_password_secret_arn=args.target_password_secret_arn,
            **timeouts,
        )
    return load_settings(**timeouts)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Copy a vectorstore to another memory-index backend, resumably, then verify (memproc.migration).
    Exit 0: verified; 1: verification failed; 2: refused, nothing written; 3: stopped by --max-batches."""
    from memproc.dal.connection import get_store
    from memproc.errors import ApiError
    from memproc.migration import Migration, MigrationRefused, VerificationFailed

    source = get_store(load_settings(redis_socket_timeout_seconds=60.0))
    target = get_store(_target_settings(args))

    def say(line: str) -> None:
        print(f"memproc migrate: {line}", file=sys.stderr, flush=True)

    try:
        run = Migration(
            source,
            target,
            args.vectorstore,
            args.to,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            say=say,
        )
        report = run.run()
    except (MigrationRefused, ApiError) as exc:
        say(f"refused: {getattr(exc, 'message', exc)}")
        return 2
    except VerificationFailed as exc:
        for problem in exc.problems:
            say(f"VERIFICATION FAILED: {problem}")
        say("the source is untouched; run migrate again to copy again from the start")
        return 1
    print(report.model_dump_json(), flush=True)
    if not report.complete:
        say(
            f"stopped after {report.batches_this_run} batch(es) (--max-batches): "
            "run the same command to continue"
        )
        return 3
    say(
        f"verified: {report.memories:,} memories, {report.raws:,} raw submissions, "
        f"{report.sessions:,} sessions in {report.to_backend}. Point the deployment at the target "
        f"(VECTOR_BACKEND={report.to_backend}); the source is untouched: erase the vectorstore there "
        "(DELETE /api/memory/<vs> against the old deployment) once the target serves it"
    )
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    """Re-embed one vectorstore's memories with the configured provider, resumably, with progress."""
    from dataclasses import asdict

    from memproc import reembed
    from memproc.dal.connection import get_store
    from memproc.errors import ApiError
    from memproc.llm import make_provider

    settings = get_settings()
    provider = make_provider(settings)
    print(
        f"memproc reembed: {args.vectorstore} with {provider.embedding_model} ({provider.dimensions} "
        f"dimensions), {args.batch} memories per batch",
        file=sys.stderr,
    )

    def show(p: reembed.Progress) -> None:
        print(f"  {p.done}/{p.total} memories re-embedded", file=sys.stderr, flush=True)

    try:
        result = reembed.reembed(
            get_store(settings), provider, args.vectorstore, batch=args.batch, progress=show
        )
    except ApiError as exc:
        print(f"memproc reembed: {exc.message}", file=sys.stderr)
        return 2
    if result.previous and result.previous != result.model:
        print(f"memproc reembed: {result.previous} -> {result.model}", file=sys.stderr)
    print(json.dumps(asdict(result)), flush=True)
    return 0


def add_commands(sub: Any) -> None:
    """Register the commands on the `memproc` parser's subparsers."""
    p = sub.add_parser(
        "migrate",
        help="copy a vectorstore to another memory-index backend (and store), resumably, then verify",
        description="Copy everything of a vectorstore (memories with vectors, raw submissions, summaries, "
        "indexes, dead letters, config) from the store REDIS_URL names into the target, with its memories "
        "in the backend --to names. Resumable; never deletes from the source. Exit 0 verified, 1 "
        "verification failed, 2 refused, 3 stopped by --max-batches.",
    )
    p.add_argument("vectorstore")
    p.add_argument("--to", required=True, choices=("search", "vectorset"), help="the target's memory backend")
    p.add_argument(
        "--target-url",
        help="the target store (default TARGET_REDIS_URL; else --target-host; else the source store itself)",
    )
    p.add_argument("--target-host", help="the target's host (with --target-port, --target-tls, ...)")
    p.add_argument("--target-port", type=int, default=6379)
    p.add_argument("--target-db", type=int, default=0)
    p.add_argument("--target-tls", action="store_true", help="connect to the target with TLS")
    p.add_argument("--target-username", help="the target's ACL user")
    p.add_argument(
        "--target-password-secret-arn", help="Secrets Manager secret holding the target's password"
    )
    p.add_argument("--batch-size", type=int, default=200, help="ids per batch (default 200)")
    p.add_argument(
        "--max-batches",
        type=int,
        default=None,
        help="stop after N batches (run the command again to continue)",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "reembed",
        help="re-embed a vectorstore's memories with the configured provider (resumable; switches its "
        "embedding model when every memory is done)",
    )
    p.add_argument("vectorstore")
    p.add_argument("--batch", type=int, default=100, help="memories per embeddings call (default 100)")
    p.set_defaults(func=cmd_reembed)
