"""The model layer on a real public benchmark (or generated data): every family fitted and chosen on validation,
the champion and every family's best refit and tested, each family's costs.

    .venv/bin/python bench/bench_model.py                                   # YOOCHOOSE 1/64, its published protocol
    .venv/bin/python bench/bench_model.py --source plain --path sessions.csv.gz --test-from 2016-01-24 --keep-repeats
    .venv/bin/python bench/bench_model.py --source generated --scale 0.1    # generated data (600k sessions at 1.0)

The data takes the flow's own path: `postmodern load` (any source it reads, gzipped or not), `dbt build`, the
session mart, `prepare_splits` (the test set from `--test-from`, as published protocols split; repeats kept with
`--keep-repeats`), and `refit_splits`. Then what the flow does, with the same functions:

- fit: every family on its search space (the LSTM's candidates drawn from its space, each in its own process with
  its share of the cores, as the flow's foreach tasks), all judged on the same validation cases;
- choose: each family's best, the blends of them, the champion by validation MRR@20 (nothing here reads the test);
- refit every finalist on training and validation sessions together, then test: HR@20 and MRR@20 over every case
  of the test set (a target never seen in training is a miss, and counted), and last items only;
- costs: training examples per second and epoch time (the LSTM's candidates), fitting time, bundle size, and the
  time to rank one session at this catalogue's size and at a synthetic 57,000-item one (`--cost-items`).

One JSON line per measurement, the validation figures behind every choice among them; the last line sums up
against the targets: the champion at or above SR-GNN's published figures, the best neural family above NARM's
and above the best baseline's MRR@20. Timings are one run on whatever machine this is: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

YOOCHOOSE = Path(__file__).resolve().parents[2] / "shared" / "data" / "yoochoose1_64" / "yoochoose1_64.csv.gz"
YOOCHOOSE_TEST_FROM = "1453632070000"  # the README of the data: every test session starts at or after it
GENERATED_SESSIONS = 600_000
# Published figures on YOOCHOOSE 1/64 (HR@20, MRR@20 in %), SR-GNN (AAAI 2019), Table 2
PUBLISHED = {"POP": (6.71, 1.65), "Item-KNN": (51.60, 21.81), "GRU4Rec": (60.64, 22.89), "NARM": (68.32, 28.63),
             "STAMP": (68.74, 29.67), "SR-GNN": (70.57, 30.94)}  # fmt: skip
NEURAL_FAMILIES = ("lstm",)


def run_cli(arguments: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "postmodern.cli", *arguments, "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM starts afresh in a spawned process; ru_maxrss would not)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare_data(args: argparse.Namespace, workdir: Path) -> dict:
    """Load the source, build the marts, read and split them (and the refit split); pickled, and a later run with
    the same --workdir starts from them."""
    if (workdir / "splits.pkl").exists():
        summary, _, _ = pickle.loads((workdir / "splits.pkl").read_bytes())
        return {**summary, "reused": str(workdir)}
    env = {**os.environ, "DUCKDB_PATH": str(workdir / "warehouse.duckdb"), "DATA_DIR": str(workdir), "MAX_SESSIONS": ""}
    started = time.perf_counter()
    if args.source == "generated":
        sessions = str(int(GENERATED_SESSIONS * args.scale))
        output = str(workdir / "coveo")
        run_cli(["generate", "--profile", "coveo-full", "--sessions", sessions, "--output", output], env)
        run_cli(["load", "--path", output], env)
    else:
        run_cli(["load", "--source", args.source, "--path", str(args.path)], env)
    build = (
        "from postmodern.config import load_settings; from postmodern.transform.dbt_runner import run_dbt_build; "
        "build = run_dbt_build(load_settings()); assert not build.failed_tests, build.failed_tests"
    )
    subprocess.run([sys.executable, "-c", build], env=env, check=True, stdout=subprocess.DEVNULL)
    read = (
        "import pickle, sys; from postmodern.config import load_settings; from postmodern.warehouse import connect; "
        "from postmodern.model.dataset import read_session_mart, prepare_splits, refit_splits, split_config; "
        "settings = load_settings(); mart = read_session_mart(connect(settings, read_only=True), "
        "settings.application_api_key); config = split_config(sys.argv[2], sys.argv[3] == '1'); "
        "splits, refit = prepare_splits(mart, config), refit_splits(mart, config); "
        "summary = {'mart_sessions': mart.num_rows, **splits.stats(), 'refit': refit.stats(), "
        "'boundaries': splits.boundaries}; "
        "pickle.dump((summary, splits, refit), open(sys.argv[1], 'wb'))"
    )
    arguments = [str(workdir / "splits.pkl"), args.test_from or "", "1" if args.keep_repeats else "0"]
    subprocess.run([sys.executable, "-c", read, *arguments], env=env, check=True)
    summary, _, _ = pickle.loads((workdir / "splits.pkl").read_bytes())
    return {**summary, "source": args.source, "seconds": round(time.perf_counter() - started, 1)}


def load_splits(workdir: Path):
    _, splits, refit = pickle.loads((workdir / "splits.pkl").read_bytes())
    return splits, refit


def fit_candidate(workdir: Path, index: int, candidate: dict, epochs: int, threads: int, queue) -> None:
    """In its own process: fit one candidate on the validation cases every candidate shares; the fit is pickled."""
    from postmodern.model.families import FitContext, family

    splits, _ = load_splits(workdir)
    context = FitContext.for_splits(splits, epochs=epochs, num_threads=threads, progress=False)
    fit = family(candidate["family"]).fit(splits, candidate["space"], context)
    (workdir / f"fit{index}.pkl").write_bytes(pickle.dumps(fit))
    history = fit.history
    queue.put(
        {
            "phase": "candidate",
            "candidate": index,
            "family": fit.family,
            "params": fit.params,
            "validation": rounded(fit.validation),
            "trials": [{**trial, "validation_mrr": round(trial["validation_mrr"], 4)} for trial in fit.trials],
            "seconds": round(fit.seconds, 1),
            "threads": threads,
            "epoch_seconds": [round(record["seconds"], 1) for record in history],
            "examples_per_second": [round(record["examples_per_second"]) for record in history],
            "peak_rss_mib": round(peak_rss_mib()),
        }
    )


def rounded(metrics: dict) -> dict:
    return {name: round(value, 4) for name, value in metrics.items() if name != "cases"}


def fit_all(args: argparse.Namespace, workdir: Path, candidates: list[dict], emit) -> list:
    """Every candidate, several at a time (`--parallel`), each with its share of the cores, in its own process."""
    from postmodern.model.train import available_cores

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    threads = max(1, available_cores() // args.parallel)
    pending = list(enumerate(candidates))
    running: dict = {}
    while pending or running:
        while pending and len(running) < args.parallel:
            index, candidate = pending.pop(0)
            running[index] = context.Process(
                target=fit_candidate, args=(workdir, index, candidate, args.epochs, threads, queue)
            )
            running[index].start()
        line = queue.get()
        emit(line)
        process = running.pop(line["candidate"])
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"candidate {line['candidate']}'s process failed with exit code {process.exitcode}")
    return [pickle.loads((workdir / f"fit{index}.pkl").read_bytes()) for index in range(len(candidates))]


def ranking_seconds(ranker, prefixes: list) -> dict:
    """Median and p99 milliseconds to rank one session, one call each (as serving ranks a request alone)."""
    ranker.rank(prefixes[:1], 20)
    times = []
    for prefix in prefixes:
        started = time.perf_counter()
        ranker.rank([prefix], 20)
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p99_ms": round(times[int(0.99 * len(times))] * 1000, 3),
    }


def bundle_mib(ranker, vocabulary, scratch: Path) -> float:
    from postmodern.model.bundle import make_bundle

    directory = make_bundle(ranker, vocabulary, {"model_version": "bench"}).save(scratch / ranker.name)
    size = sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
    shutil.rmtree(directory)
    return round(size / 2**20, 2)


def synthetic_costs(selection, n_items: int, sessions: int, seed: int = 0) -> list[dict]:
    """Ranking time at another catalogue size: each finalist's configuration fitted (the LSTM: built, untrained;
    its cost does not depend on its weights) on synthetic sessions over `n_items` items (Zipf popularity, lengths
    as real sessions have them). For timing only."""
    import numpy as np

    from postmodern.model.champion import refit_finalists
    from postmodern.model.dataset import SessionSplits, Vocabulary
    from postmodern.model.families import FitContext

    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.25, size=sessions) + 1, 50)
    items = (rng.zipf(1.3, size=int(lengths.sum())) - 1) % n_items + 1
    split_at = np.cumsum(lengths)[:-1]
    train = [session for session in np.split(items, split_at) if len(session) > 1]
    counts = np.bincount(items, minlength=n_items + 1)
    splits = SessionSplits(Vocabulary([f"i{i}" for i in range(1, n_items + 1)]), train, [], train[:1000], counts, {})

    def untrained(fits: dict) -> dict:
        return {
            name: replace(fit, params={**fit.params, "epochs": 0}) if "epochs" in fit.params else fit
            for name, fit in fits.items()
        }

    built = replace(
        selection, finalists=untrained(selection.finalists), blend_members=untrained(selection.blend_members)
    )
    refitted = refit_finalists(built, splits, FitContext(None, progress=False))
    prefixes = [session[: max(1, len(session) // 2)] for session in train[:300]]
    return [
        {"phase": "cost", "family": name, "items": n_items, "synthetic": True, **ranking_seconds(ranker, prefixes)}
        for name, ranker in refitted.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="plain", help="a `postmodern load --source` kind, or `generated`")
    parser.add_argument(
        "--path", type=Path, default=YOOCHOOSE, help=f"the source's file or folder (default {YOOCHOOSE})"
    )
    parser.add_argument("--test-from", help="the test set's first instant (default: YOOCHOOSE's, for the default data)")
    parser.add_argument("--keep-repeats", action="store_true", help="keep consecutive repeats (default for YOOCHOOSE)")
    parser.add_argument("--scale", type=float, default=float(os.environ.get("BENCH_SCALE", "1.0")),
                        help=f"generated data: share of {GENERATED_SESSIONS:,} sessions (or BENCH_SCALE)")  # fmt: skip
    parser.add_argument("--families", default="popularity,cooccurrence,vsknn,lstm", help="families to fit")
    parser.add_argument("--search-size", type=int, default=2, help="LSTM candidates (default 2; 0: all)")
    parser.add_argument("--search-space", type=json.loads, default={},
                        help="values to try, as the flow's --search_space (LSTM knobs at the top level)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=8, help="most epochs per LSTM candidate (default 8)")
    parser.add_argument("--parallel", type=int, default=2, help="candidates fitted at once (default 2)")
    parser.add_argument("--cost-items", type=int, default=57_000, help="the synthetic catalogue's size for costs")
    parser.add_argument("--workdir", type=Path, help="where to keep (and later reuse) the data (default: temporary)")
    args = parser.parse_args()
    if args.path == YOOCHOOSE and args.source == "plain" and args.test_from is None:
        args.test_from, args.keep_repeats = YOOCHOOSE_TEST_FROM, True

    from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
    from postmodern.model.champion import refit_finalists, select_champion
    from postmodern.model.families import FitContext
    from postmodern.model.search import family_candidates

    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-model-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        print(json.dumps({"bench": "model", **line}, default=str), flush=True)

    try:
        emit({"phase": "data", **prepare_data(args, workdir)})
        splits, refit = load_splits(workdir)
        families = [name.strip() for name in args.families.split(",") if name.strip()]
        candidates = family_candidates(families, args.search_space, args.search_size, "random", seed=0)
        fits = fit_all(args, workdir, candidates, emit)

        context = FitContext.for_splits(splits, progress=False)
        choosing = time.perf_counter()
        selection = select_champion(fits, splits, context)
        for label, fit in selection.blend_members.items():
            emit({"phase": "blend_member", "label": label, "family": fit.family, "params": fit.params,
                  "validation": rounded(fit.validation)})  # fmt: skip
        for blend in selection.blends_tried:
            emit({"phase": "blend", "params": blend.params, "validation": rounded(blend.validation),
                  "seconds": round(blend.seconds, 1)})  # fmt: skip
        for fit in selection.ranking():
            emit(
                {"phase": "finalist", "family": fit.family, "params": fit.params, "validation": rounded(fit.validation)}
            )
        runner_up, lead = selection.margin()
        emit({"phase": "champion", "family": selection.champion, "params": selection.champion_fit.params,
              "validation_mrr@20": round(selection.champion_fit.validation_mrr, 4), "runner_up": runner_up,
              "lead": round(lead, 4), "seconds": round(time.perf_counter() - choosing, 1)})  # fmt: skip

        refitting = time.perf_counter()
        refitted = refit_finalists(selection, refit, FitContext(None, epochs=args.epochs, progress=False))
        emit({"phase": "refit", "seconds": round(time.perf_counter() - refitting, 1), **refit.stats()})

        cases = next_item_cases(refit.test)
        unknown = int((cases.targets < 0).sum())
        scratch = workdir / "bundles"
        prefixes = [prefix for prefix in cases.prefixes[:: max(1, len(cases.prefixes) // 1000)] if len(prefix)]
        for name, ranker in refitted.items():
            ranking_started = time.perf_counter()
            metrics = evaluate_ranker(ranker, cases, k=20)
            emit({"phase": "test", "family": name, **rounded(metrics), "cases": len(cases.targets),
                  "unknown_target_cases": unknown, "params": selection.finalists[name].params,
                  "ranking_seconds": round(time.perf_counter() - ranking_started, 1)})  # fmt: skip
            emit({"phase": "cost", "family": name, "items": len(refit.vocabulary), "synthetic": False,
                  **ranking_seconds(ranker, prefixes), "bundle_mib": bundle_mib(ranker, refit.vocabulary, scratch),
                  "fit_seconds": round(selection.finalists[name].seconds, 1)})  # fmt: skip
        for line in synthetic_costs(selection, args.cost_items, sessions=200_000):
            emit(line)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    test = {line["family"]: line for line in lines if line["phase"] == "test"}
    champion = next(line["family"] for line in lines if line["phase"] == "champion")
    neural = [name for name in test if name in NEURAL_FAMILIES]
    baselines = [name for name in test if name not in NEURAL_FAMILIES and name != "blend"]
    best_neural = max(neural, key=lambda name: test[name]["mrr@20"], default=None)
    best_baseline = max(baselines, key=lambda name: test[name]["mrr@20"], default=None)

    def percent(name: str) -> list[float]:
        return [round(100 * test[name]["hr@20"], 2), round(100 * test[name]["mrr@20"], 2)]

    sr_gnn, narm = PUBLISHED["SR-GNN"], PUBLISHED["NARM"]
    summary = {
        "bench": "model",
        "data": next(line for line in lines if line["phase"] == "data"),
        "test_cases": test[champion]["cases"],
        "unknown_target_cases": test[champion]["unknown_target_cases"],
        "hr@20_mrr@20_percent": {name: percent(name) for name in test},
        "published_percent": PUBLISHED,
        "champion": champion,
        "champion_params": test[champion]["params"],
        "champion_at_sr_gnn": percent(champion)[0] >= sr_gnn[0] and percent(champion)[1] >= sr_gnn[1],
        "best_neural": best_neural,
        "best_neural_above_narm": bool(best_neural)
        and percent(best_neural)[0] > narm[0]
        and percent(best_neural)[1] > narm[1],
        "best_baseline": best_baseline,
        "best_neural_above_best_baseline_mrr": bool(best_neural and best_baseline)
        and test[best_neural]["mrr@20"] > test[best_baseline]["mrr@20"],
        "seconds": round(time.perf_counter() - started, 1),
        "target": "champion >= SR-GNN (70.57 / 30.94); best neural > NARM (68.32 / 28.63) and > best baseline MRR@20",
    }
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
