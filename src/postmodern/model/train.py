"""The training loop: plain PyTorch, every knob a config field.

Every position of every training session is a target (all-prefix training): a session of n items gives
n - 1 examples in one pass of the LSTM. Sessions are batched with others of similar length so that
padding stays small, and packing skips what padding remains.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from postmodern.evaluation.metrics import evaluate_ranker, next_item_cases
from postmodern.model.dataset import SessionSplits
from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender, pad_batch


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    patience: int = 2  # epochs without validation improvement before stopping
    validation_cases: int = 20_000
    seed: int = 0
    grad_clip: float = 5.0
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    validation_mrr: float
    validation_hr: float
    seconds: float
    examples_per_second: float


@dataclass
class TrainingResult:
    model: LSTMRecommender
    history: list[EpochRecord]
    best_epoch: int
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads() -> None:
    """Use the cores this process may run on; torch's default can oversubscribe small machines."""
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))


def training_windows(sessions: list[np.ndarray], max_length: int) -> list[np.ndarray]:
    """Cut long sessions into windows of max_length + 1 items (inputs and targets overlap by one),
    so every transition is trained on and no input is longer than what the model reads."""
    windows = []
    for session in sessions:
        for start in range(0, max(len(session) - 1, 1), max_length):
            window = session[start : start + max_length + 1]
            if len(window) >= 2:
                windows.append(window)
    return windows


def length_bucketed_batches(windows: list[np.ndarray], batch_size: int, rng: np.random.Generator):
    """Batches of similar-length windows, in random order."""
    lengths = np.array([len(window) for window in windows])
    order = np.lexsort((rng.random(len(windows)), lengths))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def train_lstm(
    splits: SessionSplits,
    model_config: LSTMConfig,
    train_config: TrainConfig | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train with early stopping on validation MRR@20; returns the best epoch's weights."""
    train_config = train_config or TrainConfig()
    configure_threads()
    seed_everything(train_config.seed)
    device = torch.device(train_config.device)
    model = LSTMRecommender(model_config).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay
    )
    windows = training_windows(splits.train, model_config.max_length)
    n_examples = sum(len(window) - 1 for window in windows)
    validation = next_item_cases(splits.validation, max_cases=train_config.validation_cases, seed=train_config.seed)
    rng = np.random.default_rng(train_config.seed)

    history: list[EpochRecord] = []
    best_state, best_mrr, best_epoch, stale = None, -math.inf, 0, 0
    started = time.perf_counter()
    for epoch in range(1, train_config.epochs + 1):
        model.train()
        epoch_started = time.perf_counter()
        total_loss, total_positions = 0.0, 0
        batches = length_bucketed_batches(windows, train_config.batch_size, rng)
        # disable=None: no bar when output is not a terminal (Metaflow logs, CI)
        for batch in tqdm(
            batches, desc=f"epoch {epoch}", unit="batch", disable=None if progress else True, leave=False
        ):
            padded, lengths = pad_batch([windows[i] for i in batch], model_config.max_length + 1)
            inputs, targets = padded[:, :-1].to(device), padded[:, 1:].to(device)
            _, loss = model(inputs, (lengths - 1).to(device), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_config.grad_clip)
            optimizer.step()
            positions = int((lengths - 1).sum())
            total_loss += loss.item() * positions
            total_positions += positions
        train_seconds = time.perf_counter() - epoch_started
        metrics = evaluate_ranker(LSTMRanker(model), validation, k=20)
        record = EpochRecord(
            epoch=epoch,
            train_loss=total_loss / max(total_positions, 1),
            validation_mrr=metrics["mrr@20"],
            validation_hr=metrics["hr@20"],
            seconds=train_seconds,
            examples_per_second=n_examples / train_seconds if train_seconds else 0.0,
        )
        history.append(record)
        print(
            f"epoch {epoch}: loss {record.train_loss:.4f}, validation MRR@20 {record.validation_mrr:.4f} "
            f"HR@20 {record.validation_hr:.4f} ({record.seconds:.1f} s, {record.examples_per_second:,.0f} ex/s)",
            flush=True,
        )
        if on_epoch:
            on_epoch(record)
        if record.validation_mrr > best_mrr:
            best_mrr, best_epoch, stale = record.validation_mrr, epoch, 0
            best_state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
        else:
            stale += 1
            if stale >= train_config.patience:
                break
    model.load_state_dict(best_state)
    return TrainingResult(model.cpu().eval(), history, best_epoch, time.perf_counter() - started)
