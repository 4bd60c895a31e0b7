"""The LSTM family: the seed's "vanilla LSTM" (`model/lstm.py`), trained by `model/train.py`, one point of its
search space per task. A knob is any field of `LSTMConfig` (but `n_items`) or `TrainConfig` (but `device`, `seed`,
`num_threads`, which belong to the run, not to the candidate)."""

from __future__ import annotations

from dataclasses import asdict, fields, replace

import torch

from postmodern.model.dataset import SessionSplits
from postmodern.model.families.base import Family, FitContext
from postmodern.model.lstm import LSTMConfig, LSTMRanker, LSTMRecommender
from postmodern.model.ranker import Ranker, RankerState
from postmodern.model.train import TrainConfig, train_lstm

MODEL_KNOBS = {field.name for field in fields(LSTMConfig)} - {"n_items"}
TRAIN_KNOBS = {field.name for field in fields(TrainConfig)} - {"device", "seed", "num_threads"}


def candidate_configs(candidate: dict, n_items: int, base: TrainConfig) -> tuple[LSTMConfig, TrainConfig]:
    """The model and training configuration of one candidate: its knobs over the defaults and `base`."""
    model_knobs = {knob: value for knob, value in candidate.items() if knob in MODEL_KNOBS}
    train_knobs = {knob: value for knob, value in candidate.items() if knob in TRAIN_KNOBS}
    return LSTMConfig(n_items, **model_knobs), replace(base, **train_knobs)


class LSTM(Family):
    name = "lstm"
    tunes_in_one_task = False
    # The values worth trying, each a candidate trained in its own task (see the README's figures).
    search_space = {
        "embedding_dim": [64, 128],
        "hidden_dim": [128, 256],
        "dropout": [0.1, 0.25],
        "learning_rate": [3e-3, 1e-2],
        "tied_output": [True, False],
        "item_pairs": [True, False],
    }

    @property
    def knobs(self) -> set[str]:
        return MODEL_KNOBS | TRAIN_KNOBS

    def build(self, splits: SessionSplits, params: dict, context: FitContext) -> tuple[Ranker, dict]:
        """Train with early stopping on the context's validation cases (without them, every epoch of `params`)."""
        base = TrainConfig(epochs=context.epochs, seed=context.seed, num_threads=context.num_threads)
        model_config, train_config = candidate_configs(params, splits.vocabulary.size_with_padding, base)
        on_epoch = context.on_epoch
        result = train_lstm(
            splits,
            model_config,
            train_config,
            on_epoch=(lambda record: on_epoch(asdict(record))) if on_epoch else None,
            progress=context.progress,
            validation=context.validation,
        )
        history = [asdict(record) for record in result.history]
        return LSTMRanker(result.model, splits.train_counts), {"epochs": result.best_epoch, "history": history}

    def from_state(self, state: RankerState) -> Ranker:
        arrays = dict(state.arrays)
        train_counts = arrays.pop("train_counts")
        weights = {name: torch.from_numpy(array) for name, array in arrays.items()}
        return LSTMRanker(LSTMRecommender.from_state_dict(LSTMConfig(**state.config), weights), train_counts)
