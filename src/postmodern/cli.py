"""The `postmodern` command: generate data, load it, serve the model, and say what to do next."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_DATA_DIR = Path("data/coveo")


def _generate(args: argparse.Namespace) -> None:
    from postmodern.data.generator import PROFILES, generate_dataset

    config = PROFILES[args.profile]
    if args.sessions:
        config = replace(config, n_sessions=args.sessions)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.first_session:
        config = replace(config, first_session=args.first_session)
    if args.start_date:
        start = datetime.strptime(args.start_date, "%Y-%m-%d").replace(tzinfo=UTC)
        config = replace(config, start_epoch_ms=int(start.timestamp() * 1000))
    if args.days:
        config = replace(config, n_days=args.days)
    summary = generate_dataset(args.output, config, progress=not args.quiet)
    print(
        f"wrote {summary.events:,} events in {summary.sessions:,} sessions to {summary.browsing_path} "
        f"and {summary.products:,} products to {summary.catalog_path}"
    )


def _load(args: argparse.Namespace) -> None:
    from postmodern.config import load_settings
    from postmodern.data.load import load_source
    from postmodern.warehouse import connect_log

    overrides = {"max_sessions": args.max_sessions} if args.max_sessions else {}
    settings = load_settings(**overrides)
    log = connect_log(settings)
    try:
        summary = load_source(
            log, settings, args.path, args.source, force=args.force, checksum=args.sha256, progress=not args.quiet
        )
    finally:
        log.close()
    print(summary.describe())


def _serve(args: argparse.Namespace) -> None:
    import logging

    import uvicorn

    from postmodern.config import load_settings
    from postmodern.serving.app import ServingConfig, create_app
    from postmodern.serving.registry import bundle_version, resolve_model_source
    from postmodern.serving.workers import UVICORN_OPTIONS, serve_in_workers

    settings = load_settings()
    source = resolve_model_source(args.model, settings.registry_dir)
    version = bundle_version(source.bundle_dir())  # fails here, in one line, when there is no model yet
    config = ServingConfig.from_settings(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    watching = f"every {config.reload_seconds:g} s, " if config.reload_seconds else ""
    workers = args.workers if args.workers is not None else settings.serving_workers
    if workers < 1:
        raise SystemExit(f"--workers must be 1 or more, not {workers}")
    print(
        f"serving {source} (model {version}) on http://{args.host}:{args.port}"
        f"{f' in {workers} worker processes' if workers > 1 else ''}\n"
        f"  API key: {'required in X-API-Key' if config.api_key else 'off (set SERVING_API_KEY to require one)'}\n"
        f"  new bundles are picked up {watching}on SIGHUP and on POST /reload; docs at /docs",
        flush=True,
    )
    if workers > 1:
        serve_in_workers(args.model, args.host, args.port, workers)
        return
    uvicorn.run(create_app(source, config), host=args.host, port=args.port, **UVICORN_OPTIONS)


def _collect(args: argparse.Namespace) -> None:
    import logging

    import uvicorn

    from postmodern.collect.app import create_collector
    from postmodern.config import load_settings

    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(
        f"collecting events on http://{args.host}:{args.port}/events into the raw log of {settings.warehouse} "
        f"(stage {settings.collect_dir}; a micro-batch is loaded every {settings.collect_flush_seconds:g} s)",
        flush=True,
    )
    uvicorn.run(create_collector(settings), host=args.host, port=args.port, log_level="warning", access_log=False)


def _next_steps(args: argparse.Namespace) -> None:
    from postmodern.config import load_settings

    settings = load_settings()
    flow = "python flows/recommender_flow.py"
    print(f"""
Done. Where things are:
  warehouse      {settings.duckdb_path if settings.warehouse == "duckdb" else "Snowflake " + settings.sf_db}
  model registry {settings.registry_dir} (latest: {_latest_version(settings.registry_dir)})
  tracking       {settings.resolved_mlflow_uri}
  suite reports  {settings.data_dir / "reports"}/<run id>/suite_report.json

Next:
  view the cards       .venv/bin/{flow} card view run_transformation --id dbt
                       .venv/bin/{flow} card view test_model --id evaluation
                       (no browser? .venv/bin/{flow} card get test_model --id evaluation evaluation.html;
                        all cards: .venv/bin/{flow} card server)
  serve the model      make serve      (then, in another shell:)
                       curl -s -XPOST localhost:8080/invocations -H 'content-type: application/json' \\
                            -d '{{"sessions": [["{_some_sku(settings)}"]], "k": 5}}'
  open the MLflow UI   .venv/bin/mlflow ui --backend-store-uri {settings.resolved_mlflow_uri}
""")


def _latest_version(registry_dir: Path) -> str:
    pointer = registry_dir / "LATEST"
    return pointer.read_text().strip() if pointer.exists() else "none yet"


def _some_sku(settings) -> str:
    from postmodern.model.bundle import BundleError, ModelBundle
    from postmodern.serving.registry import latest_bundle_dir

    try:
        return ModelBundle.load(latest_bundle_dir(settings.registry_dir)).popular[0][0]
    except (BundleError, IndexError):
        return "<a SKU>"


def build_parser() -> argparse.ArgumentParser:
    import postmodern.collect as collect_package
    from postmodern.data import sources

    parser = argparse.ArgumentParser(prog="postmodern", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate", help="write Coveo-format browsing data (browsing_train.csv, sku_to_content.csv)"
    )
    generate.add_argument(
        "--profile",
        default="small",
        choices=["tiny", "small", "coveo-full"],
        help="size and shape of the data (default: small; coveo-full is the real scale)",
    )
    generate.add_argument("--sessions", type=int, help="override the profile's number of sessions")
    generate.add_argument("--seed", type=int, help="override the profile's random seed")
    generate.add_argument(
        "--first-session",
        type=int,
        default=0,
        help="number sessions from here: more sessions of the same shop (catalogue) for a later load",
    )
    generate.add_argument("--start-date", help="first day of the sessions, YYYY-MM-DD (default 2019-01-01)")
    generate.add_argument("--days", type=int, help="days the sessions start over (default 60)")
    generate.add_argument("--output", type=Path, default=DEFAULT_DATA_DIR, help=f"folder (default {DEFAULT_DATA_DIR})")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.set_defaults(run=_generate)

    load = commands.add_parser(
        "load",
        help="append session data to the warehouse's raw log as one load (bad rows go to the quarantine)",
        description=sources.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load.add_argument("--source", default="coveo", choices=sources.SOURCE_KINDS, help="layout of the data")
    load.add_argument(
        "--path",
        default=str(DEFAULT_DATA_DIR),
        help=f"the file or folder (a URL for reclist; default {DEFAULT_DATA_DIR})",
    )
    load.add_argument("--force", action="store_true", help="load a source even if it was loaded before")
    load.add_argument("--sha256", help="expected checksum of a downloaded reclist zip")
    load.add_argument("--max-sessions", type=int, help="load the first N sessions only (default: MAX_SESSIONS)")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(run=_load)

    serve = commands.add_parser(
        "serve",
        help="serve the latest deployed model (SageMaker's /ping, /invocations; limits and API key from .env)",
    )
    serve.add_argument(
        "--model", type=Path, help="a bundle folder (default: /opt/ml/model, else the registry's latest)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080, as SageMaker expects)")
    serve.add_argument(
        "--workers",
        type=int,
        help="server processes on the port, each with its own copy of the model: one per core ranks on every core "
        "(default: SERVING_WORKERS, 1)",
    )
    serve.set_defaults(run=_serve)

    collect = commands.add_parser(
        "collect",
        help="receive shopper events one by one (POST /events), durable when acknowledged, loaded in micro-batches",
        description=collect_package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    collect.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    collect.add_argument("--port", type=int, default=8090, help="port (default 8090)")
    collect.set_defaults(run=_collect)

    next_steps = commands.add_parser("next-steps", help="print where the results are and what to type next")
    next_steps.set_defaults(run=_next_steps)
    return parser


def main(argv: list[str] | None = None) -> int:
    from postmodern.config import ConfigError
    from postmodern.data.load import LoadError
    from postmodern.data.sources import SourceError
    from postmodern.model import BundleError
    from postmodern.warehouse import WarehouseError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, LoadError, SourceError, BundleError, WarehouseError) as error:
        print(f"postmodern {args.command}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
