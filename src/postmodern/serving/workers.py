"""`postmodern serve --workers N`: N server processes on one port, each with its own interpreter and model.

One process ranks on one core at a time: its event loop and its ranking thread share one interpreter lock (see
`batching.py`). Several processes accept on the same socket (uvicorn's supervisor), so a machine's cores all rank:
at 57,102 items and 1,000 requests/s on two cores, two workers answered with p99 8.4 / 9.5 ms where one took
28.1 / 14.4 ms (interleaved 15-s runs of the blend), and less again once each ranked on its event loop's thread
(`BatchedRanking`). Each worker loads the model (its memory, once per worker).

What stays true of one server holds for the group:
- a hot swap fails no request: each worker swaps in place (`ServedModel`). SIGHUP to the supervisor reaches every
  worker (uvicorn's own SIGHUP would restart them, closing their clients' connections), and so does `POST /reload`,
  which one worker answers once it has swapped, and passes on to the supervisor for the others;
- `/metrics` counts the whole group whichever worker answers: prometheus_client's multiprocess mode, whose files
  live in a directory of the supervisor's own, removed when it stops.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

SUPERVISOR_PID = "POSTMODERN_SERVING_SUPERVISOR"  # set in the workers' environment: who passes SIGHUP on
MODEL_PATH = "POSTMODERN_SERVING_MODEL"  # the `--model` the workers serve (empty: the registry's latest)
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it when imported
# uvicorn picks uvloop and httptools (both pinned) when they are installed. No access log, and no X-Forwarded-For
# rewriting: the app never reads the client's address, and both cost time per request. One server or several.
UVICORN_OPTIONS = {"log_level": "warning", "access_log": False, "proxy_headers": False}


def serve_in_workers(model: Path | None, host: str, port: int, workers: int) -> None:
    """Run `workers` server processes on host:port until SIGINT or SIGTERM."""
    import uvicorn
    from prometheus_client import multiprocess
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:
            for process in self.processes:
                if process.pid is not None:
                    os.kill(process.pid, signal.SIGHUP)

        def keep_subprocess_alive(self) -> None:
            before = {process.pid for process in self.processes}
            super().keep_subprocess_alive()
            for pid in before - {process.pid for process in self.processes}:
                multiprocess.mark_process_dead(pid)  # a replaced worker's live gauges leave the sums

    with tempfile.TemporaryDirectory(prefix="postmodern-metrics-") as metrics_dir:
        os.environ.update(
            {
                SUPERVISOR_PID: str(os.getpid()),
                MODEL_PATH: str(model or ""),
                METRICS_DIR: metrics_dir,
                "SERVING_WORKERS": str(workers),  # each worker's settings: it ranks on its event loop
            }
        )
        config = uvicorn.Config(
            "postmodern.serving.workers:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            **UVICORN_OPTIONS,
        )
        Supervisor(config, sockets=[config.bind_socket()]).run()


def app_from_environment():
    """A worker's app: the model `serve_in_workers` names, with the settings of the environment."""
    from postmodern.config import load_settings
    from postmodern.serving.app import ServingConfig, create_app
    from postmodern.serving.registry import resolve_model_source

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the app's own handler (a reload passed on while it starts)
    settings = load_settings()
    model = os.environ.get(MODEL_PATH) or None
    source = resolve_model_source(Path(model) if model else None, settings.registry_dir)
    return create_app(source, ServingConfig.from_settings(settings))


def tell_the_other_workers_to_reload() -> None:
    """In a worker: SIGHUP to the supervisor, which passes it to every worker (this one finds nothing new)."""
    supervisor = os.environ.get(SUPERVISOR_PID)
    if supervisor:
        os.kill(int(supervisor), signal.SIGHUP)
