"""The training loop: plain PyTorch, every knob a config field.

Every position of every training session is a target (all-prefix training): a session of n items gives
n - 1 examples in one pass of the LSTM. Sessions are batched with others of similar length so that
padding stays small, packing skips what padding remains, and only real positions reach the output layer.

The loss is a softmax over the next item. Over the whole catalogue (`loss="full"`) it costs one dot
product per item per position, which is cheap for a few thousand items and dominates everything for tens
of thousands. `loss="sampled"` scores each target against one popularity-weighted sample of negatives
shared by the whole mini-batch (as GRU4Rec does), each negative's score lowered by the log of its expected
count in the sample (the logQ correction; Bengio and Senecal 2008, Blanc and Rendle 2018): the sum over the
sample then estimates the softmax's normaliser over the whole catalogue, so the loss tends to the full one
as negatives grow, instead of pushing popular items down because they are drawn often. `loss="auto"` takes
the full softmax up to `full_softmax_max_items` items: by default 10,000 on a CPU and 100,000 on a GPU, where
scoring the whole catalogue is one large product (its logits for 5,120 positions of 100,000 items take 2 GB).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from postmodern.evaluation.metrics import EvaluationCases, evaluate_ranker, next_item_cases
from postmodern.model.dataset import PADDING_ID, SessionSplits
from postmodern.model.lstm import (
    LSTMConfig,
    LSTMRanker,
    LSTMRecommender,
    item_pair_counts,
    pad_batch,
    real_positions,
)

LOSSES = ("auto", "full", "sampled")
FULL_SOFTMAX_MAX_ITEMS = {"cpu": 10_000, "cuda": 100_000}


@dataclass
class TrainConfig:
    epochs: int = 8
    batch_size: int = 256  # sessions (windows) per mini-batch
    learning_rate: float = 3e-3
    lr_decay: float = 0.5  # the learning rate is multiplied by this after every epoch
    weight_decay: float = 1e-5
    patience: int = 2  # epochs without validation improvement before stopping
    validation_cases: int = 20_000
    seed: int = 0
    grad_clip: float = 5.0
    loss: str = "auto"
    full_softmax_max_items: int | None = None  # "auto" samples above this catalogue size; None: by device
    # Sampled softmax: negatives shared by a mini-batch. At 38k items and 200k sessions, 4,096 rather than 1,024
    # gave test MRR@20 0.5187 against 0.5123 for 2.2 times the time per epoch on a CPU; the full softmax was
    # only 0.001 above 16,384 negatives after one epoch (bench/bench_model.py data).
    n_negatives: int = 4096
    negative_alpha: float = 0.75  # sampled softmax: negatives drawn with probability ∝ count ** alpha
    num_threads: int | None = None  # torch threads; None: the cores this process may use
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")

    def resolved_loss(self, n_items: int) -> str:
        if self.loss == "auto":
            limit = self.full_softmax_max_items
            if limit is None:
                limit = FULL_SOFTMAX_MAX_ITEMS.get(torch.device(self.device).type, FULL_SOFTMAX_MAX_ITEMS["cpu"])
            return "full" if n_items <= limit else "sampled"
        return self.loss


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

    @property
    def best_validation_mrr(self) -> float:
        return self.history[self.best_epoch - 1].validation_mrr


def seed_everything(seed: int) -> None:
    """The same seed gives the same model: Python, NumPy and torch generators, and deterministic cuDNN."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def available_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def configure_threads(num_threads: int | None = None) -> int:
    """Use `num_threads`, else the cores this process may run on: torch's default counts the machine's
    cores, which oversubscribes containers and tasks sharing a machine."""
    threads = num_threads or available_cores()
    torch.set_num_threads(threads)
    return threads


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


class TrainingWindows:
    """Every training window, padded once into one [n_windows, max_length + 1] tensor."""

    def __init__(self, sessions: list[np.ndarray], max_length: int):
        windows = training_windows(sessions, max_length)
        if not windows:
            raise ValueError("no training session has two items: nothing to learn from")
        self.items, self.lengths = pad_batch(windows, max_length + 1)
        self.n_examples = int((self.lengths - 1).sum())

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Window indices of each mini-batch: similar lengths together (little padding), batches in random order."""
        lengths = self.lengths.numpy()
        order = np.lexsort((rng.random(len(lengths)), lengths))
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        rng.shuffle(batches)
        return batches

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs [b, t], input lengths [b] and targets [b, t] of the windows `indices`."""
        lengths = self.lengths[indices]
        padded = self.items[indices, : int(lengths.max())]
        return padded[:, :-1], lengths - 1, padded[:, 1:]


class NegativeSampler:
    """One draw of `n_negatives` items per mini-batch, with probability ∝ training count ** alpha."""

    def __init__(self, train_counts: np.ndarray, n_negatives: int, alpha: float, seed: int, device: torch.device):
        weights = np.asarray(train_counts, dtype=np.float64) ** alpha
        weights[PADDING_ID] = 0.0
        self.probabilities = torch.from_numpy(weights / weights.sum())
        self.n_negatives = n_negatives
        # log of each item's expected count in one draw: the logQ correction (-inf for padding, never drawn)
        self.log_expected = torch.log(self.probabilities * n_negatives).float().to(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.device = device

    def sample(self) -> torch.Tensor:
        negatives = torch.multinomial(self.probabilities, self.n_negatives, replacement=True, generator=self.generator)
        return negatives.to(self.device)


def full_softmax_loss(
    model: LSTMRecommender, queries: torch.Tensor, latest: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    log_lstm = torch.log_softmax(model.item_logits(queries), dim=-1).gather(1, targets[:, None]).squeeze(1)
    return mixture_loss(model, queries, latest, targets, log_lstm)


def sampled_softmax_loss(
    model: LSTMRecommender,
    queries: torch.Tensor,
    latest: torch.Tensor,
    targets: torch.Tensor,
    sampler: NegativeSampler,
) -> torch.Tensor:
    """The LSTM softmax's cross-entropy of each target against the shared negatives, each negative corrected by
    its log Q, in the mixture's loss."""
    negatives = sampler.sample()
    positive = model.target_logits(queries, targets)
    negative = model.candidate_logits(queries, negatives) - sampler.log_expected[negatives]
    # a negative that is the row's own target is not a negative (an "accidental hit")
    negative = negative.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))
    # cross_entropy rather than logsumexp: torch.exp takes a slow path for every result that underflows, and most
    # negatives' corrected scores are far below the target's (several times slower per batch, late in training)
    logits = torch.cat([positive[:, None], negative], dim=1)
    log_lstm = -F.cross_entropy(logits, torch.zeros_like(targets), reduction="none")
    return mixture_loss(model, queries, latest, targets, log_lstm)


def mixture_loss(
    model: LSTMRecommender, queries: torch.Tensor, latest: torch.Tensor, targets: torch.Tensor, log_lstm: torch.Tensor
) -> torch.Tensor:
    """The mixture's negative log-likelihood, plus the LSTM softmax's own. On the mixture's alone, the LSTM learns
    little where the pairs take the weight, and ranked what they miss poorly (with the pairs as a learned softmax,
    bench_model's 38k items, after epoch 2: validation HR@20 0.774 against 0.796 with its own term). `log_lstm`:
    each target's log-probability under the LSTM's softmax [n].

    A position's own transition stays in the frequencies it is trained against: the LSTM has learned it too, and
    the gate weighs the two as they stand on the training sessions. With it left out, the gate learned to trust
    the LSTM more every epoch as the LSTM learned the training sessions (validation MRR@20 0.5354/0.5333/0.5313
    at epochs 1/2/3, against 0.5390/0.5394/0.5406 with it in)."""
    if not model.mixes_pairs:
        return -log_lstm.mean()
    mixed = model.mixed_log_probability(queries, latest, targets, log_lstm)
    return -(mixed + log_lstm).mean()


# (model, queries, each query's latest item, targets) -> mean loss
LossFunction = Callable[[LSTMRecommender, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(train_config: TrainConfig, train_counts: np.ndarray, device: torch.device) -> LossFunction:
    if train_config.resolved_loss(len(train_counts)) == "full":
        return full_softmax_loss
    sampler = NegativeSampler(
        train_counts, train_config.n_negatives, train_config.negative_alpha, train_config.seed, device
    )
    return lambda model, queries, latest, targets: sampled_softmax_loss(model, queries, latest, targets, sampler)


def train_steps(
    model: LSTMRecommender,
    optimizer: torch.optim.Optimizer,
    loss_function: LossFunction,
    windows: TrainingWindows,
    batches: list[np.ndarray],
    grad_clip: float,
) -> Iterator[tuple[float, int]]:
    """One optimiser step per batch; yields each batch's mean loss and number of positions."""
    device = next(model.parameters()).device
    model.train()
    for indices in batches:
        inputs, lengths, targets = windows.batch(indices)
        inputs, lengths, targets = inputs.to(device), lengths.to(device), targets.to(device)
        real = real_positions(lengths, inputs.size(1))
        loss = loss_function(model, model(inputs, lengths), inputs[real], targets[real])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        yield loss.item(), int(lengths.sum())


def make_optimizer(model: LSTMRecommender, train_config: TrainConfig) -> torch.optim.Optimizer:
    # fused: one kernel over all parameters; the per-tensor loop takes several times longer over a large
    # embedding table, which every step updates
    return torch.optim.AdamW(
        model.parameters(), lr=train_config.learning_rate, weight_decay=train_config.weight_decay, fused=True
    )


def model_and_loss(
    splits: SessionSplits, model_config: LSTMConfig, train_config: TrainConfig, device: torch.device
) -> tuple[LSTMRecommender, LossFunction]:
    """A new model, with the transitions of the training sessions, and its loss."""
    pair_counts = item_pair_counts(splits.train, model_config.n_items) if model_config.item_pairs else None
    model = LSTMRecommender(model_config, pair_counts).to(device)
    return model, make_loss(train_config, splits.train_counts, device)


def train_lstm(
    splits: SessionSplits,
    model_config: LSTMConfig,
    train_config: TrainConfig | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    validation: EvaluationCases | None = None,
) -> TrainingResult:
    """Train with early stopping on validation MRR@20 (`validation`, else a sample of the splits' validation
    sessions) and return the best epoch's weights; without validation sessions (a refit on training and validation
    together), train every epoch and return the last. With `progress`, a bar per epoch and a line after it."""
    train_config = train_config or TrainConfig()
    configure_threads(train_config.num_threads)
    seed_everything(train_config.seed)
    device = torch.device(train_config.device)
    model, loss_function = model_and_loss(splits, model_config, train_config, device)
    optimizer = make_optimizer(model, train_config)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=train_config.lr_decay)
    windows = TrainingWindows(splits.train, model_config.max_length)
    if validation is None and splits.validation:
        validation = next_item_cases(splits.validation, max_cases=train_config.validation_cases, seed=train_config.seed)
    if validation is not None and len(validation.targets) == 0:
        raise ValueError("the validation split has no next-item case: early stopping needs one")
    rng = np.random.default_rng(train_config.seed)

    history: list[EpochRecord] = []
    best_state, best_mrr, best_epoch, stale = None, -math.inf, 0, 0
    started = time.perf_counter()
    for epoch in range(1, train_config.epochs + 1):
        epoch_started = time.perf_counter()
        total_loss, total_positions = 0.0, 0
        batches = windows.batches(train_config.batch_size, rng)
        steps = train_steps(model, optimizer, loss_function, windows, batches, train_config.grad_clip)
        # disable=None: no bar when output is not a terminal (Metaflow logs, CI)
        bar = tqdm(steps, total=len(batches), desc=f"epoch {epoch}", unit="batch", disable=None if progress else True)
        for loss, positions in bar:
            total_loss += loss * positions
            total_positions += positions
        schedule.step()
        train_seconds = time.perf_counter() - epoch_started
        metrics = (
            evaluate_ranker(LSTMRanker(model, splits.train_counts), validation, k=20)
            if validation is not None
            else {"mrr@20": math.nan, "hr@20": math.nan}
        )
        record = EpochRecord(
            epoch=epoch,
            train_loss=total_loss / max(total_positions, 1),
            validation_mrr=metrics["mrr@20"],
            validation_hr=metrics["hr@20"],
            seconds=train_seconds,
            examples_per_second=windows.n_examples / train_seconds if train_seconds else 0.0,
        )
        history.append(record)
        if progress:
            print(
                f"epoch {epoch}: loss {record.train_loss:.4f}, validation MRR@20 {record.validation_mrr:.4f} "
                f"HR@20 {record.validation_hr:.4f} ({record.seconds:.1f} s, {record.examples_per_second:,.0f} ex/s)",
                flush=True,
            )
        if on_epoch:
            on_epoch(record)
        if validation is None or record.validation_mrr > best_mrr:
            best_mrr, best_epoch, stale = record.validation_mrr, epoch, 0
            best_state = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
        else:
            stale += 1
            if stale >= train_config.patience:
                break
    if best_state is not None:  # none with epochs=0: the model as initialised (its costs, not its quality)
        model.load_state_dict(best_state)
    return TrainingResult(model.cpu().eval(), history, best_epoch, time.perf_counter() - started)
