"""The "vanilla LSTM" next-item recommender, in PyTorch.

Reads a session's items, and at every position scores every item of the catalogue as the next one.
The output layer reuses the item embeddings (weight tying): an item's input and output vectors live in
one space, which halves the parameters and helps rare items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from postmodern.model.dataset import PADDING_ID


@dataclass
class LSTMConfig:
    n_items: int  # vocabulary size including the padding id 0
    embedding_dim: int = 64
    hidden_dim: int = 128
    dropout: float = 0.25
    max_length: int = 20  # longest input a prediction reads; longer sessions keep their latest items


class LSTMRecommender(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.n_items, config.embedding_dim, padding_idx=PADDING_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden_dim, batch_first=True)
        self.to_item_space = nn.Linear(config.hidden_dim, config.embedding_dim)
        self.output_bias = nn.Parameter(torch.zeros(config.n_items))
        nn.init.normal_(self.item_embedding.weight, std=0.05)

    def hidden_states(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[batch, time, hidden]; packing means no LSTM compute is spent on padding."""
        embedded = self.dropout(self.item_embedding(items))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(output, batch_first=True, total_length=items.size(1))
        return hidden

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, n_items] from [n, hidden]; one fused multiply-add, so one catalogue-sized tensor per call."""
        projected = self.to_item_space(self.dropout(hidden))
        logits = torch.addmm(self.output_bias, projected, self.item_embedding.weight.T)
        logits[:, PADDING_ID] = float("-inf")
        return logits

    def forward(
        self, items: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every non-padding position ([n_positions, n_items]) and, given targets, the loss."""
        hidden = self.hidden_states(items, lengths)
        valid = torch.arange(items.size(1), device=items.device)[None, :] < lengths.to(items.device)[:, None]
        logits = self.item_logits(hidden[valid])
        loss = F.cross_entropy(logits, targets[valid]) if targets is not None else None
        return logits, loss

    def last_position_logits(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Next-item logits after each row's last item. The LSTM reads left to right, so the padding after
        that item cannot change its state: the batch runs unpacked, which is faster for the short inputs
        of ranking (packing pays off in training, where every position is scored)."""
        output, _ = self.lstm(self.dropout(self.item_embedding(items)))
        last = output[torch.arange(items.size(0)), lengths - 1]
        return self.item_logits(last)


def pad_batch(sequences: list[np.ndarray], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [batch, time] ids of each sequence's latest `max_length` items, and the lengths."""
    trimmed = [sequence[-max_length:] for sequence in sequences]
    lengths = torch.tensor([len(sequence) for sequence in trimmed], dtype=torch.long)
    items = torch.full((len(trimmed), int(lengths.max())), PADDING_ID, dtype=torch.long)
    for row, sequence in enumerate(trimmed):
        items[row, : len(sequence)] = torch.from_numpy(np.asarray(sequence, dtype=np.int64))
    return items, lengths


class LSTMRanker:
    """Ranks the next item for session prefixes with a trained LSTMRecommender."""

    name = "lstm"

    def __init__(self, model: LSTMRecommender, batch_size: int = 1024):
        self.model = model.eval()
        self.batch_size = batch_size
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def rank(self, prefixes: list[np.ndarray], k: int, exclude_seen: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item ids and their softmax probabilities for each prefix: two [n, k] arrays.

        With `exclude_seen`, the prefix's own items are not ranked; a row with fewer than k rankable
        items ends with the padding id 0 (callers drop it). Each batch is one forward pass, and the
        logits are the only catalogue-sized tensor: top-k is a partial selection, and the softmax
        normaliser is summed in place after it.
        """
        items_out, scores_out = [], []
        for start in range(0, len(prefixes), self.batch_size):
            items, lengths = pad_batch(prefixes[start : start + self.batch_size], self.model.config.max_length)
            items, lengths = items.to(self.device), lengths.to(self.device)
            logits = self.model.last_position_logits(items, lengths)
            if exclude_seen:
                logits.scatter_(1, items, float("-inf"))  # padding (id 0) is never ranked anyway
            top_logits, top_items = torch.topk(logits, k=min(k, logits.size(1) - 1), dim=-1)
            if exclude_seen:
                top_items[top_logits == float("-inf")] = PADDING_ID
            highest = top_logits[:, :1]
            normaliser = logits.sub_(highest).exp_().sum(dim=-1, keepdim=True)
            items_out.append(top_items.cpu().numpy())
            scores_out.append((top_logits - highest).exp_().div_(normaliser).cpu().numpy())
        if not items_out:
            return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
        return np.concatenate(items_out), np.concatenate(scores_out)
