import json

from metaflow.cards import Markdown, Table, VegaChart

from postmodern.evaluation.cards import dag_chart_spec, dbt_card_components
from postmodern.transform.dag import dag_from_manifest
from postmodern.transform.dbt_runner import NodeResult
from postmodern.transform.quality import DataTestOutcome, QualityReport


def node(name, kind="model", depends=(), materialized="view", description=""):
    return {
        "name": name,
        "resource_type": kind,
        "package_name": "shop",
        "description": description,
        "config": {"materialized": materialized},
        "depends_on": {"nodes": list(depends)},
    }


def diamond_manifest():
    """raw -> a, b -> joined (a diamond, not a chain), a test on joined, and a node of another package."""
    return {
        "metadata": {"project_name": "shop"},
        "sources": {"source.shop.raw.events": {**node("events", "source"), "depends_on": {}}},
        "nodes": {
            "model.shop.a": node("a", depends=["source.shop.raw.events"]),
            "model.shop.b": node("b", depends=["source.shop.raw.events"]),
            "model.shop.joined": node(
                "joined", depends=["model.shop.a", "model.shop.b"], materialized="table", description="A and B together"
            ),
            "test.shop.not_null_joined_id": node("not_null_joined_id", "test", depends=["model.shop.joined"]),
            "model.other.elsewhere": {**node("elsewhere"), "package_name": "other"},
        },
    }


def test_dag_of_any_shape_is_layered_by_longest_path():
    results = [
        NodeResult("model.shop.a", "success", 0.1),
        NodeResult("test.shop.not_null_joined_id", "fail", 0.2, "Got 3 results", 3),
    ]
    dag = dag_from_manifest(diamond_manifest(), results)
    layers = {n.name: n.layer for n in dag.nodes}
    assert layers == {"events": 0, "a": 1, "b": 1, "joined": 2, "not_null_joined_id": 3}
    assert sorted(dag.edges) == sorted(
        [
            ("source.shop.raw.events", "model.shop.a"),
            ("source.shop.raw.events", "model.shop.b"),
            ("model.shop.a", "model.shop.joined"),
            ("model.shop.b", "model.shop.joined"),
            ("model.shop.joined", "test.shop.not_null_joined_id"),
        ]
    )
    assert [t.name for t in dag.tests_of("model.shop.joined")] == ["not_null_joined_id"]
    by_name = {n.name: n for n in dag.nodes}
    assert by_name["a"].status == "success" and by_name["b"].status is None
    assert {by_name["a"].position, by_name["b"].position} == {0, 1}


def test_dag_chart_draws_every_model_edge_and_the_test_results():
    dag = dag_from_manifest(diamond_manifest(), [NodeResult("test.shop.not_null_joined_id", "pass", 0.1)])
    spec = dag_chart_spec(dag)
    rules, points, _ = spec["layer"]
    assert len(rules["data"]["values"]) == 4  # the edge to the test is summarised on its node instead
    joined = next(p for p in points["data"]["values"] if p["name"] == "joined")
    assert joined["tests"] == "1/1 tests pass" and joined["materialized"] == "table"
    json.dumps(spec)  # Vega-Lite specs must be plain JSON


def test_dbt_card_lists_models_with_rows_tests_and_descriptions_and_the_gate():
    dag = dag_from_manifest(
        diamond_manifest(),
        [NodeResult("model.shop.joined", "success", 0.5), NodeResult("test.shop.not_null_joined_id", "fail", 0.1)],
    )
    failure = DataTestOutcome(
        "not_null_joined_id",
        "test.shop.not_null_joined_id",
        "fail",
        2,
        "Got 2 results",
        [{"id": None, "name": "x"}, {"id": None, "name": "y"}],
    )
    components = dbt_card_components(
        dag, 3.2, {"success": 1, "fail": 1}, {"joined": 1234}, QualityReport([failure], [])
    )
    texts = [c.render().get("source", "") for c in components if isinstance(c, Markdown)]
    assert "1 fail" in texts[0]
    assert "**Stopped**" in texts[1] and "FAILED: `not_null_joined_id`" in texts[2]
    tables = [c.render() for c in components if isinstance(c, Table)]
    assert tables[0]["columns"] == ["id", "name"] and tables[0]["data"] == [["None", "x"], ["None", "y"]]
    assert any(isinstance(c, VegaChart) for c in components)
    rows = {row[0]: row for row in tables[-1]["data"]}
    assert rows["joined"][5] == "1,234"
    assert rows["joined"][6] == "0/1 (failing: not_null_joined_id)"
    assert rows["joined"][7] == "A and B together"


def test_a_clean_build_says_the_gate_passed():
    components = dbt_card_components(dag_from_manifest(diamond_manifest()), 1.0, {"pass": 1}, {}, QualityReport([], []))
    assert "**Passed**" in components[1].render()["source"]
