"""The "vanilla LSTM" next-item recommender, in PyTorch.

Reads a session's items, and at every position scores every item of the catalogue as the next one.
The output layer reuses the item embeddings (weight tying, by default): an item's input and output vectors
live in one space, which halves the parameters. Untied output vectors (`tied_output=False`, in the search
space) ranked rare items' successors better at 38k items (test MRR@20 0.5227 against 0.5187, 4,096
negatives, bench/bench_model.py's 200k sessions). A linear map of the latest item's embedding, and a learned
vector of that item itself, are added to the LSTM's reading of the session, so that item-to-item transitions
need not pass through the recurrent state; and what followed the latest item in training, as frequencies, is
mixed with the LSTM's softmax by a gate read from the session's state. Training scores either the whole
catalogue (full softmax) or the targets against a shared sample of negatives (sampled softmax, see
`train.py`); `LSTMRanker` ranks with the same equations in NumPy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from postmodern.model.dataset import PADDING_ID
from postmodern.model.ranker import (
    Ranker,
    RankerState,
    top_of_candidates,
)

# From this many items, the product of a session's state with every output vector is most of the cost of ranking
# it in a serving pass (a few sessions): it reads the whole output layer from memory for each pass. Such passes take
# their candidates from an inverted-file index of the output vectors instead (`CandidateIndex`): the items of highest
# logit, which are then scored exactly, beside the latest item's pairs. Larger batches (evaluation) take the product,
# which BLAS runs at full speed on many rows.
CANDIDATE_INDEX_MIN_ITEMS = 16_384
CANDIDATE_PASS_MAX_ROWS = 32
RETRIEVED_CANDIDATES = 200
# The softmax's denominator over the items not scored exactly is estimated from a fixed sample of each of the index's
# lists (a stratified sample: a list near the query holds far more of the mass than one far away)
TAIL_SAMPLE_PER_LIST = 16


@dataclass
class LSTMConfig:
    n_items: int  # vocabulary size including the padding id 0
    embedding_dim: int = 128
    hidden_dim: int = 256
    dropout: float = 0.1
    max_length: int = 20  # longest input a prediction reads; longer sessions keep their latest items
    item_skip: bool = True  # add a linear map of the latest item's embedding to the output (see __init__)
    tied_output: bool = True  # score items with their input embeddings (weight tying) or with their own
    item_transitions: bool = True  # add a learned vector of the latest item itself (see __init__)
    item_pairs: bool = True  # mix in the latest item's transition frequencies in training (see __init__)
    attention: bool = True  # NARM's read-out: the latest state and an attention-weighted sum of all (see __init__)
    normalized_scale: float = 0.0  # > 0: NISER's unit-norm item and session vectors, cosines times this scale


class LSTMRecommender(nn.Module):
    def __init__(self, config: LSTMConfig, pair_counts: tuple[np.ndarray, np.ndarray] | None = None):
        """`pair_counts`: the training transitions mixed in with `item_pairs`, as `item_pair_counts` gives them;
        none by default."""
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(config.n_items, config.embedding_dim, padding_idx=PADDING_ID)
        self.dropout = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(config.embedding_dim, config.hidden_dim, batch_first=True)
        self.to_item_space = nn.Linear(config.hidden_dim, config.embedding_dim)
        # NARM's read-out (Li et al. 2017): besides the latest state, the states of the whole prefix weighted by
        # their relevance to it, v . sigmoid(A1 h_t + A2 h_j), unnormalised as in the paper; each maps into the
        # item space, where they add up
        self.attention = None
        if config.attention:
            self.attention = nn.ModuleDict(
                {
                    "query": nn.Linear(config.hidden_dim, config.hidden_dim, bias=False),
                    "key": nn.Linear(config.hidden_dim, config.hidden_dim, bias=False),
                    "energy": nn.Linear(config.hidden_dim, 1, bias=False),
                    "to_item_space": nn.Linear(config.hidden_dim, config.embedding_dim, bias=False),
                }
            )
        self.output_embedding = (
            None if config.tied_output else nn.Embedding(config.n_items, config.embedding_dim, padding_idx=PADDING_ID)
        )
        self.output_bias = nn.Parameter(torch.zeros(config.n_items))
        # item-to-item transitions straight from the latest item, beside the LSTM's reading of the session
        self.item_skip = nn.Linear(config.embedding_dim, config.embedding_dim) if config.item_skip else None
        # and a free vector per latest item (a factorised Markov chain, as in FPMC): a rare item's own
        # transitions need not fit the map shared by all items; zeros at first, so it starts as the model without
        self.item_transition = (
            nn.Embedding(config.n_items, config.embedding_dim, padding_idx=PADDING_ID)
            if config.item_transitions
            else None
        )
        if self.item_transition is not None:
            nn.init.zeros_(self.item_transition.weight)
        # and the latest item's transitions in training, as frequencies (a first-order Markov chain): mixed with the
        # LSTM's softmax by a gate read from the session's state, as Neubig and Dyer (2016) mix count-based and
        # neural language models. A rare item's few transitions are its strongest evidence, which vectors shared
        # with every other item smooth away, and in a mixture the LSTM's scores cannot reorder them. The frequencies
        # are the maximum of the pairs' own likelihood, reached exactly: a learned score per pair reached it slowly
        # (at 38k items, best validation MRR@20 in 8 epochs 0.5362 as a softmax mixed the same way, 0.5411 with the
        # frequencies).
        self.pair_gate = None
        if config.item_pairs:
            keys, counts = (np.empty(0, np.int64), np.empty(0, np.float32)) if pair_counts is None else pair_counts
            keys = torch.as_tensor(keys, dtype=torch.int64)
            counts = torch.as_tensor(counts, dtype=torch.float32)
            self.register_buffer("pair_keys", keys)
            self.register_buffer("pair_counts", counts)
            # the pairs as rows of a sparse matrix: latest item i's next items are pair_next[starts[i]:starts[i+1]]
            starts = torch.searchsorted(keys, torch.arange(config.n_items + 1) * config.n_items)
            self.register_buffer("pair_starts", starts, persistent=False)
            self.register_buffer("pair_next", keys % config.n_items, persistent=False)
            first_items = keys // config.n_items
            totals = counts.new_zeros(config.n_items).index_add(0, first_items, counts)
            self.register_buffer("pair_totals", totals, persistent=False)
            self.register_buffer("pair_frequencies", counts / totals[first_items], persistent=False)
            # the frequencies' weight in the mixture, read from the session's state: one half at first
            self.pair_gate = nn.Linear(config.embedding_dim, 1)
            nn.init.zeros_(self.pair_gate.weight)
            nn.init.zeros_(self.pair_gate.bias)
        for embedding in (self.item_embedding, self.output_embedding):
            if embedding is not None:
                nn.init.normal_(embedding.weight, std=0.05)

    @classmethod
    def from_state_dict(cls, config: LSTMConfig, state_dict: dict[str, torch.Tensor]) -> LSTMRecommender:
        """A trained model from its weights (its item pairs' counts are among them)."""
        pairs = (state_dict["pair_keys"], state_dict["pair_counts"]) if "pair_keys" in state_dict else None
        model = cls(config, pairs)
        model.load_state_dict(state_dict)
        return model

    @property
    def mixes_pairs(self) -> bool:
        """Whether the transition frequencies are mixed in: item pairs configured, and at least one seen in training."""
        return self.pair_gate is not None and len(self.pair_keys) > 0

    @property
    def output_weight(self) -> torch.Tensor:
        """[n_items, embedding_dim]: what a query is scored against (unit vectors, with `normalized_scale`)."""
        weight = (self.item_embedding if self.output_embedding is None else self.output_embedding).weight
        return F.normalize(weight, dim=-1) if self.config.normalized_scale else weight

    def states(self, items: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM outputs [batch, time, hidden] and input embeddings [batch, time, embedding]; packing means no
        LSTM compute is spent on padding."""
        embedded = self.item_embedding(items)
        if self.config.normalized_scale:
            embedded = F.normalize(embedded, dim=-1)
        embedded = self.dropout(embedded)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        hidden, _ = pad_packed_sequence(output, batch_first=True, total_length=items.size(1))
        return hidden, embedded

    def queries(
        self, hidden: torch.Tensor, embedded: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Session states in the item space, where an item's score is a dot product with its output vector (a
        cosine times the scale, with `normalized_scale`). `context`: the attention read-out of each state."""
        query = self.to_item_space(self.dropout(hidden))
        if context is not None:
            query = query + self.attention["to_item_space"](self.dropout(context))
        if self.item_skip is not None:
            query = query + self.item_skip(embedded)
        if self.item_transition is not None:
            query = query + self.item_transition(items)
        if self.config.normalized_scale:
            query = F.normalize(query, dim=-1) * self.config.normalized_scale
        return query

    def attention_context(self, hidden: torch.Tensor) -> torch.Tensor:
        """[batch, time, hidden]: for every position t, the sum over j <= t of v . sigmoid(A1 h_t + A2 h_j) h_j.
        Padding comes after a row's last position, so the causal mask also keeps it out."""
        query, key = self.attention["query"](hidden), self.attention["key"](hidden)
        energy = self.attention["energy"](torch.sigmoid(query[:, :, None, :] + key[:, None, :, :])).squeeze(-1)
        width = hidden.size(1)
        causal = torch.ones(width, width, dtype=torch.bool, device=hidden.device).tril()
        return energy.masked_fill(~causal, 0.0) @ hidden

    def forward(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The session state after every non-padding position, in the item space: [n_positions, embedding_dim],
        session by session. Only these positions reach the output layer."""
        hidden, embedded = self.states(items, lengths)
        real = real_positions(lengths.to(items.device), items.size(1))
        context = self.attention_context(hidden)[real] if self.attention is not None else None
        return self.queries(hidden[real], embedded[real], items[real], context)

    def item_logits(self, queries: torch.Tensor) -> torch.Tensor:
        """The LSTM's scores of the whole catalogue: [n, n_items], padding at -inf."""
        logits = queries @ self.output_weight.T + self.output_bias
        logits[..., PADDING_ID] = float("-inf")
        return logits

    def candidate_logits(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The LSTM's scores of some items only: [n, n_candidates] for candidates shared by every row."""
        return queries @ self.output_weight[candidates].T + self.output_bias[candidates]

    def target_logits(self, queries: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The LSTM's score of each row's own target: [n]."""
        return (queries * self.output_weight[targets]).sum(-1) + self.output_bias[targets]

    def log_probabilities(self, queries: torch.Tensor, latest: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the whole catalogue as the next item: [n, n_items]. `latest`: each row's latest item."""
        log_lstm = torch.log_softmax(self.item_logits(queries), dim=-1)
        if not self.mixes_pairs:
            return log_lstm
        log_gate, log_not_gate = self.gate_log_weights(queries, self.pair_totals[latest])
        rows, positions = pair_positions(self.pair_starts, latest)
        log_pairs = torch.log(self.pair_frequencies[positions])
        mixed = log_lstm + log_not_gate[:, None]
        items = self.pair_next[positions]
        from_pairs = torch.logaddexp(mixed[rows, items], log_gate[rows] + log_pairs)
        return mixed.index_put((rows, items), from_pairs)

    def mixed_log_probability(
        self, queries: torch.Tensor, latest: torch.Tensor, targets: torch.Tensor, log_lstm: torch.Tensor
    ) -> torch.Tensor:
        """Each target's log-probability [n] under the mixture, from its log-probability under the LSTM's softmax."""
        keys = latest * self.config.n_items + targets
        found_at = torch.searchsorted(self.pair_keys, keys).clamp(max=len(self.pair_keys) - 1)
        frequencies = torch.where(self.pair_keys[found_at] == keys, self.pair_frequencies[found_at], 0.0)
        log_gate, log_not_gate = self.gate_log_weights(queries, self.pair_totals[latest])
        log_pair = torch.log(frequencies)  # -inf where the target is not one of the pairs
        return torch.logaddexp(log_not_gate + log_lstm, log_gate + log_pair)

    def gate_log_weights(self, queries: torch.Tensor, totals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log of the frequencies' weight in the mixture, and of the LSTM's, per row: (-inf, 0) where the latest
        item's transitions counted (`totals`) are none."""
        gate = self.pair_gate(queries).squeeze(-1)
        has_pairs = totals > 0
        log_gate = torch.where(has_pairs, F.logsigmoid(gate), float("-inf"))
        return log_gate, torch.where(has_pairs, F.logsigmoid(-gate), 0.0)


def real_positions(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[batch, width] mask of the positions that are not padding."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def item_pair_counts(sessions: list[np.ndarray], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (item, next item) pairs of the sessions, sorted, each as item * n_items + next item, and how
    often each occurs."""
    sessions = [np.asarray(session, dtype=np.int64) for session in sessions if len(session) > 1]
    if not sessions:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    keys, counts = np.unique(
        np.concatenate([session[:-1] * n_items + session[1:] for session in sessions]), return_counts=True
    )
    return keys, counts.astype(np.float32)


def pair_positions(starts: torch.Tensor, latest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs that start with each row's latest item: their rows, and their positions in the pair table
    (row r's run from starts[latest[r]] to starts[latest[r] + 1])."""
    first = starts[latest]
    counts = starts[latest + 1] - first
    rows = torch.repeat_interleave(torch.arange(len(latest), device=latest.device), counts)
    # each row's first position, less where its run begins among all the rows' runs, plus the running count
    run_offset = torch.repeat_interleave(first - (torch.cumsum(counts, 0) - counts), counts)
    return rows, run_offset + torch.arange(len(rows), device=latest.device)


def padded_items(sequences: list[np.ndarray], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded [batch, time] ids of each sequence's latest `max_length` items, and the lengths."""
    trimmed = [np.asarray(sequence, dtype=np.int64)[-max_length:] for sequence in sequences]
    lengths = [len(sequence) for sequence in trimmed]
    items = np.full((len(trimmed), max(lengths)), PADDING_ID, dtype=np.int64)
    for row, sequence in enumerate(trimmed):
        items[row, : len(sequence)] = sequence
    return items, np.array(lengths, dtype=np.int64)


def pad_batch(sequences: list[np.ndarray], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`padded_items` as tensors, for training."""
    items, lengths = padded_items(sequences, max_length)
    return torch.from_numpy(items), torch.from_numpy(lengths)


class LSTMRanker(Ranker):
    """Ranks the next item for session prefixes with a trained LSTMRecommender: the one ranking function
    of evaluation and serving.

    It computes the model's equations (nn.LSTM's gates i, f, g, o, the attention read-out, the skip from the latest
    item, the output layer, the softmax, then the mixture with the latest item's pairs) on a NumPy copy of the
    weights. At serving sizes, one short session per request, torch's per-operation dispatch costs several times
    the arithmetic (about 1 ms per request through the torch modules against 0.3 ms here, same rankings: the tests
    compare the two). Each batch is one pass; the probabilities are the only catalogue-sized array, computed in
    place; top-k is a partial selection (argpartition).

    Creating a ranker sets NumPy's BLAS to one thread for the process (torch's threads are its own): these
    products are small, and a second BLAS thread mostly waits for the first, several times slower on
    evaluation batches on a 2-core machine. Setting it per call would cost more than ranking one session.
    """

    name = "lstm"

    def __init__(self, model: LSTMRecommender, train_counts: np.ndarray):
        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)

        super().__init__(train_counts, asdict(model.config))
        self.model = model
        config = model.config
        lstm = model.lstm
        hidden_dim = config.hidden_dim
        self.max_length = config.max_length
        self.hidden_dim = hidden_dim
        self.scale = config.normalized_scale
        self.item_embedding = array(model.item_embedding.weight)  # [n_items, embedding]
        if self.scale:
            self.item_embedding = unit_rows(self.item_embedding)
        # sigmoid(x) = (1 + tanh(x / 2)) / 2: with the columns of gates i, f and o halved, one tanh per step
        # serves all four gates (g, the candidate, is a plain tanh)
        halve = np.full(4 * hidden_dim, 0.5, dtype=np.float32)
        halve[2 * hidden_dim : 3 * hidden_dim] = 1.0
        # Each item's input to the gates, computed once for the catalogue: a step reads one row instead of a
        # product with the input weights (n_items * 16 * hidden bytes: 19 MB for 4,500 items at hidden 256)
        input_weights = array(lstm.weight_ih_l0.T) * halve  # [embedding, 4 * hidden]
        gate_bias = array(lstm.bias_ih_l0 + lstm.bias_hh_l0) * halve
        self.item_gates = self.item_embedding @ input_weights + gate_bias  # [n_items, 4 * hidden]
        self.hidden_weights = torch.from_numpy(array(lstm.weight_hh_l0.T) * halve)  # [hidden, 4 * hidden]
        self.to_item_space = array(model.to_item_space.weight.T)  # [hidden, embedding]
        self.to_item_space_bias = array(model.to_item_space.bias)
        self.attention = None
        if model.attention is not None:
            self.attention = {name: array(layer.weight.T) for name, layer in model.attention.items()}
        self.item_skip = None if model.item_skip is None else array(model.item_skip.weight.T)  # [embedding, embedding]
        self.item_skip_bias = None if model.item_skip is None else array(model.item_skip.bias)
        self.item_transition = None if model.item_transition is None else array(model.item_transition.weight)
        self.mixes_pairs = model.mixes_pairs
        if self.mixes_pairs:
            self.pair_starts = model.pair_starts.cpu().numpy()
            self.pair_next = model.pair_next.cpu().numpy()
            self.pair_frequencies = array(model.pair_frequencies)
            self.pair_gate = array(model.pair_gate.weight[0])  # [embedding]
            self.pair_gate_bias = float(model.pair_gate.bias.item())
        # The output vectors as columns: OpenBLAS is up to 7 times slower on the transposed view for batches
        # of 2 to 64 rows (and no faster on the others).
        self.output_columns = np.ascontiguousarray(array(model.output_weight).T)  # [embedding, n_items]
        self.output_bias = array(model.output_bias)
        self.output_bias[PADDING_ID] = -np.inf
        self.output_rows = None
        self._candidate_index: CandidateIndex | None = None
        if self.n_items >= CANDIDATE_INDEX_MIN_ITEMS:
            # the vectors as rows too, to score candidates: gathering 200 rows costs a fifteenth of 200 columns
            self.output_rows = array(model.output_weight)  # [n_items, embedding]
        threadpool_limits(limits=1, user_api="blas")

    def state(self) -> RankerState:
        arrays = {name: tensor.detach().cpu().numpy() for name, tensor in self.model.state_dict().items()}
        return RankerState(self.name, asdict(self.model.config), {"train_counts": self.train_counts, **arrays})

    def lstm_states(self, items: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """[batch, hidden] LSTM state after each row's last item, and with the attention read-out every row's states
        [batch, time, hidden] (zeros past its end). Rows run longest first, and a row leaves the batch when its
        items end: no work is spent on padding (as packing does in torch)."""
        h = self.hidden_dim
        if len(items) > 1:
            order = (-lengths).argsort(kind="stable")
            items, lengths = items[order], lengths[order]
        input_gates = self.item_gates[items]  # padding's rows too: a step reads only the rows still going
        last = np.empty((len(items), h), dtype=np.float32)
        every = np.zeros((len(items), items.shape[1], h), dtype=np.float32) if self.attention is not None else None
        # The first step starts from zero state: no recurrent product, and the cell is just i * g.
        activated = np.tanh(input_gates[:, 0])
        gates = activated * 0.5 + 0.5  # i, f, o as sigmoids (their inputs were halved)
        cell = gates[:, :h] * activated[:, 2 * h : 3 * h]
        hidden = gates[:, 3 * h :] * np.tanh(cell)
        if every is not None:
            every[:, 0] = hidden
        going_per_step = (lengths[:, None] > np.arange(1, items.shape[1])).sum(axis=0).tolist()
        for step, going in enumerate(going_per_step, start=1):
            if going < len(hidden):  # rows whose items ended at the previous step
                last[going : len(hidden)] = hidden[going:]
                hidden, cell = hidden[:going], cell[:going]
            activated = np.tanh(input_gates[:going, step] + times(hidden, self.hidden_weights))
            gates = activated * 0.5 + 0.5
            cell = gates[:, h : 2 * h] * cell + gates[:, :h] * activated[:, 2 * h : 3 * h]
            hidden = gates[:, 3 * h :] * np.tanh(cell)
            if every is not None:
                every[:going, step] = hidden
        last[: len(hidden)] = hidden
        if len(items) == 1:
            return last, every
        in_given_order = np.empty_like(last)
        in_given_order[order] = last
        if every is not None:
            every_in_order = np.empty_like(every)
            every_in_order[order] = every
            every = every_in_order
        return in_given_order, every

    def attention_context(self, last: np.ndarray, every: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """[batch, hidden]: the attention read-out of each row's last state over its states (as the torch model)."""
        attention = self.attention
        query = last @ attention["query"]
        activation = every @ attention["key"] + query[:, None, :]
        energy = (0.5 + 0.5 * np.tanh(0.5 * activation)) @ attention["energy"][:, 0]  # sigmoid, then v
        energy[np.arange(every.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return np.einsum("bt,bth->bh", energy, every)

    def probabilities(self, prefixes: list[np.ndarray]) -> np.ndarray:
        """[batch, n_items] next-item probabilities after each (non-empty) prefix's last item; padding is 0."""
        queries, latest = self.queries(prefixes)
        return self.mixture(queries @ self.output_columns, queries, latest)

    def queries(self, prefixes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """[batch, embedding] each session's state in the item space, and [batch] its latest item."""
        items, lengths = padded_items(prefixes, self.max_length)
        last, every = self.lstm_states(items, lengths)
        in_item_space = last @ self.to_item_space + self.to_item_space_bias
        if self.attention is not None:
            in_item_space += self.attention_context(last, every, lengths) @ self.attention["to_item_space"]
        latest = items[np.arange(len(items)), lengths - 1]
        if self.item_skip is not None:
            in_item_space += self.item_embedding[latest] @ self.item_skip + self.item_skip_bias
        if self.item_transition is not None:
            in_item_space += self.item_transition[latest]
        if self.scale:
            in_item_space = unit_rows(in_item_space) * self.scale
        return in_item_space, latest

    def mixture(self, products: np.ndarray, queries: np.ndarray, latest: np.ndarray) -> np.ndarray:
        """The probabilities from the products of the queries with the output vectors, in place: the softmax, mixed
        with the latest item's pairs."""
        logits = products
        logits += self.output_bias
        logits -= logits.max(axis=1)[:, None]  # exp cannot overflow
        probabilities = np.exp(logits, out=logits)
        denominators = probabilities.sum(axis=1)
        gates = self.pair_gates(queries, latest)
        if not self.mixes_pairs:
            probabilities /= denominators[:, None]
            return probabilities
        probabilities *= ((1.0 - gates) / denominators)[:, None]
        begins, ends = self.pair_starts[latest], self.pair_starts[latest + 1]
        for row, (begin, end) in enumerate(zip(begins.tolist(), ends.tolist(), strict=True)):
            if end > begin:
                probabilities[row, self.pair_next[begin:end]] += self.pair_frequencies[begin:end] * gates[row]
        return probabilities

    def pair_gates(self, queries: np.ndarray, latest: np.ndarray) -> np.ndarray:
        """[batch] the weight of the latest item's pairs in the mixture (0 where it has none, or no pairs at all)."""
        if not self.mixes_pairs:
            return np.zeros(len(latest), dtype=np.float32)
        gate_logits = queries @ self.pair_gate + self.pair_gate_bias
        has_pairs = self.pair_starts[latest + 1] > self.pair_starts[latest]
        return np.where(has_pairs, 1.0 / (1.0 + np.exp(-gate_logits)), 0.0).astype(np.float32)

    @property
    def candidate_index(self) -> CandidateIndex:
        """The output vectors' index, made on first use (a serving model's warm-up ranking makes it)."""
        if self._candidate_index is None:
            # sample queries: the states after one item, of the most popular and of others
            rng = np.random.default_rng(0)
            items = np.concatenate([np.arange(1, 257), rng.integers(257, self.n_items, size=256)])
            queries, _ = self.queries([items[i : i + 1] for i in range(len(items))])
            self._candidate_index = CandidateIndex(self.output_rows, self.output_bias, queries, RETRIEVED_CANDIDATES)
        return self._candidate_index

    def candidate_pass(self, prefixes: list[np.ndarray], k: int) -> CandidatePass | None:
        """For a serving pass at a large catalogue (a few prefixes, a large product's worth of items): the prefixes'
        states, their retrieved candidates and their logits of the tail sample. None for other batches."""
        if self.output_rows is None or len(prefixes) > CANDIDATE_PASS_MAX_ROWS or 2 * k > RETRIEVED_CANDIDATES:
            return None
        queries, latest = self.queries(prefixes)
        retrieved = self.candidate_index.search(queries, RETRIEVED_CANDIDATES)
        tail_logits = self.candidate_index.tail_logits(queries)
        return CandidatePass(self, prefixes, queries, latest, self.pair_gates(queries, latest), retrieved, tail_logits)

    def rank_known(self, prefixes: list[np.ndarray], k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        """`rank`: from the whole catalogue's probabilities, or for a serving pass at a large catalogue from each
        row's candidates (`candidate_pass`)."""
        ranked = self.candidate_pass(prefixes, k)
        if ranked is None:
            return super().rank_known(prefixes, k, exclude_seen)
        top_items = np.full((len(prefixes), k), PADDING_ID, dtype=np.int64)
        top_scores = np.zeros((len(prefixes), k), dtype=np.float32)
        for row, prefix in enumerate(prefixes):
            items = ranked.candidates(row)
            probabilities = ranked.probabilities(row, items)
            top_items[row], top_scores[row] = top_of_candidates(items, probabilities, prefix, k, exclude_seen, 1.0)
        return top_items, top_scores


class CandidateIndex:
    """The items of highest logit (a query's product with an output vector, plus the item's bias) for a few queries,
    from faiss's inverted-file index by inner product: the vectors, each with its bias appended, are clustered around
    about sqrt(n) centroids, and a query reads only the lists of its best centroids. How many lists a query reads is
    chosen when the index is made, on sample queries, as the fewest (doubling from a sixteenth) whose items hold
    `CALIBRATION_RECALL` of the exact top 40: how far a model's vectors cluster is its own. The items that come back
    are scored again exactly."""

    CALIBRATION_RECALL = 0.995
    CALIBRATION_TOP = 40

    def __init__(self, rows: np.ndarray, bias: np.ndarray, sample_queries: np.ndarray, count: int):
        import faiss

        vectors = np.ascontiguousarray(np.hstack([rows[1:], bias[1:, None]]), dtype=np.float32)  # not the padding
        lists = max(1, round(np.sqrt(len(vectors))))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], lists,
                                        faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        self._single_threaded = faiss.omp_set_num_threads
        self._single_threaded(1)
        self.index.train(vectors)
        self.index.add(vectors)
        # each item's list (the padding's: none), each list's size, and the tail sample: a few items of each list
        _, assigned = self.index.quantizer.search(vectors, 1)
        self.item_lists = np.concatenate([[lists], assigned[:, 0]])
        self.list_sizes = np.bincount(assigned[:, 0], minlength=lists + 1)
        rng = np.random.default_rng(0)
        members = np.split(np.argsort(assigned[:, 0], kind="stable") + 1, np.cumsum(self.list_sizes[:lists])[:-1])
        self.tail_items = np.sort(np.concatenate([
            rng.choice(items, min(len(items), TAIL_SAMPLE_PER_LIST), replace=False) for items in members
        ]))  # fmt: skip
        self.tail_lists = self.item_lists[self.tail_items]
        self.tail_columns = np.ascontiguousarray(rows[self.tail_items].T)
        self.tail_bias = bias[self.tail_items]
        logits = self.with_bias(sample_queries) @ vectors.T
        best = np.argpartition(-logits, self.CALIBRATION_TOP, axis=1)[:, : self.CALIBRATION_TOP] + 1
        self.index.nprobe = max(1, lists // 16)
        while self.index.nprobe < lists and self.recall(sample_queries, best, count) < self.CALIBRATION_RECALL:
            self.index.nprobe = min(lists, 2 * self.index.nprobe)

    def recall(self, queries: np.ndarray, best: np.ndarray, count: int) -> float:
        """The share of each query's `best` items among the `count` it retrieves."""
        retrieved = self.search(queries, count)
        return float(np.mean([np.isin(b, r).mean() for b, r in zip(best, retrieved, strict=True)]))

    @staticmethod
    def with_bias(queries: np.ndarray) -> np.ndarray:
        return np.hstack([queries, np.ones((len(queries), 1), dtype=np.float32)])

    def tail_logits(self, queries: np.ndarray) -> np.ndarray:
        """[batch, tail sample] the logits of the tail sample's items."""
        return queries @ self.tail_columns + self.tail_bias

    def tail_sum(self, items: np.ndarray, tail_logits: np.ndarray, shift: float) -> float:
        """The softmax's terms (exp(logit - shift)) summed over the items not in `items` (sorted, distinct, no
        padding), estimated list by list: the list's items less those, times the mean term of its sampled ones."""
        at = np.minimum(np.searchsorted(items, self.tail_items), len(items) - 1)
        outside = items[at] != self.tail_items
        lists = self.tail_lists[outside]
        sampled = np.bincount(lists, np.exp(tail_logits[outside] - shift), minlength=len(self.list_sizes))
        counts = np.bincount(lists, minlength=len(self.list_sizes))
        unscored = self.list_sizes - np.bincount(self.item_lists[items], minlength=len(self.list_sizes))
        return float((unscored * sampled / np.maximum(counts, 1)).sum())

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        """[batch, count] item ids, best first; -1 where fewer are found."""
        self._single_threaded(1)  # OpenMP's thread count is the calling thread's own
        _, positions = self.index.search(self.with_bias(queries), count)
        return np.where(positions >= 0, positions + 1, -1)


@dataclass
class CandidatePass:
    """`LSTMRanker.candidate_pass`: what scoring a row's candidates exactly takes."""

    _scales: dict[int, tuple[float, float]] = field(init=False, repr=False)

    ranker: LSTMRanker
    prefixes: list[np.ndarray]
    queries: np.ndarray
    latest: np.ndarray
    gates: np.ndarray
    retrieved: np.ndarray
    tail_logits: np.ndarray

    def __post_init__(self) -> None:
        self._scales = {}  # a row's shift and softmax denominator, once scored

    def candidates(self, row: int, whole: bool = False) -> np.ndarray:
        """The row's items worth scoring, sorted and distinct: those retrieved, the latest item's pairs, and the
        prefix's own (whose share `exclude_seen` takes away)."""
        ranker = self.ranker
        found = [self.retrieved[row], self.prefixes[row]]
        if ranker.mixes_pairs:
            latest = self.latest[row]
            found.append(ranker.pair_next[ranker.pair_starts[latest] : ranker.pair_starts[latest + 1]])
        items = np.unique(np.concatenate(found))
        return items[items > PADDING_ID]

    def probabilities(self, row: int, items: np.ndarray) -> np.ndarray:
        """The model's probabilities of `items` (sorted, distinct, no padding) as the next item of the row's prefix.
        The softmax's denominator sums these items' terms exactly, and estimates the rest's from the tail sample."""
        ranker, query = self.ranker, self.queries[row]
        logits = ranker.output_bias[items] + ranker.output_rows[items] @ query
        tail_logits = self.tail_logits[row]
        shift = max(float(logits.max()), float(tail_logits.max()))
        terms = np.exp(logits - shift)
        tail = ranker.candidate_index.tail_sum(items, tail_logits, shift)
        gate = float(self.gates[row])
        self._scales[row] = shift, float(terms.sum() + tail)
        probabilities = terms * ((1.0 - gate) / self._scales[row][1])
        if ranker.mixes_pairs:
            latest = self.latest[row]
            pairs = slice(ranker.pair_starts[latest], ranker.pair_starts[latest + 1])
            probabilities[np.searchsorted(items, ranker.pair_next[pairs])] += ranker.pair_frequencies[pairs] * gate
        return probabilities

    def bound(self, row: int) -> float:
        """The probability of the retrieved item of lowest logit, as `probabilities` last scaled the row: an item not
        retrieved has a lower logit (as far as the index finds the best), and is no pair of the latest item."""
        retrieved = self.retrieved[row][self.retrieved[row] > PADDING_ID]
        ranker = self.ranker
        lowest = float((ranker.output_bias[retrieved] + ranker.output_rows[retrieved] @ self.queries[row]).min())
        shift, denominator = self._scales[row]
        return (1.0 - float(self.gates[row])) * float(np.exp(lowest - shift)) / denominator

    def total(self, row: int) -> float:
        return 1.0


def times(rows: np.ndarray, matrix: torch.Tensor) -> np.ndarray:
    """rows @ matrix by torch's BLAS: for the few rows of a serving pass a quarter to a half of OpenBLAS's time
    (15 against 58 us for 4 x 256 by 256 x 1024), which runs each step of the recurrence."""
    return torch.mm(torch.from_numpy(rows), matrix).numpy()


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its norm (as torch's F.normalize, rows of zeros stay zeros)."""
    return matrix / np.maximum(np.linalg.norm(matrix, axis=-1, keepdims=True), 1e-12)
