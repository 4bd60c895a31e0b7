"""Metaflow card builders: plain functions returning card components, so they are tested like any code."""

from __future__ import annotations

from metaflow.cards import Markdown, Table, VegaChart

from postmodern.evaluation.gate import describe_params
from postmodern.evaluation.suite_card import VEGA_LITE
from postmodern.model.champion import Selection
from postmodern.model.families import Fitted
from postmodern.transform.dag import Dag
from postmodern.transform.quality import QualityReport

STATUS_COLOURS = {
    "success": "#2e7d32",
    "pass": "#2e7d32",
    "warn": "#f9a825",
    "error": "#c62828",
    "fail": "#c62828",
    "skipped": "#9e9e9e",
    "none": "#1565c0",
}


def dag_chart_spec(dag: Dag) -> dict:
    """A Vega-Lite picture of sources and models by layer; tests show as counts on their node."""
    shown = [node for node in dag.nodes if node.resource_type != "test"]
    layer_positions: dict[int, int] = {}
    points = []
    for node in shown:
        row = layer_positions.get(node.layer, 0)
        layer_positions[node.layer] = row + 1
        tests = dag.tests_of(node.unique_id)
        passed = sum(1 for test in tests if test.status == "pass")
        points.append(
            {
                "id": node.unique_id,
                "name": node.name,
                "type": node.resource_type,
                "layer": node.layer,
                "row": row,
                "status": node.status or "none",
                "materialized": node.materialized or node.resource_type,
                "tests": f"{passed}/{len(tests)} tests pass" if tests else "no tests",
            }
        )
    where = {point["id"]: point for point in points}
    links = [
        {"x": where[p]["layer"], "y": where[p]["row"], "x2": where[c]["layer"], "y2": where[c]["row"]}
        for p, c in dag.edges
        if p in where and c in where
    ]
    x = {"field": "layer", "type": "quantitative", "axis": None, "scale": {"padding": 40}}
    y = {"field": "row", "type": "quantitative", "axis": None, "scale": {"reverse": True, "padding": 30}}
    return {
        "$schema": VEGA_LITE,
        "width": 700,
        "height": 60 + 50 * max(layer_positions.values(), default=1),
        "layer": [
            {
                "data": {"values": links},
                "mark": {"type": "rule", "color": "#90a4ae"},
                "encoding": {
                    "x": {**x, "field": "x"},
                    "y": {**y, "field": "y"},
                    "x2": {"field": "x2"},
                    "y2": {"field": "y2"},
                },
            },
            {
                "data": {"values": points},
                "mark": {"type": "point", "filled": True, "size": 300},
                "encoding": {
                    "x": x,
                    "y": y,
                    "shape": {"field": "type", "type": "nominal", "title": "node"},
                    "color": {
                        "field": "status",
                        "type": "nominal",
                        "title": "status",
                        "scale": {"domain": list(STATUS_COLOURS), "range": list(STATUS_COLOURS.values())},
                    },
                    "tooltip": [{"field": "name"}, {"field": "materialized"}, {"field": "status"}, {"field": "tests"}],
                },
            },
            {
                "data": {"values": points},
                "mark": {"type": "text", "dy": -16, "fontSize": 11},
                "encoding": {"x": x, "y": y, "text": {"field": "name"}},
            },
        ],
    }


def quality_components(report: QualityReport) -> list:
    """The gate's verdict, then every failed or warned test with a sample of its offending rows."""
    if report.passed and not report.warnings:
        return [Markdown("## Data quality\n\n**Passed**: every test passed; the data may reach training.")]
    verdict = (
        f"**Stopped**: {len(report.failures)} test(s) of severity error failed; training will not run."
        if report.failures
        else f"**Passed with {len(report.warnings)} warning(s)**; the data may reach training."
    )
    components = [Markdown(f"## Data quality\n\n{verdict}")]
    for outcome in report.failures + report.warnings:
        label = "FAILED" if outcome.status == "fail" else "warning"
        components.append(Markdown(f"### {label}: `{outcome.name}`\n\n{outcome.message}"))
        if outcome.sample:
            headers = list(outcome.sample[0])
            components.append(Table([[str(row[h]) for h in headers] for row in outcome.sample], headers=headers))
    return components


def dbt_card_components(
    dag: Dag, seconds: float, summary: dict[str, int], row_counts: dict[str, int], quality: QualityReport
) -> list:
    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.items()))
    rows = []
    for node in dag.nodes:
        if node.resource_type not in ("model", "source"):
            continue
        tests = dag.tests_of(node.unique_id)
        failing = [test.name for test in tests if test.status not in ("pass", None)]
        rows.append(
            [
                node.name,
                node.resource_type,
                node.materialized or "-",
                node.status or "-",
                f"{node.seconds:.2f}" if node.seconds is not None else "-",
                f"{row_counts[node.name]:,}" if node.name in row_counts else "-",
                f"{len(tests) - len(failing)}/{len(tests)}" + (f" (failing: {', '.join(failing)})" if failing else ""),
                node.description,
            ]
        )
    return [
        Markdown(f"# dbt build\n\n{counts} in {seconds:.1f} s"),
        *quality_components(quality),
        Markdown("## DAG (sources and models; hover for tests)"),
        VegaChart(dag_chart_spec(dag)),
        Markdown("## Models"),
        Table(
            rows, headers=["node", "type", "materialized", "status", "seconds", "rows", "tests passing", "description"]
        ),
    ]


def tuning_card_components(fits: list[Fitted], selection: Selection) -> list:
    """The choice of the champion: the finalists (each family's best, the best blend) by validation MRR@20, every
    configuration tried, and the validation curves of the candidates trained in epochs."""
    champion = selection.champion_fit
    runner_up, lead = selection.margin()
    lead_text = f", {lead:+.4f} over {runner_up}" if runner_up else ""
    finalists = [
        [
            f"{fit.family} (champion)" if fit.family == selection.champion else fit.family,
            describe_params(fit.params),
            f"{fit.validation_mrr:.4f}",
            f"{fit.validation['hr@20']:.4f}",
            f"{fit.seconds:.1f}",
        ]
        for fit in selection.ranking()
    ]
    trials = [
        [
            fit.family,
            describe_params({knob: value for knob, value in trial.items() if not knob.startswith("validation_")}),
            f"{trial['validation_mrr']:.4f}",
        ]
        for fit in [*fits, *selection.blends_tried]
        for trial in fit.trials
    ]
    trials.sort(key=lambda row: -float(row[2]))
    curves = [
        {"candidate": f"{index}: {fit.family}", "epoch": record["epoch"], "validation MRR@20": record["validation_mrr"]}
        for index, fit in enumerate(fits)
        for record in fit.history
    ]
    components = [
        Markdown(
            f"# Model selection\n\n{len(fits)} candidate(s) of {len({fit.family for fit in fits})} families, each "
            f"fitted in its own task, and {len(selection.blends_tried)} blend(s) of them, all on the same validation "
            f"cases. The champion is **{champion.family}** ({describe_params(champion.params)}): validation MRR@20 "
            f"{champion.validation_mrr:.4f}{lead_text}. It is refit and tested next."
        ),
        Markdown("## Finalists: each family's best"),
        Table(finalists, headers=["family", "configuration", "validation MRR@20", "validation HR@20", "seconds"]),
        Markdown("## Every configuration tried"),
        Table(trials, headers=["family", "configuration", "validation MRR@20"]),
    ]
    if curves:
        components += [
            Markdown("## Validation curves of the candidates trained in epochs"),
            VegaChart(
                {
                    "$schema": VEGA_LITE,
                    "data": {"values": curves},
                    "mark": {"type": "line", "point": True},
                    "width": 400,
                    "height": 220,
                    "encoding": {
                        "x": {"field": "epoch", "type": "ordinal"},
                        "y": {"field": "validation MRR@20", "type": "quantitative"},
                        "color": {"field": "candidate", "type": "nominal"},
                    },
                }
            ),
        ]
    return components
