from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from postmodern.evaluation.metrics import next_item_cases
from postmodern.model.dataset import (
    UNKNOWN_ID,
    SplitConfig,
    Vocabulary,
    collapse_consecutive_repeats,
    parse_instant,
    prepare_splits,
    refit_splits,
    split_config,
)


def mart(sessions):
    """A session-mart table: one row per (start offset in hours, SKU list)."""
    base = datetime(2019, 1, 1)
    return pa.table(
        {
            "session_start_at": pa.array([base + timedelta(hours=h) for h, _ in sessions], pa.timestamp("us")),
            "interactions": pa.array([items for _, items in sessions], pa.list_(pa.string())),
        }
    )


def test_split_is_by_time_and_unknown_items_stay_in_test_as_misses_to_count():
    sessions = [(h, ["a", "b", "c"]) for h in range(8)]  # training
    sessions += [(8, ["a", "b"])]  # validation
    sessions += [(9, ["a", "new", "c"]), (10, ["new", "b"])]  # test: 'new' was never trained on
    splits = prepare_splits(mart(sessions[::-1]), SplitConfig(validation_share=1 / 9, test_share=2 / 11))
    vocabulary = splits.vocabulary
    assert sorted(vocabulary.skus) == ["a", "b", "c"]
    assert len(splits.train) == 8
    assert [vocabulary.decode(s) for s in splits.validation] == [["a", "b"]]
    a, b, c = (vocabulary.encode([sku])[0][0] for sku in "abc")
    assert [s.tolist() for s in splits.test] == [[a, UNKNOWN_ID, c], [UNKNOWN_ID, b]]
    assert splits.train_counts[a] == 8
    stats = splits.stats()
    assert stats["test_cases"] == 3 and stats["test_cases_unknown_target"] == 1
    # every case counts: an unknown target is a miss to be; a prefix holds the known items only
    cases = next_item_cases(splits.test)
    assert cases.targets.tolist() == [UNKNOWN_ID, c, b]
    assert [prefix.tolist() for prefix in cases.prefixes] == [[a], [a], []]


def test_a_published_split_starts_the_test_set_at_an_instant_and_keeps_repeats():
    sessions = [(h, ["a", "a", "b"]) for h in range(10)]
    config = SplitConfig(test_from=datetime(2019, 1, 1, 8, tzinfo=UTC), validation_share=0.25, collapse_repeats=False)
    splits = prepare_splits(mart(sessions), config)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (6, 2, 2)
    assert splits.boundaries["test_from"].startswith("2019-01-01T08") and all(len(s) == 3 for s in splits.train)
    refit = refit_splits(mart(sessions), config)
    assert (len(refit.train), len(refit.validation), len(refit.test)) == (8, 0, 2)
    assert refit.train_counts[refit.vocabulary.encode(["a"])[0][0]] == 16
    with pytest.raises(ValueError, match="too few"):
        prepare_splits(mart(sessions), SplitConfig(test_from=datetime(2020, 1, 1, tzinfo=UTC)))


def test_the_refit_vocabulary_knows_the_items_first_seen_in_validation():
    sessions = [(h, ["a", "b"]) for h in range(8)] + [(8, ["a", "late"]), (9, ["late", "b"])]
    config = SplitConfig(validation_share=1 / 9, test_share=0.1)
    assert "late" not in prepare_splits(mart(sessions), config).vocabulary.skus
    refit = refit_splits(mart(sessions), config)
    assert "late" in refit.vocabulary.skus and UNKNOWN_ID not in refit.test[0]


def test_instants_are_epoch_milliseconds_or_iso_text():
    assert parse_instant("1453632070000") == datetime(2016, 1, 24, 10, 41, 10, tzinfo=UTC)
    assert parse_instant("2016-01-24T10:41:10") == parse_instant("2016-01-24T11:41:10+01:00")
    assert split_config("2016-01-24", keep_repeats=True) == SplitConfig(
        test_from=datetime(2016, 1, 24, tzinfo=UTC), collapse_repeats=False
    )
    assert split_config() == SplitConfig()
    with pytest.raises(ValueError, match="neither epoch milliseconds nor an ISO 8601"):
        parse_instant("last tuesday")


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
