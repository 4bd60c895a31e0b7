"""The model layer at scale: the tuned LSTM beside every baseline on the same test cases, and training speed.

    .venv/bin/python bench/bench_model.py                      # 600k generated sessions, the coveo-full catalogue
    .venv/bin/python bench/bench_model.py --scale 0.1          # a quick look (or BENCH_SCALE=0.1)
    .venv/bin/python bench/bench_model.py --source diginetica --path train-item-views.csv   # a public dataset

The data takes the flow's own path: `postmodern generate` (or any source `postmodern load` reads), `postmodern
load`, `dbt build`, the session mart, `prepare_splits`. Then:

- quality: HR@20 and MRR@20 (every prefix of every test session, and last items only) of popularity,
  co-occurrence and V-SKNN (both tuned on the validation split by `baseline_rankers`) and of the LSTM
  (a seeded random search over the flow's search space, each candidate with early stopping on validation
  MRR@20, the best one tested);
- speed: training examples per second for the full and the sampled softmax, each measured over a fixed
  number of mini-batches in its own process, the time of an epoch at that rate, and the process's peak memory
  (the candidates' lines give their measured epoch times too).

One JSON line per measurement; the last line sums them up against the target (the tuned LSTM beats the
best baseline on MRR@20). Timings are medians of nothing: one run, on whatever machine this is, so compare
figures from the same run only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

BENCH_SESSIONS = 600_000  # generated sessions; about a third have product views and reach the mart


def run_cli(arguments: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "postmodern.cli", *arguments, "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL
    )


def prepare_data(args: argparse.Namespace, workdir: Path) -> dict:
    """Generate (or take) the source, load it, build the marts, read and split them; the splits are pickled,
    and a later run with the same --workdir starts from them."""
    if (workdir / "splits.pkl").exists():
        mart_sessions, splits = pickle.loads((workdir / "splits.pkl").read_bytes())
        return {"phase": "data", "reused": str(workdir), "mart_sessions": mart_sessions, **splits.stats()}
    env = {**os.environ, "DUCKDB_PATH": str(workdir / "warehouse.duckdb"), "DATA_DIR": str(workdir), "MAX_SESSIONS": ""}
    started = time.perf_counter()
    if args.source == "generated":
        run_cli(
            [
                "generate",
                "--profile",
                "coveo-full",
                "--sessions",
                str(args.sessions),
                "--output",
                str(workdir / "coveo"),
            ],
            env,
        )
        run_cli(["load", "--path", str(workdir / "coveo")], env)
    else:
        run_cli(["load", "--source", args.source, "--path", str(args.path)], env)
    build = (
        "from postmodern.config import load_settings; from postmodern.transform.dbt_runner import run_dbt_build; "
        "build = run_dbt_build(load_settings()); assert not build.failed_tests, build.failed_tests"
    )
    subprocess.run([sys.executable, "-c", build], env=env, check=True, stdout=subprocess.DEVNULL)
    read = (
        "import pickle, sys; from postmodern.config import load_settings; from postmodern.warehouse import connect; "
        "from postmodern.model.dataset import read_session_mart, prepare_splits; settings = load_settings(); "
        "mart = read_session_mart(connect(settings, read_only=True), settings.application_api_key); "
        "pickle.dump((mart.num_rows, prepare_splits(mart)), open(sys.argv[1], 'wb'))"
    )
    subprocess.run([sys.executable, "-c", read, str(workdir / "splits.pkl")], env=env, check=True)
    mart_sessions, splits = pickle.loads((workdir / "splits.pkl").read_bytes())
    return {
        "phase": "data",
        "source": args.source,
        "generated_sessions": args.sessions if args.source == "generated" else None,
        "mart_sessions": mart_sessions,
        **splits.stats(),
        "seconds": round(time.perf_counter() - started, 1),
    }


def load_splits(workdir: Path):
    return pickle.loads((workdir / "splits.pkl").read_bytes())[1]


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh in a spawned process, where
    ru_maxrss would carry the peak of the parent it was forked from."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_throughput(workdir: Path, loss: str, batches: int, queue) -> None:
    """In its own process: train `batches` mini-batches (after 5 of warm-up) with the default model."""
    import numpy as np
    import torch

    from postmodern.model.lstm import LSTMConfig
    from postmodern.model.train import (
        TrainConfig,
        TrainingWindows,
        configure_threads,
        make_optimizer,
        model_and_loss,
        seed_everything,
        train_steps,
    )

    splits = load_splits(workdir)
    model_config = LSTMConfig(splits.vocabulary.size_with_padding)
    train_config = TrainConfig(loss=loss)
    threads = configure_threads(train_config.num_threads)
    seed_everything(0)
    device = torch.device(train_config.device)
    model, loss_function = model_and_loss(splits, model_config, train_config, device)
    windows = TrainingWindows(splits.train, model_config.max_length)
    chosen = windows.batches(train_config.batch_size, np.random.default_rng(0))[: batches + 5]
    steps = train_steps(
        model,
        make_optimizer(model, train_config),
        loss_function,
        windows,
        chosen,
        train_config.grad_clip,
    )
    for _ in range(5):
        next(steps)
    started = time.perf_counter()
    examples = sum(positions for _, positions in steps)
    seconds = time.perf_counter() - started
    queue.put(
        {
            "phase": "throughput",
            "loss": loss,
            "device": str(device),
            "threads": threads,
            "batch_size": train_config.batch_size,
            "n_negatives": train_config.n_negatives if loss == "sampled" else None,
            "embedding_dim": model_config.embedding_dim,
            "hidden_dim": model_config.hidden_dim,
            "items": splits.stats()["items"],
            "batches_timed": len(chosen) - 5,
            "examples_per_second": round(examples / seconds),
            "epoch_seconds": round(windows.n_examples / (examples / seconds), 1),
            "epoch_examples": windows.n_examples,
            "peak_rss_mib": round(peak_rss_mib()),
        }
    )


def train_candidate(workdir: Path, index: int, candidate: dict, epochs: int, threads: int, queue) -> None:
    """In its own process: train one candidate of the search with early stopping; its weights go to a file."""
    import torch

    from postmodern.model.search import candidate_configs
    from postmodern.model.train import TrainConfig, train_lstm

    splits = load_splits(workdir)
    model_config, train_config = candidate_configs(
        candidate, splits.vocabulary.size_with_padding, TrainConfig(epochs=epochs, num_threads=threads)
    )
    result = train_lstm(splits, model_config, train_config, progress=False)
    torch.save(result.model.state_dict(), workdir / f"candidate{index}.pt")
    queue.put(
        {
            "phase": "lstm_candidate",
            "candidate": index,
            **candidate,
            "loss": train_config.resolved_loss(model_config.n_items),
            "threads": threads,
            "validation_mrr@20": round(result.best_validation_mrr, 4),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "mean_epoch_seconds": round(sum(record.seconds for record in result.history) / len(result.history), 1),
            "examples_per_second": round(sum(r.examples_per_second for r in result.history) / len(result.history)),
            "seconds": round(result.seconds, 1),
            "peak_rss_mib": round(peak_rss_mib()),
            "model_config": asdict(model_config),
        }
    )


def quality_line(name: str, metrics: dict, **extra) -> dict:
    return {"phase": "quality", "model": name, **{key: round(value, 4) for key, value in metrics.items()}, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--scale",
        type=float,
        default=float(os.environ.get("BENCH_SCALE", "1.0")),
        help=f"share of the {BENCH_SESSIONS:,} generated sessions (default 1.0, or BENCH_SCALE)",
    )
    parser.add_argument(
        "--source", default="generated", help="a `postmodern load --source` kind instead of generated data"
    )
    parser.add_argument("--path", type=Path, help="the source's file or folder (with --source)")
    parser.add_argument("--search-size", type=int, default=2, help="LSTM candidates to train (default 2)")
    parser.add_argument("--epochs", type=int, default=8, help="most epochs per LSTM candidate (default 8)")
    parser.add_argument("--throughput-batches", type=int, default=40, help="mini-batches timed per loss (default 40)")
    parser.add_argument(
        "--workdir", type=Path, help="where to keep (and later reuse) the data (default: a temporary folder)"
    )
    args = parser.parse_args()
    if args.source != "generated" and args.path is None:
        parser.error("--source needs --path")
    args.sessions = int(BENCH_SESSIONS * args.scale)

    import torch

    from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
    from postmodern.model.baselines import baseline_rankers
    from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender
    from postmodern.model.search import best_candidate, search_candidates, search_space
    from postmodern.model.train import available_cores

    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-model-"))
    workdir.mkdir(parents=True, exist_ok=True)
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        print(json.dumps({"bench": "model", **line}), flush=True)

    try:
        emit(prepare_data(args, workdir))
        splits = load_splits(workdir)
        cases = next_item_cases(splits.test)

        tuning_started = time.perf_counter()
        baselines = baseline_rankers(splits)
        tuning_seconds = time.perf_counter() - tuning_started
        for ranker in baselines:
            ranking_started = time.perf_counter()
            metrics = evaluate_ranker(ranker, cases, k=20)
            emit(
                quality_line(
                    ranker.name,
                    metrics,
                    params=ranker.params,
                    ranking_seconds=round(time.perf_counter() - ranking_started, 1),
                )
            )
        emit({"phase": "baseline_tuning", "seconds": round(tuning_seconds, 1)})

        context = multiprocessing.get_context("spawn")
        for loss in ("full", "sampled"):
            queue = context.Queue()
            process = context.Process(target=measure_throughput, args=(workdir, loss, args.throughput_batches, queue))
            process.start()
            emit(queue.get())
            process.join()

        # the candidates train side by side, each in its own process with its share of the cores, as the
        # flow's foreach tasks do on one machine
        candidates = search_candidates(search_space(), args.search_size, "random", seed=0)
        threads = max(1, available_cores() // len(candidates))
        queue = context.Queue()
        processes = [
            context.Process(target=train_candidate, args=(workdir, index, candidate, args.epochs, threads, queue))
            for index, candidate in enumerate(candidates)
        ]
        for process in processes:
            process.start()
        trained = sorted((queue.get() for _ in processes), key=lambda line: line["candidate"])
        for process in processes:
            process.join()
        for line in trained:
            emit(line)
        best = best_candidate([line["validation_mrr@20"] for line in trained])
        model = LSTMRecommender.from_state_dict(
            LSTMConfig(**trained[best]["model_config"]),
            torch.load(workdir / f"candidate{best}.pt", weights_only=True),
        )
        ranking_started = time.perf_counter()
        metrics = evaluate_ranker(LSTMRanker(model), cases, k=20)
        emit(
            quality_line(
                "lstm",
                metrics,
                params=candidates[best],
                ranking_seconds=round(time.perf_counter() - ranking_started, 1),
            )
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    quality = {line["model"]: line for line in lines if line["phase"] == "quality"}
    best_baseline = max((name for name in quality if name != "lstm"), key=lambda name: quality[name]["mrr@20"])
    speed = {line["loss"]: line for line in lines if line["phase"] == "throughput"}
    print(
        json.dumps(
            {
                "bench": "model",
                "data": {key: value for key, value in lines[0].items() if key != "phase"},
                "hr@20": {name: line["hr@20"] for name, line in quality.items()},
                "mrr@20": {name: line["mrr@20"] for name, line in quality.items()},
                "best_baseline": best_baseline,
                "lstm_beats_best_baseline": quality["lstm"]["mrr@20"] > quality[best_baseline]["mrr@20"],
                "lstm_params": quality["lstm"]["params"],
                "examples_per_second": {loss: line["examples_per_second"] for loss, line in speed.items()},
                "epoch_seconds": {loss: line["epoch_seconds"] for loss, line in speed.items()},
                "peak_rss_mib": {
                    **{loss: line["peak_rss_mib"] for loss, line in speed.items()},
                    "bench": round(peak_rss_mib()),
                },
                "seconds": round(time.perf_counter() - started, 1),
                "target": "the tuned LSTM's MRR@20 above the best baseline's",
            }
        )
    )


if __name__ == "__main__":
    main()
