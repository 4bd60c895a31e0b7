"""Running dbt (core, or a dbt Cloud job) and drawing its DAG for the card."""

from __future__ import annotations

from postmodern.config import Settings
from postmodern.transform.dag import Dag
from postmodern.transform.dbt_runner import DbtBuildResult, run_dbt_build
from postmodern.warehouse import WarehouseError, connect


def run_transformation(settings: Settings, cause: str) -> DbtBuildResult:
    """`dbt build` with dbt core in-process, or as the configured dbt Cloud job when DBT_CLOUD=1."""
    if settings.dbt_cloud:
        from postmodern.transform.dbt_cloud import DbtCloudClient

        return DbtCloudClient(settings).run_job(cause)
    return run_dbt_build(settings)


def model_row_counts(settings: Settings, dag: Dag) -> dict[str, int]:
    """Rows of every built model, for the card (models that failed or were skipped are left out)."""
    # Read-write like dbt's own connection, which dbt-duckdb keeps open in this process: DuckDB refuses
    # a second connection to the same file with another configuration.
    warehouse = connect(settings)
    counts = {}
    try:
        for node in dag.nodes:
            if node.resource_type == "model" and node.status == "success":
                try:
                    table = warehouse.query(f"select count(*) as n from {warehouse.qualified(node.name)}")
                    counts[node.name] = int(table.column("n")[0].as_py())
                except WarehouseError:
                    continue
    finally:
        warehouse.close()
    return counts
