"""Serving under load: the real `postmodern serve` on 127.0.0.1, driven at a constant rate by wrk.

    .venv/bin/python bench/bench_serving.py                     # the target rate for 30 s, then the highest rate
    .venv/bin/python bench/bench_serving.py --scale 0.2         # a quick look (shorter runs)
    .venv/bin/python bench/bench_serving.py --workdir /tmp/sb   # keep the data and model for the next run
    .venv/bin/python bench/bench_serving.py --profile coveo-full --family vsknn   # 57,000 items, V-SKNN

What it serves and sends: data generated as `make run` does (profile `small`, or `--profile coveo-full` for
the full catalogue: 36M events, 57,000 products in the deployed vocabulary), loaded and built by dbt, split by
time as the flow's deploy splits it; a model of `--family` (the LSTM of the flow's default size trained for one
epoch on a sample of the training sessions: latency depends on the sizes, not on the weights; the baselines
fitted on every session); and requests made of the test set's sessions as a shopper's browser would send them
mid-session: the SKUs seen so far (unknown ones included), one session per request, k = 20: every prefix of every
test session once, shuffled, and no request sent twice in the whole bench (the server reuses the rankings of recent
prefixes: a replayed file would be answered from them; the figures report the share so answered, and `--no-cache`
serves without it).

The load generator is Debian's `wrk` with `wrk_paced.lua`: one connection per thread, each sending on a
fixed schedule, latency counted from when a request was due (see the script: wrk alone is closed-loop and
would hide queueing). First `--rate` for `--seconds`, `--repeats` times (each figure's median is reported,
and each run's p99 beside it: this machine's speed drifts within minutes), then rising rates for a shorter
time each, up to the first that misses p99 < 50 ms, has an error, or falls 5% behind its schedule (or, if
`--rate` already misses, falling rates down to the first that holds): the highest rate that held is the
maximum sustainable rate. wrk and the server share this machine's two cores; the server runs one worker
process per CPU (`--workers`), as a deployment sets `SERVING_WORKERS`.

Before the load, the served ranking is compared with the exact one on 5,000 test cases (`ranking_recall`: the
share of the exact top 20 served, and HR@20 / MRR@20 of both), since a serving pass at a large catalogue is ranked
from candidates that an index retrieves, with the softmax's tail estimated (see `model/lstm.py`).

The last line printed is one JSON object with the figures and the profile's target (`small`: p99 < 5 ms at
2,000 requests/s; `coveo-full`: p99 < 10 ms at 1,000 requests/s; no error, a top-20 overlap of 0.99 or more),
and the share of CPU time that the hypervisor gave to other guests during the main run (`cpu_stolen_pct`): on a
shared virtual machine a few percent is enough to move the p99.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np

from postmodern.config import load_settings
from postmodern.data.generator import PROFILES

CONNECTIONS = 16
MAX_RATE_P99_MS = 50
# Each profile's target: p99 under this many milliseconds at this rate, with no error.
TARGETS = {"small": (2000, 5.0), "coveo-full": (1000, 10.0)}
RECALL_CASES = 5_000
# The baselines' configurations (each family's best on YOOCHOOSE 1/64's validation cases).
BASELINE_PARAMS = {
    "cooccurrence": {"window": 3, "directed": False, "weighting": "last"},
    "vsknn": {"k": 200, "sample_size": 1000, "score_decay": True, "skip_latest": False},
}
RATE_STEPS = (1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000)
LOWER_RATES = (750, 500, 250, 100)
LUA = Path(__file__).with_name("wrk_paced.lua")
REQUESTS = "requests.jsonl"  # request bodies, one per line, each sent once (see RequestStream)


def prepare_data_and_requests(workdir: Path, profile: str, sessions: int | None, n_requests: int) -> dict:
    """Generate, load, build, split as the flow's deploy does (training and validation sessions together); write
    the splits, test cases and the requests (`REQUESTS`). Reused when done: a workdir's warehouse is read as it is,
    and data already generated there is loaded as it is."""
    summary_path = workdir / "prepared.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    from postmodern.evaluation.metrics import next_item_cases
    from postmodern.model.dataset import read_session_mart, refit_splits
    from postmodern.transform.dbt_runner import run_dbt_build
    from postmodern.warehouse import connect

    cli = [sys.executable, "-m", "postmodern.cli"]
    settings = load_settings(_env_file=None, duckdb_path=workdir / "warehouse.duckdb", data_dir=workdir)
    if not settings.duckdb_path.exists():
        if not (workdir / "coveo" / "browsing_train.csv").exists():
            generate = [*cli, "generate", "--profile", profile, "--output", str(workdir / "coveo"), "--quiet"]
            subprocess.run(generate + (["--sessions", str(sessions)] if sessions else []), check=True)
        load = [*cli, "load", "--path", str(workdir / "coveo"), "--quiet"]
        subprocess.run(load, check=True, env=bench_env(workdir))
        build = run_dbt_build(settings)
        assert not build.failed_tests, build.failed_tests
    warehouse = connect(settings)  # dbt ran in this process: DuckDB wants the same connection settings
    mart = read_session_mart(warehouse, settings.application_api_key)
    warehouse.close()
    splits = refit_splits(mart)  # what the flow deploys: trained on the training and validation sessions
    (workdir / "splits.pkl").write_bytes(pickle.dumps(splits))

    # The test period's sessions as the shop sent them (repeats and SKUs unknown to the model included).
    starts = mart.column("session_start_at").to_numpy()
    test_from = np.datetime64(splits.boundaries["test_from"])
    test_sessions = [
        skus
        for skus, start in zip(mart.column("interactions").to_pylist(), starts, strict=True)
        if start >= test_from and len(skus) >= 2
    ]
    (workdir / "test_cases.pkl").write_bytes(pickle.dumps(next_item_cases(splits.test, max_cases=RECALL_CASES)))
    # One request per click after a session's first, as the shop's pages ask: every prefix of every test session
    # once, in a random order (two requests are alike only where two shoppers' sessions began alike).
    requests = [skus[:end] for skus in test_sessions for end in range(1, len(skus))]
    random.Random(0).shuffle(requests)
    with (workdir / REQUESTS).open("w") as lines:
        lines.writelines(json.dumps({"sessions": [seen], "k": 20}) + "\n" for seen in requests[:n_requests])
    summary = {"profile": profile, "catalogue_items": len(splits.vocabulary), "test_sessions": len(test_sessions)}
    summary_path.write_text(json.dumps(summary))
    return summary


def publish_model(workdir: Path, family_name: str, train_sessions: int) -> dict:
    """A model of the family, published to its own registry in the workdir (reused when there): the LSTM of the
    flow's default size trained for one epoch on a sample of the training sessions (latency depends on the sizes,
    not on the weights); co-occurrence and V-SKNN fitted on every training session (their cost grows with what
    they index); a blend of the LSTM and co-occurrence."""
    summary_path = workdir / f"model-{family_name}.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    from postmodern.model.bundle import make_bundle
    from postmodern.model.families import FitContext, family
    from postmodern.model.families.blend import BlendRanker
    from postmodern.model.lstm import LSTMConfig, LSTMRanker
    from postmodern.model.train import TrainConfig, train_lstm
    from postmodern.serving.registry import publish

    splits = pickle.loads((workdir / "splits.pkl").read_bytes())
    context = FitContext(validation=None, progress=False)

    def lstm() -> LSTMRanker:
        sample = random.Random(0).sample(splits.train, min(train_sessions, len(splits.train)))
        config = LSTMConfig(splits.vocabulary.size_with_padding)
        result = train_lstm(replace(splits, train=sample), config, TrainConfig(epochs=1), progress=False)
        return LSTMRanker(result.model, splits.train_counts)

    def baseline(name: str):
        return family(name).build(splits, BASELINE_PARAMS[name], context)[0]

    if family_name == "lstm":
        ranker = lstm()
    elif family_name == "blend":
        ranker = BlendRanker([lstm(), baseline("cooccurrence")], [0.6, 0.4], splits.train_counts)
    else:
        ranker = baseline(family_name)
    publish(
        make_bundle(ranker, splits.vocabulary, {"model_version": f"bench-{family_name}"}),
        registry(workdir, family_name),
    )
    summary = {"family": family_name, "params": ranker.params}
    summary_path.write_text(json.dumps(summary, default=str))
    return summary


def registry(workdir: Path, family_name: str) -> Path:
    return workdir / f"registry-{family_name}"


class RequestStream:
    """Hands each run of wrk the next requests of the workdir's file, enough for its length, so that no request
    is sent twice in the bench (the server keeps recent rankings: replaying a file would be answered from them).
    Past the file's end it starts again, and says so (`reused`)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.lines = (workdir / REQUESTS).read_text().splitlines(keepends=True)
        self.position, self.runs, self.reused = 0, 0, False

    def next_bodies(self, rate: int, seconds: float) -> Path:
        count = int(rate * (seconds + 1) * 1.05)  # wrk may send a little beyond its schedule
        if self.position + count > len(self.lines):
            self.position, self.reused = 0, True
        path = self.workdir / f"bodies-run{self.runs}.jsonl"
        path.write_text("".join(self.lines[self.position : self.position + count]))
        self.position += count
        self.runs += 1
        return path


def ranking_recall(workdir: Path, family_name: str, pass_sessions: int = 8) -> dict:
    """The served ranking (in passes of `pass_sessions`, as a busy server ranks what waits) against the exact one
    on test cases: the share of the exact top 20 that is served, HR@20 and MRR@20 of both. Exact: the top 20 of
    the model's float32 probabilities (a sparse family's own ranking, which breaks its ties by popularity)."""
    from postmodern.evaluation.metrics import accuracy_metrics
    from postmodern.model.bundle import ModelBundle, SessionRecommender
    from postmodern.model.ranker import top_k
    from postmodern.model.sparse import SparseRanker
    from postmodern.serving.registry import latest_bundle_dir

    ranker = SessionRecommender(ModelBundle.load(latest_bundle_dir(registry(workdir, family_name)))).ranker
    cases = pickle.loads((workdir / "test_cases.pkl").read_bytes())
    known = [case for case, prefix in enumerate(cases.prefixes) if len(prefix)]
    prefixes, targets = [cases.prefixes[case] for case in known], cases.targets[known]
    served = np.concatenate(
        [ranker.rank(prefixes[i : i + pass_sessions], 20)[0] for i in range(0, len(prefixes), pass_sessions)]
    )
    exact = np.concatenate(
        [
            ranker.rank(prefixes[i : i + 256], 20)[0]
            if isinstance(ranker, SparseRanker)
            else top_k(ranker.probabilities(prefixes[i : i + 256]), prefixes[i : i + 256], 20, False)[0]
            for i in range(0, len(prefixes), 256)
        ]
    )
    overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(served.tolist(), exact.tolist(), strict=True)])
    return {
        "recall_cases": len(prefixes),
        "top20_overlap": round(float(overlap), 5),
        "served": {name: round(100 * value, 2) for name, value in accuracy_metrics(served, targets, 20).items()},
        "exact": {name: round(100 * value, 2) for name, value in accuracy_metrics(exact, targets, 20).items()},
    }


def bench_env(workdir: Path, family_name: str | None = None) -> dict[str, str]:
    """The environment of the CLI's processes: the workdir's warehouse, and the family's registry to serve."""
    served = {"REGISTRY_DIR": str(registry(workdir, family_name))} if family_name else {}
    return {
        **os.environ,
        "DUCKDB_PATH": str(workdir / "warehouse.duckdb"),
        "DATA_DIR": str(workdir),
        "MAX_SESSIONS": "",
        "SERVING_API_KEY": "",
        **served,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(workdir: Path, family_name: str, port: int, workers: int, cache: bool = True) -> subprocess.Popen:
    env = bench_env(workdir, family_name) | ({} if cache else {"SERVING_CACHE_PREFIXES": "0"})
    server = start_cli("serve", port, env, workdir / "server.log", "--workers", str(workers))
    # each worker loads the model: wait until a run of new connections (any worker's) all find one ready
    deadline = time.monotonic() + 120
    while sum(httpx.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200 for _ in range(20)) < 20:
        if time.monotonic() > deadline:
            raise SystemExit(f"a worker did not become ready: see {workdir / 'server.log'}")
        time.sleep(0.5)
    return server


def start_cli(command: str, port: int, env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """`postmodern <command> --port <port> <args>`, once its /ping answers; its output appended to `log_path`."""
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "postmodern.cli", command, "--port", str(port), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"postmodern {command} did not start: see {log_path}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and of the processes it started (a server's workers), Linux /proc;
    0 for a process that has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(int(c)) for c in children)


def stolen_cpu_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this machine's CPUs wanted it, so far (Linux /proc)."""
    return int(Path("/proc/stat").read_text().split()[8]) / os.sysconf("SC_CLK_TCK")


def paced_run(port: int, bodies: Path, rate: int, seconds: float, path: str = "/invocations") -> dict:
    """One wrk run at `rate` requests/s; its JSON line, plus the achieved rate and an error count."""
    command = [
        "wrk", "-t", str(CONNECTIONS), "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s", "--timeout", "2s",
        "-s", str(LUA), f"http://127.0.0.1:{port}", "--", str(bodies), str(rate), str(CONNECTIONS), path,
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=seconds + 60).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    figures["rate"] = rate
    figures["achieved_rps"] = round(figures["responses"] / figures["duration_s"], 1)
    figures["errors"] = figures.pop("non_2xx") + figures.pop("socket_errors") + figures.pop("timeouts")
    return figures


def measured_run(
    server_pid: int, port: int, bodies: Path, rate: int, seconds: float, path: str = "/invocations"
) -> dict:
    """`paced_run`, plus the server's CPU time per request and the share of CPU time stolen meanwhile (and for the
    model server, the share of sessions answered from its cache of recent rankings)."""
    cpu_before, stolen_before = cpu_seconds(server_pid), stolen_cpu_seconds()
    ranked_before = ranked_counts(port) if path == "/invocations" else None
    figures = paced_run(port, bodies, rate, seconds, path)
    if ranked_before is not None:
        (ranked, cached), (ranked_then, cached_then) = ranked_counts(port), ranked_before
        figures["cached_share"] = round((cached - cached_then) / max(ranked - ranked_then, 1), 3)
    figures["server_cpu_ms_per_request"] = round(
        1000 * (cpu_seconds(server_pid) - cpu_before) / max(figures["responses"], 1), 3
    )
    # A virtual machine's CPUs are shared with other guests: a run that lost much time shows it here.
    stolen_share = (stolen_cpu_seconds() - stolen_before) / (figures["duration_s"] * os.cpu_count())
    figures["cpu_stolen_pct"] = round(100 * stolen_share, 1)
    return figures


def ranked_counts(port: int) -> tuple[float, float]:
    """The model server's counts so far of sessions ranked by the model, and of those answered from its cache."""
    counts = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines()
        if line.startswith("postmodern_")
    }
    return counts.get('postmodern_sessions_total{ranked_by="model"}', 0.0), counts.get(
        "postmodern_cached_rankings_total", 0.0
    )


def median_run(runs: list[dict]) -> dict:
    """Each figure's median over the runs; errors and responses summed (one error in any run counts)."""
    summed = ("responses", "errors")
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key not in summed}
    return {**median, **{key: sum(run[key] for run in runs) for key in summed}}


def sustained(figures: dict) -> bool:
    on_schedule = figures["achieved_rps"] >= 0.95 * figures["rate"]
    return figures["errors"] == 0 and figures["p99_ms"] < MAX_RATE_P99_MS and on_schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, help="requests per second of the main run (default: the profile's target)")
    parser.add_argument("--seconds", type=float, default=30, help="length of the main run (default 30)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="main runs, reported by their median (default 3: this machine drifts)"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1.0")),
        help="shortens every run by this factor (default 1.0, or BENCH_SCALE)",
    )
    parser.add_argument("--profile", default="small", choices=sorted(PROFILES), help="generated data (default small)")
    parser.add_argument("--sessions", type=int, help="override the profile's number of sessions")
    parser.add_argument("--family", default="lstm", choices=["lstm", "cooccurrence", "vsknn", "blend"],
                        help="the model family served (default lstm; blend: the LSTM and co-occurrence)")  # fmt: skip
    parser.add_argument("--train-sessions", type=int, default=20_000,
                        help="training sessions the LSTM's one epoch reads (default 20,000)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="keep data, model and request bodies here (default: temporary)")
    parser.add_argument("--no-cache", action="store_true", help="serve without the cache of recent rankings")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="server processes (`serve --workers`; default: one per CPU, as deployed)")  # fmt: skip
    args = parser.parse_args()
    target_rate, target_p99_ms = TARGETS.get(args.profile, (1000, 10.0))
    args.rate = args.rate or target_rate
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk: apt-get install wrk")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        prepared = {
            **prepare_data_and_requests(workdir, args.profile, args.sessions, n_requests=400_000),
            **publish_model(workdir, args.family, args.train_sessions),
        }
        print(f"serving {prepared}", flush=True)
        recall = ranking_recall(workdir, args.family)
        print(f"ranking recall {recall}", flush=True)
        port = free_port()
        stream = RequestStream(workdir)
        main_seconds = max(5.0, args.seconds * args.scale)
        # Requests the warm-up and main runs send: a profile whose test sessions hold fewer would send some twice,
        # answered from the cache; so it serves without.
        cache = not args.no_cache and len(stream.lines) >= args.rate * (5 * args.scale + args.repeats * main_seconds)
        if not cache and not args.no_cache:
            print(f"{len(stream.lines):,} distinct requests are too few for these runs: serving without the cache")
        server = start_server(workdir, args.family, port, args.workers, cache=cache)

        def send(rate: int, seconds: float, measured: bool = True) -> dict:
            bodies = stream.next_bodies(rate, seconds)
            figures = (measured_run(server.pid, port, bodies, rate, seconds) if measured
                       else paced_run(port, bodies, rate, seconds))  # fmt: skip
            bodies.unlink()
            return figures

        send(args.rate, max(2.0, 5 * args.scale), measured=False)  # warm-up, not reported
        main_runs = [send(args.rate, main_seconds) for _ in range(args.repeats)]
        for run in main_runs:
            print(f"at {args.rate}/s: {run}", flush=True)
        main_run = median_run(main_runs)
        # Up from the main rate while each step holds, or down from it until one does.
        held = sustained(main_run)
        ladder = [r for r in RATE_STEPS if r > args.rate] if held else [r for r in LOWER_RATES if r < args.rate]
        steps = []
        for rate in ladder:
            steps.append(send(rate, max(3.0, 10 * args.scale)))
            print(f"at {rate}/s: {steps[-1]}", flush=True)
            if sustained(steps[-1]) != held:
                break
        passed = [step["rate"] for step in steps if sustained(step)] + ([args.rate] if held else [])
        max_rate = max(passed) if passed else None
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=15)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "serving",
                **prepared,
                "server_workers": args.workers,
                "load_generator": f"wrk, {CONNECTIONS} connections, constant rate (wrk_paced.lua)",
                "rate_rps": args.rate,
                "main_runs": len(main_runs),
                **{key: main_run[key] for key in ("duration_s", "responses", "achieved_rps", "errors")},
                **{key: main_run[key] for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
                "service_p99_ms": main_run["service_p99_ms"],
                "server_cpu_ms_per_request": main_run["server_cpu_ms_per_request"],
                "cache": cache,
                "cached_share": main_run["cached_share"],
                "requests_sent_twice": stream.reused,
                "cpu_stolen_pct": main_run["cpu_stolen_pct"],
                "max_sustainable_rps": max_rate,
                **recall,
                "main_run_p99_ms": [run["p99_ms"] for run in main_runs],
                "main_run_cpu_stolen_pct": [run["cpu_stolen_pct"] for run in main_runs],
                "rate_steps": [{k: s[k] for k in ("rate", "achieved_rps", "p99_ms", "errors")} for s in steps],
                "targets": {
                    "rate_rps": target_rate,
                    "p99_ms": target_p99_ms,
                    "errors": 0,
                    "top20_overlap": 0.99,
                    "max_rate_p99_ms": MAX_RATE_P99_MS,
                },  # fmt: skip
                "met_target": args.rate >= target_rate
                and main_run["p99_ms"] < target_p99_ms
                and main_run["errors"] == 0
                and recall["top20_overlap"] >= 0.99,
            }
        )
    )


if __name__ == "__main__":
    main()
