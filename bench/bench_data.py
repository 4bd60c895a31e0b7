"""Data at full Coveo scale: generation and load times, events/s and peak memory of each, and the share of a
load's time that its content fingerprint (a hash of every byte) costs.

    .venv/bin/python bench/bench_data.py                 # 4.8M sessions, about 36M events (minutes, ~20 GB disk)
    .venv/bin/python bench/bench_data.py --scale 0.05    # a quick look

Each phase runs in its own process (the real CLI), so its peak memory is its own. The load runs `--loads`
times (3), each into a fresh warehouse, and the fingerprint as many times on its own: medians, and each run.
The last line printed is one JSON object with the figures and the targets of issues #3 and #20 (generation
< 180 s, load >= 1M events/s, peak memory < 4 GiB each; the fingerprint under 10% of the load).
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
from pathlib import Path

from postmodern.data.generator import PROFILES
from postmodern.data.load import fingerprint


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak resident memory (MiB) and output of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read()
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{output}")
    return seconds, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1.0")),
        help="share of the full 4.8M sessions (default 1.0, or BENCH_SCALE)",
    )
    parser.add_argument("--workdir", type=Path, help="where to write the data (default: a temporary folder)")
    parser.add_argument("--loads", type=int, default=3, help="loads (and fingerprints) to take the median of")
    parser.add_argument("--stats", action="store_true", help="also compare the data with the published figures")
    args = parser.parse_args()

    sessions = int(PROFILES["coveo-full"].n_sessions * args.scale)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-data-"))
    data, warehouse = workdir / "coveo", workdir / "warehouse.duckdb"
    raw_log = workdir / "warehouse_log"  # the raw log's segments, beside the (unused) warehouse file
    env = {**os.environ, "DUCKDB_PATH": str(warehouse), "DATA_DIR": str(workdir), "MAX_SESSIONS": ""}
    cli = [sys.executable, "-m", "postmodern.cli"]
    try:
        generate_s, generate_mib, _ = timed(
            [
                *cli,
                "generate",
                "--profile",
                "coveo-full",
                "--sessions",
                str(sessions),
                "--output",
                str(data),
                "--quiet",
            ],
            env,
        )
        print(f"generated {sessions:,} sessions in {generate_s:.1f} s (peak {generate_mib:,.0f} MiB)", flush=True)
        loads = []
        for _ in range(args.loads):
            warehouse.unlink(missing_ok=True)
            shutil.rmtree(raw_log, ignore_errors=True)
            loads.append(timed([*cli, "load", "--path", str(data), "--quiet"], env))
            print(loads[-1][2].strip(), flush=True)
        load_s, load_mib = statistics.median(s for s, _, _ in loads), max(mib for _, mib, _ in loads)
        output = loads[0][2]
        events = int(output.split("loaded ")[1].split(" events")[0].replace(",", ""))
        files = [data / "browsing_train.csv", data / "search_train.csv", data / "sku_to_content.csv"]
        fingerprints = []
        for _ in range(args.loads):
            started = time.perf_counter()
            fingerprint([path for path in files if path.exists()])
            fingerprints.append(time.perf_counter() - started)
        fingerprint_s = statistics.median(fingerprints)
        result = {
            "bench": "data",
            "sessions": sessions,
            "events": events,
            "csv_bytes": (data / "browsing_train.csv").stat().st_size,
            "generate_seconds": round(generate_s, 1),
            "generate_peak_mib": round(generate_mib),
            "load_seconds": round(load_s, 1),
            "load_seconds_each": [round(s, 1) for s, _, _ in loads],
            "load_events_per_second": round(events / load_s),
            "load_peak_mib": round(load_mib),
            "fingerprint_seconds": round(fingerprint_s, 2),
            "fingerprint_seconds_each": [round(s, 2) for s in fingerprints],
            "fingerprint_share_of_load": round(fingerprint_s / load_s, 4),
            "fingerprint_gb_per_second": round(
                sum(p.stat().st_size for p in files if p.exists()) / fingerprint_s / 1e9, 2
            ),
            "raw_log_bytes": sum(path.stat().st_size for path in raw_log.rglob("*") if path.is_file()),
            "targets": {
                "generate_seconds": 180,
                "load_events_per_second": 1_000_000,
                "peak_mib": 4096,
                "fingerprint_share_of_load": 0.10,
            },
        }
        if args.stats:
            from postmodern.data.statistics import COVEO_TARGETS, dataset_statistics

            result["statistics"] = {
                k: round(v, 4) if isinstance(v, float) else v for k, v in dataset_statistics(data).items()
            }
            result["published"] = COVEO_TARGETS
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
