"""The `test_model` card: the suite's report and the gate's verdict as a page a person reads before a
model serves. Plain functions returning Metaflow card components (and plain Vega-Lite specs), so they
are tested like any code and rendered in headless Chromium by the tests."""

from __future__ import annotations

import math

from metaflow.cards import Markdown, Table, VegaChart

from postmodern.evaluation.gate import DeploymentEvaluation, GateVerdict
from postmodern.evaluation.suite import RecTestResult, SuiteReport
from postmodern.model.champion import Selection

VEGA_LITE = "https://vega.github.io/schema/vega-lite/v5.json"
DEPLOYED = "deployed"
SLICE_TITLES = {
    "hr_by_popularity": "target's popularity",
    "hr_by_session_length": "items seen before",
    "hr_by_category": "target's top category",
    "hr_by_price_bucket": "target's price bucket",
}


def others(report: SuiteReport) -> list[str]:
    """The rankers compared with the candidate, but the deployed model."""
    return [name for name in report.rankers if name not in (report.candidate, DEPLOYED)]


def _number(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "–"


def _relative(value: float, reference: float) -> str:
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return "n/a"
    return f"{value / reference - 1:+.1%}"


def headline(report: SuiteReport, metric: str, deployed_note: str) -> str:
    """The candidate against the best other family and the deployed model on the gate's metric."""
    value = report.metrics(report.candidate)[metric]
    parts = [f"**{report.candidate} {metric.upper()} {_number(value)}**"]
    compared = others(report)
    if compared:
        best = max(compared, key=lambda name: report.metrics(name)[metric])
        reference = report.metrics(best)[metric]
        parts.append(f"best other family **{best}** {_number(reference)} ({_relative(value, reference)})")
    if DEPLOYED in report.rankers:
        reference = report.metrics(DEPLOYED)[metric]
        parts.append(f"**deployed** model {_number(reference)} ({_relative(value, reference)})")
    data = report.dataset
    return (
        f"# Behavioural tests of `{report.candidate}`\n\n"
        + " · ".join(parts)
        + f"\n\n{data['cases']:,} next-item cases ({data['last_item_cases']:,} last-item) from "
        f"{data['sessions']:,} test sessions; cut-off k = {data['k']}. {deployed_note[:1].upper()}{deployed_note[1:]}."
    )


def verdict_markdown(verdict: GateVerdict) -> str:
    if verdict.passed:
        title = "## Deployment gate: **PASSED**: this model is deployed"
    else:
        title = "## Deployment gate: **BLOCKED**: this model is not deployed; the previous model keeps serving"
    checks = "\n".join(
        f"- **{'pass' if check.passed else 'FAIL'}** {check.name}: {check.detail}" for check in verdict.checks
    )
    note = f"{verdict.note[:1].upper()}{verdict.note[1:]}.\n\n" if verdict.note else ""
    return f"{title}\n\n{note}{checks}"


def metrics_table(report: SuiteReport) -> Table:
    """Every number of the scalar, curve and bar tests (slices and histograms are charted), by ranker."""
    rows = []
    for result in report.tests:
        if result.display == "histogram" or result.name in SLICE_TITLES:
            continue
        names = list(result.flat(report.candidate))
        for name in names:
            rows.append([name, *(_number(report.metrics(ranker)[name]) for ranker in report.rankers)])
    return Table(rows, headers=["metric", *report.rankers])


def _long_rows(result: RecTestResult, rankers: list[str], key: str) -> list[dict]:
    return [
        {"ranker": ranker, key: label, "value": value, "test": result.name}
        for ranker in rankers
        for label, value in result.values[ranker].items()
        if math.isfinite(value)
    ]


def k_curves_spec(report: SuiteReport) -> dict:
    """Accuracy against the cut-off k, one panel per metric, one line per ranker."""
    curves = [result for result in report.tests if result.display == "curve"]
    ks = sorted({int(k) for result in curves for k in result.values[report.candidate]})
    rows = [{**row, "k": int(row["k"])} for result in curves for row in _long_rows(result, report.rankers, "k")]
    return {
        "$schema": VEGA_LITE,
        "data": {"values": rows},
        "facet": {"field": "test", "type": "nominal", "title": None, "sort": [result.name for result in curves]},
        "columns": 3,
        "spec": {
            "width": 200,
            "height": 140,
            "mark": {"type": "line", "point": True},
            "encoding": {
                "x": {"field": "k", "type": "quantitative", "scale": {"type": "log"}, "axis": {"values": ks}},
                "y": {"field": "value", "type": "quantitative", "title": None},
                "color": {"field": "ranker", "type": "nominal", "sort": report.rankers},
                "tooltip": [{"field": "ranker"}, {"field": "k"}, {"field": "value", "format": ".4f"}],
            },
        },
        "resolve": {"scale": {"y": "independent"}},
    }


def grouped_bars_spec(report: SuiteReport, panels: dict[str, str], y_title: str = "") -> dict:
    """One panel per test (test name -> panel title): a bar per label and ranker, with the number of cases
    behind each label in the tooltip."""
    rows = []
    for name, title in panels.items():
        result = report.test(name)
        for row in _long_rows(result, report.rankers, "label"):
            rows.append({**row, "panel": title, "cases": result.support.get(row["label"])})
    rankers = report.rankers
    tooltip = [{"field": "ranker"}, {"field": "label"}, {"field": "value", "format": ".4f"}, {"field": "cases"}]
    return {
        "$schema": VEGA_LITE,
        "data": {"values": rows},
        "facet": {"field": "panel", "type": "nominal", "title": None, "sort": list(panels.values())},
        "columns": 2,
        "spec": {
            "width": {"step": 10},  # per bar (the offset band): a label's band holds one bar per ranker
            "height": 160,
            "mark": "bar",
            "encoding": {
                "x": {"field": "label", "type": "nominal", "sort": None, "title": None, "axis": {"labelLimit": 90}},
                "xOffset": {"field": "ranker", "type": "nominal", "sort": rankers},
                "y": {"field": "value", "type": "quantitative", "title": y_title},
                "color": {"field": "ranker", "type": "nominal", "sort": rankers},
                "tooltip": tooltip,
            },
        },
        "resolve": {"scale": {"x": "independent", "y": "independent"}},
    }


def bar_chart_sections(k: int) -> list[tuple[str, dict[str, str], str]]:
    """The card's bar charts: a heading, the panels (test name -> title) and the y axis' title of each."""
    return [
        (f"## Slices: HR@{k} by the case's kind (hover for the number of cases)", SLICE_TITLES, f"HR@{k}"),
        (
            "## Popularity: where hits and recommendations fall (bins of items by training popularity rank)",
            {"hr_by_popularity": f"HR@{k} by the target's bin", "recommended_popularity": "share of recommendations"},
            "",
        ),
        (
            "## Robustness and less wrong\n\nChange of MRR when the session is perturbed; for misses, the "
            "price-bucket distance between the top recommendation and the target (0: same bucket).",
            {"robustness": f"change of MRR@{k}", "less_wrong_price_distance": "misses by price distance"},
            "",
        ),
        ("## Cost: milliseconds to rank one session", {"latency_ms": "latency (ms)"}, "ms"),
    ]


def choice_spec(selection: Selection, report: SuiteReport, metric: str) -> dict:
    """Each finalist's MRR@20 on validation (what chose the champion) beside its test value (what confirms it)."""
    rows = [
        {"family": name, "split": "validation (the choice)", "value": fit.validation_mrr}
        for name, fit in selection.finalists.items()
    ]
    rows += [
        {"family": name, "split": "test (the confirmation)", "value": report.metrics(name)[metric]}
        for name in selection.finalists
        if name in report.rankers and math.isfinite(report.metrics(name)[metric])
    ]
    order = [fit.family for fit in selection.ranking()]
    return {
        "$schema": VEGA_LITE,
        "data": {"values": rows},
        "mark": "bar",
        "width": {"step": 14},
        "height": 200,
        "encoding": {
            "x": {"field": "family", "type": "nominal", "sort": order, "title": None},
            "xOffset": {"field": "split", "type": "nominal"},
            "y": {"field": "value", "type": "quantitative", "title": metric.upper()},
            "color": {"field": "split", "type": "nominal"},
            "tooltip": [{"field": "family"}, {"field": "split"}, {"field": "value", "format": ".4f"}],
        },
    }


def suite_card_components(evaluation: DeploymentEvaluation, stats: dict) -> list:
    """Headline, gate verdict, charts (k curves, slices, popularity, robustness and less wrong, latency),
    metrics table, the choice of the champion (when the evaluation knows it) and the data behind them."""
    report = evaluation.report
    k = report.dataset["k"]
    selection = evaluation.selection
    choice = []
    if selection is not None:
        choice = [
            Markdown(
                "## The choice: each family's best on validation, and on test\n\n"
                f"The champion, **{selection.champion}**, has the best validation MRR@20; the test confirms it or not."
            ),
            VegaChart(choice_spec(selection, report, "mrr@20")),
        ]
    return [
        Markdown(headline(report, evaluation.gate.metric, evaluation.deployed_note)),
        Markdown(verdict_markdown(evaluation.verdict)),
        Markdown("## Accuracy against the cut-off k (next item, and last item only: `last_`)"),
        VegaChart(k_curves_spec(report)),
        *(
            part
            for heading, panels, y_title in bar_chart_sections(k)
            for part in (Markdown(heading), VegaChart(grouped_bars_spec(report, panels, y_title)))
        ),
        Markdown(f"## Metrics (k = {k} where not named)"),
        metrics_table(report),
        *choice,
        Markdown("## Data"),
        Table([[name, f"{value:,}"] for name, value in {**stats, **report.dataset}.items()], headers=["what", "count"]),
    ]
