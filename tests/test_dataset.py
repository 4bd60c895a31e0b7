from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from postmodern.model.dataset import SplitConfig, Vocabulary, collapse_consecutive_repeats, prepare_splits


def mart(sessions):
    """A session-mart table: one row per (start offset in hours, SKU list)."""
    base = datetime(2019, 1, 1)
    return pa.table(
        {
            "session_start_at": pa.array([base + timedelta(hours=h) for h, _ in sessions], pa.timestamp("us")),
            "interactions": pa.array([items for _, items in sessions], pa.list_(pa.string())),
        }
    )


def test_split_is_by_time_and_unknown_items_are_removed_from_test():
    sessions = [(h, ["a", "b", "c"]) for h in range(8)]  # training
    sessions += [(8, ["a", "b"])]  # validation
    sessions += [(9, ["a", "new", "c"]), (10, ["new", "b"])]  # test: 'new' was never trained on
    splits = prepare_splits(mart(sessions[::-1]), SplitConfig(validation_share=1 / 11, test_share=2 / 11))
    vocabulary = splits.vocabulary
    assert sorted(vocabulary.skus) == ["a", "b", "c"]
    assert len(splits.train) == 8
    assert [vocabulary.decode(s) for s in splits.validation] == [["a", "b"]]
    # ["new", "b"] is left with one item and dropped; ["a", "new", "c"] keeps a, c
    assert [vocabulary.decode(s) for s in splits.test] == [["a", "c"]]
    assert splits.train_counts[vocabulary.encode(["a"])[0][0]] == 8


def test_consecutive_repeats_collapse():
    assert collapse_consecutive_repeats(["a", "a", "b", "a", "a"]) == ["a", "b", "a"]
    splits = prepare_splits(mart([(h, ["a", "a", "b"]) for h in range(10)]))
    assert all(len(s) == 2 for s in splits.train)


def test_vocabulary_is_ordered_by_popularity_and_reports_unknowns():
    vocabulary = Vocabulary(["x", "y"])
    assert vocabulary.encode(["y", "zzz", "x"]) == ([2, 1], ["zzz"])
    assert vocabulary.decode(np.array([1, 2])) == ["x", "y"]
    assert vocabulary.size_with_padding == 3


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        prepare_splits(mart([]))
    with pytest.raises(ValueError, match="too few"):
        prepare_splits(mart([(0, ["a", "b"]), (1, ["a", "b"])]))
