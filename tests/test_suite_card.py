"""The test_model card: what it says, and that it renders as a real page in headless Chromium."""

import json

import numpy as np
import pytest
from chromium import card_html, render
from metaflow.cards import Markdown, Table, VegaChart

from postmodern.evaluation.suite_card import suite_card_components


@pytest.fixture(scope="module")
def components(evaluation_against_deployed, suite_data):
    """The card of an (untrained) LSTM against popularity and the deployed copy of itself: blocked."""
    splits, _ = suite_data
    evaluation = evaluation_against_deployed
    return suite_card_components(evaluation, splits.stats()), evaluation


def test_the_card_leads_with_the_comparison_and_the_verdict(components):
    parts, evaluation = components
    texts = [part.render()["source"] for part in parts if isinstance(part, Markdown)]
    lstm = evaluation.report.metrics("lstm")["mrr@20"]
    popularity = evaluation.report.metrics("popularity")["mrr@20"]
    assert texts[0].startswith("# Behavioural tests of `lstm`")
    assert f"**lstm MRR@20 {lstm:.4f}**" in texts[0]
    assert f"best other family **popularity** {popularity:.4f} ({lstm / popularity - 1:+.1%})" in texts[0]
    assert "**deployed** model" in texts[0] and "(+0.0%)" in texts[0]  # the same weights
    assert "Deployment gate: **BLOCKED**" in texts[1] and "the previous model keeps serving" in texts[1]
    assert "- **FAIL** beats deployed on MRR@20" in texts[1]
    # the verdict says which family won on validation, by how much, and how it fares on test and its slices
    assert "Champion: lstm (hidden_dim=16), validation MRR@20 0.2500, +0.2000 over popularity (0.0500)" in texts[1]
    assert f"on test MRR@20 {lstm:.4f} against {popularity:.4f}" in texts[1] and "slice(s) (" in texts[1]


def test_the_metrics_table_has_every_ranker_on_every_summary_metric(components):
    parts, evaluation = components
    table = next(part.render() for part in parts if isinstance(part, Table))
    assert table["columns"] == ["metric", "lstm", "popularity", "deployed"]
    rows = {row[0]: row[1:] for row in table["data"]}
    for name in ("hr@1", "ndcg@20", "last_mrr@10", "subsequent/f1@20", "coverage", "robustness/swap two items"):
        assert name in rows
    assert not any(name.startswith("hr_by_") for name in rows)  # slices are charted
    assert rows["mrr@20"][1] == f"{evaluation.report.metrics('popularity')['mrr@20']:.4f}"


def test_the_charts_are_plain_vega_lite_with_every_ranker(components):
    parts, _ = components
    specs = [part.render()["spec"] for part in parts if isinstance(part, VegaChart)]
    assert len(specs) == 6
    for spec in specs[:-1]:  # the last is the choice: validation and test by family
        json.dumps(spec, allow_nan=False)
        assert {row["ranker"] for row in spec["data"]["values"]} == {"lstm", "popularity", "deployed"}
    choice = specs[-1]["data"]["values"]
    assert {(row["family"], row["split"][:4]) for row in choice} == {
        (family, split) for family in ("lstm", "popularity") for split in ("vali", "test")
    }
    assert specs[-1]["encoding"]["x"]["sort"] == ["lstm", "popularity"]
    k_curves = specs[0]["data"]["values"]
    assert {row["test"] for row in k_curves} == {"hr", "mrr", "ndcg", "last_hr", "last_mrr", "last_ndcg"}
    assert sorted({row["k"] for row in k_curves}) == [1, 5, 10, 20]
    slices = specs[1]["data"]["values"]
    assert {row["panel"] for row in slices} == {
        "target's popularity",
        "items seen before",
        "target's top category",
        "target's price bucket",
    }
    assert all(row["cases"] > 0 for row in slices)


def test_the_card_renders_in_chromium_with_every_chart_drawn(components, tmp_path):
    parts, _ = components
    page = render(card_html(parts), tmp_path)
    assert page.script_errors == [] and page.console_errors == []
    assert page.charts == 6 and page.drawn_charts == 6
    assert "Behavioural tests of" in page.dom and "BLOCKED" in page.dom  # the Markdown was rendered too


def test_the_render_check_catches_script_errors_and_undrawn_charts(tmp_path):
    broken = VegaChart({"mark": "bar", "data": {"values": [{"a": 1}]}, "encoding": {"x": {"field": "a", "type": "?"}}})
    empty = VegaChart({"mark": "bar", "data": {"values": []}, "encoding": {"x": {"field": "a", "type": "nominal"}}})
    page = render(card_html([Markdown("# x"), broken, empty]), tmp_path)
    assert any("Invalid field type" in line for line in page.console_errors)  # the invalid spec draws nothing
    assert page.charts == 1 and page.drawn_charts == 0  # the chart without data has no mark
    thrown = card_html([Markdown("# x")]).replace("</body>", "<script>notDefined()</script></body>")
    assert any("notDefined" in error for error in render(thrown, tmp_path / "again").script_errors)


def test_the_data_table_counts_the_cases(components):
    parts, evaluation = components
    table = [part.render() for part in parts if isinstance(part, Table)][-1]
    assert ["cases", f"{evaluation.report.dataset['cases']:,}"] in table["data"]
    assert np.isfinite(evaluation.report.metrics("lstm")["hr@20"])
