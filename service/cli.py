"""The ``vision-api`` command: serve, worker, tiny-models, export."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vision-api`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:  # its own parser: options may come before the model name
        from export.cli import main as export_main

        return export_main(argv[1:], _export_pool)
    parser = argparse.ArgumentParser(prog="vision-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server (uvicorn)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--workers", type=int, default=None)
    serve.add_argument("--reload", action="store_true")
    serve.add_argument("--config", default=None, help="TOML settings file")
    serve.set_defaults(run=_serve)

    tiny = commands.add_parser("tiny-models", help="write tiny random checkpoints + config.toml")
    tiny.add_argument("directory", type=Path)
    tiny.set_defaults(run=_tiny_models)

    for extend in _EXTENSIONS:
        extend(commands)

    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


def _export_pool(config_path: str | None) -> Any:
    """The server's model pool for ``vision-api export`` (same settings, same wiring)."""
    from service.settings import Settings
    from service.wiring import build_pool

    return build_pool(Settings.load(config_path))


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import Settings

    if args.config:
        os.environ["VISION_API_CONFIG"] = str(Path(args.config).resolve())
    try:
        settings = Settings.load()
    except ValueError as exc:
        print(f"vision-api serve: {exc}", file=sys.stderr)
        return 2
    server = settings.server
    workers = args.workers or server.workers
    if workers > 1 and not settings.jobs.redis_url:
        print(
            "vision-api serve: --workers > 1 needs a shared job queue: with the in-memory "
            "backend each process would keep its own jobs. Set VISION_API_REDIS_URL "
            "(and run `vision-api worker`), or use --workers 1.",
            file=sys.stderr,
        )
        return 2
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        host=args.host or server.host,
        port=args.port if args.port is not None else server.port,
        workers=workers if not args.reload else 1,
        reload=args.reload,
        log_level=server.log_level,
        # uvicorn waits for in-flight requests before the app's shutdown runs: bound it too.
        timeout_graceful_shutdown=int(server.shutdown_grace_s) or None,
    )
    return 0


def _tiny_models(args: argparse.Namespace) -> int:
    from engines.tiny import write_tiny_models

    config = write_tiny_models(args.directory)
    print(f"wrote tiny checkpoints and {config}")
    print(f"serve them with: vision-api serve --config {config}")
    return 0


def _add_worker(commands: argparse._SubParsersAction) -> None:
    worker = commands.add_parser(
        "worker", help="run an arq job worker (needs VISION_API_REDIS_URL)"
    )
    worker.add_argument("--config", default=None, help="TOML settings file (same as serve)")
    worker.set_defaults(run=_worker)


def _worker(args: argparse.Namespace) -> int:
    from service.jobs.worker import run_worker

    return run_worker(args.config)


def _add_export(commands: argparse._SubParsersAction) -> None:
    # Parsed by export.cli (see main); listed here for --help.
    commands.add_parser("export", help="export models to ONNX and check parity (see export -h)")


_EXTENSIONS = [_add_worker, _add_export]


if __name__ == "__main__":
    raise SystemExit(main())
