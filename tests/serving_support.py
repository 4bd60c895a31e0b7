"""Small model bundles and a real `postmodern serve` process on loopback, for the serving tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from postmodern.model.bundle import ModelBundle, make_bundle
from postmodern.model.dataset import SessionSplits, Vocabulary
from postmodern.model.families import FitContext, family
from postmodern.model.families.base import grid_points
from postmodern.model.families.blend import BlendRanker
from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender
from postmodern.model.ranker import Ranker
from postmodern.serving.registry import publish


def small_bundle(version: str, skus: list[str], max_length: int = 20, seed: int = 0) -> ModelBundle:
    """An untrained LSTM over `skus`; popularity rises with the position in `skus`."""
    torch.manual_seed(seed)
    model = LSTMRecommender(LSTMConfig(n_items=len(skus) + 1, embedding_dim=8, hidden_dim=8, max_length=max_length))
    return make_bundle(LSTMRanker(model, np.arange(len(skus) + 1)), Vocabulary(skus), {"model_version": version})


def publish_small_bundle(registry: Path, version: str, skus: list[str]) -> Path:
    return publish(small_bundle(version, skus), registry)


def family_ranker(name: str, skus: list[str], seed: int = 0) -> Ranker:
    """A ranker of the family `name` fitted to sessions that walk the SKUs in order (an LSTM of one tiny epoch;
    a blend of it and co-occurrence)."""
    rng = np.random.default_rng(seed)
    n = len(skus)
    sessions = [(rng.integers(n) + np.arange(rng.integers(2, 6))) % n + 1 for _ in range(200)]
    counts = np.bincount(np.concatenate(sessions), minlength=n + 1)
    if name == "blend":
        parts = [family_ranker("lstm", skus, seed), family_ranker("cooccurrence", skus, seed)]
        return BlendRanker(parts, [0.5, 0.5], counts)
    splits = SessionSplits(Vocabulary(skus), sessions, [], [], counts, {})
    space = {"embedding_dim": [8], "hidden_dim": [8]} if name == "lstm" else family(name).search_space
    ranker, _ = family(name).build(splits, grid_points(space)[0], FitContext(None, epochs=1, progress=False))
    return ranker


def family_bundle(name: str, version: str, skus: list[str]) -> ModelBundle:
    return make_bundle(family_ranker(name, skus), Vocabulary(skus), {"model_version": version})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`python -m postmodern.cli serve` (or `command`) on 127.0.0.1 and a free port, with exactly `env`, its output
    in a file."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str, command: str = "serve", port: int | None = None):
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{command}-{self.port}.log"
        argv = [sys.executable, "-m", "postmodern.cli", command, "--port", str(self.port), *args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_until_ready()

    def wait_until_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.base_url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not become ready:\n{self.output()}")
            time.sleep(0.2)

    def signal(self, signum: int = signal.SIGHUP) -> None:
        self.process.send_signal(signum)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
