"""dbt's manifest as a DAG of any shape (sources, models, tests), laid out in layers for the card."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from postmodern.transform.dbt_runner import NodeResult


@dataclass(frozen=True)
class DagNode:
    unique_id: str
    name: str
    resource_type: str  # source, model, test, seed, snapshot
    materialized: str | None
    description: str
    status: str | None
    seconds: float | None
    layer: int
    position: int  # order within the layer


@dataclass(frozen=True)
class Dag:
    nodes: list[DagNode]
    edges: list[tuple[str, str]]  # (parent, child)

    def tests_of(self, unique_id: str) -> list[DagNode]:
        children = {child for parent, child in self.edges if parent == unique_id}
        return [node for node in self.nodes if node.unique_id in children and node.resource_type == "test"]


def dag_from_manifest(manifest: dict, results: list[NodeResult] = ()) -> Dag:
    """Nodes of this project (not dbt's own packages) and their dependency edges, layered so that
    every edge points to a later layer (longest path from the sources)."""
    project = manifest["metadata"].get("project_name") or _project_name(manifest)
    by_result = {result.unique_id: result for result in results}
    raw: dict[str, dict] = {}
    for unique_id, node in manifest.get("nodes", {}).items():
        if node.get("package_name") == project and node["resource_type"] in ("model", "test", "seed", "snapshot"):
            raw[unique_id] = node
    for unique_id, source in manifest.get("sources", {}).items():
        if source.get("package_name") == project:
            raw[unique_id] = {**source, "resource_type": "source"}
    edges = [
        (parent, unique_id)
        for unique_id, node in raw.items()
        for parent in node.get("depends_on", {}).get("nodes", [])
        if parent in raw
    ]
    parents = defaultdict(list)
    for parent, child in edges:
        parents[child].append(parent)
    layers: dict[str, int] = {}

    def layer_of(unique_id: str, visiting: frozenset = frozenset()) -> int:
        if unique_id not in layers:
            if unique_id in visiting:
                raise ValueError(f"dependency cycle through {unique_id}")
            layers[unique_id] = 1 + max((layer_of(p, visiting | {unique_id}) for p in parents[unique_id]), default=-1)
        return layers[unique_id]

    positions: dict[int, int] = defaultdict(int)
    nodes = []
    for unique_id in sorted(raw, key=lambda uid: (layer_of(uid), raw[uid]["resource_type"], raw[uid]["name"])):
        node, layer = raw[unique_id], layer_of(unique_id)
        result = by_result.get(unique_id)
        nodes.append(
            DagNode(
                unique_id=unique_id,
                name=node["name"],
                resource_type=node["resource_type"],
                materialized=node.get("config", {}).get("materialized") if node["resource_type"] == "model" else None,
                description=node.get("description", ""),
                status=result.status if result else None,
                seconds=result.seconds if result else None,
                layer=layer,
                position=positions[layer],
            )
        )
        positions[layer] += 1
    return Dag(nodes, edges)


def _project_name(manifest: dict) -> str:
    names = {node.get("package_name") for node in manifest.get("nodes", {}).values()}
    names.discard("dbt")
    return sorted(n for n in names if n)[0]
