"""dbt at full Coveo scale: a full `dbt build` over about 36M events, then an incremental build after a
new load of the next day (1% more sessions of the same shop).

    .venv/bin/python bench/bench_dbt.py                 # generates and loads the full dataset first (minutes)
    .venv/bin/python bench/bench_dbt.py --scale 0.05    # a quick look

Each build is timed `--repeats` times from the same starting warehouse (a copy of the file taken before the
first), and the medians are reported beside every run: this machine's speed drifts by a quarter within minutes.
Every full build starts from an empty dbt target, so each one parses the project from scratch.

The last line printed is one JSON object with the figures and the targets of issue #4 (full build < 60 s,
incremental build < 10 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from postmodern.data.generator import PROFILES


def run(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def timed_builds(build: list[str], env: dict[str, str], workdir: Path, repeats: int, cold_parse: bool) -> list[dict]:
    """`repeats` builds of the same warehouse: its file is copied aside first and put back before each build
    but the last's. With `cold_parse`, each build starts from an empty dbt target."""
    warehouse = Path(env["DUCKDB_PATH"])
    if warehouse.with_name(warehouse.name + ".wal").exists():
        raise SystemExit(f"{warehouse} has a write-ahead log: a copy of the file alone would miss its last writes")
    before = warehouse.with_name("before_build.duckdb")
    existed = warehouse.exists()  # a load alone makes no file: the raw log is beside it
    if existed:
        shutil.copyfile(warehouse, before)
    runs = []
    for repeat in range(repeats):
        if repeat and existed:
            shutil.copyfile(before, warehouse)
        elif repeat:
            warehouse.unlink()
        if cold_parse:
            shutil.rmtree(workdir / "dbt_target", ignore_errors=True)
        runs.append({"seconds": round(run(build, env), 1), "dbt_elapsed_seconds": round(dbt_elapsed(workdir), 1)})
    before.unlink(missing_ok=True)
    return runs


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 1)


def dbt_elapsed(workdir: Path) -> float:
    """dbt's own time for the last `dbt build` (run_results.json): the build less Python's and dbt's start-up,
    parsing and the `source freshness` run."""
    return json.loads((workdir / "dbt_target" / "run_results.json").read_text())["elapsed_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1.0")),
        help="share of the full 4.8M sessions (default 1.0, or BENCH_SCALE)",
    )
    parser.add_argument("--workdir", type=Path, help="where to keep the data (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3, help="builds timed of each kind (default 3)")
    args = parser.parse_args()

    sessions = int(PROFILES["coveo-full"].n_sessions * args.scale)
    extra = max(1, sessions // 100)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dbt-"))
    # a kept workdir is regenerated: the load refuses data already in the warehouse
    shutil.rmtree(workdir / "dbt_target", ignore_errors=True)
    for stale in ("warehouse.duckdb", "warehouse.duckdb.wal"):
        (workdir / stale).unlink(missing_ok=True)
    shutil.rmtree(workdir / "warehouse_log", ignore_errors=True)
    env = {**os.environ, "DUCKDB_PATH": str(workdir / "warehouse.duckdb"), "DATA_DIR": str(workdir), "MAX_SESSIONS": ""}
    cli = [sys.executable, "-m", "postmodern.cli"]
    build = [
        sys.executable,
        "-c",
        "from postmodern.config import load_settings; "
        "from postmodern.transform.dbt_runner import run_dbt_build; "
        "build = run_dbt_build(load_settings()); assert not build.failed_tests, build.failed_tests",
    ]
    try:
        profile = PROFILES["coveo-full"]
        next_day = datetime.fromtimestamp(profile.start_epoch_ms / 1000, UTC) + timedelta(days=profile.n_days)
        # the base covers the profile's days; the extra load is the day after, as a daily load would be
        for name, count, first, days in (
            ("base", sessions, 0, []),
            ("extra", extra, sessions, ["--start-date", f"{next_day:%Y-%m-%d}", "--days", "1"]),
        ):
            run(
                [
                    *cli,
                    "generate",
                    "--profile",
                    "coveo-full",
                    "--sessions",
                    str(count),
                    "--first-session",
                    str(first),
                    *days,
                    "--output",
                    str(workdir / name),
                    "--quiet",
                ],
                env,
            )
        run([*cli, "load", "--path", str(workdir / "base"), "--quiet"], env)
        full_runs = timed_builds(build, env, workdir, args.repeats, cold_parse=True)
        print(f"full builds: {full_runs}", flush=True)
        run([*cli, "load", "--path", str(workdir / "extra"), "--quiet"], env)
        incremental_runs = timed_builds(build, env, workdir, args.repeats, cold_parse=False)
        print(f"incremental builds: {incremental_runs}", flush=True)
        import duckdb

        with duckdb.connect(env["DUCKDB_PATH"], read_only=True) as connection:
            events, mart = connection.sql(
                'select (select count(*) from "POST_MODERN_DATA_STACK".stg_browsing_events), '
                '(select count(*) from "POST_MODERN_DATA_STACK".sessions)'
            ).fetchall()[0]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        json.dumps(
            {
                "bench": "dbt",
                "sessions": sessions + extra,
                "events": events,
                "mart_sessions": mart,
                "full_build_seconds": median_of(full_runs, "seconds"),
                "incremental_build_seconds": median_of(incremental_runs, "seconds"),
                "full_build_dbt_elapsed_seconds": median_of(full_runs, "dbt_elapsed_seconds"),
                "incremental_build_dbt_elapsed_seconds": median_of(incremental_runs, "dbt_elapsed_seconds"),
                "full_builds": full_runs,
                "incremental_builds": incremental_runs,
                "note": "medians of the runs listed; a build's seconds run from process start to exit (Python and "
                "dbt start-up, parsing, `dbt build`, `source freshness`); dbt_elapsed is `dbt build`'s own "
                "elapsed_time",
                "targets": {"full_build_seconds": 60, "incremental_build_seconds": 10},
            }
        )
    )


if __name__ == "__main__":
    main()
