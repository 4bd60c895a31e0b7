"""Running dbt (core, or a dbt Cloud job) and drawing its DAG for the card."""

from __future__ import annotations

from postmodern.config import Settings
from postmodern.transform.dag import Dag
from postmodern.transform.dbt_runner import DbtBuildResult, run_dbt_build
from postmodern.transform.quality import DataQualityError, QualityReport, quality_report
from postmodern.warehouse import WarehouseError, connect


def run_transformation(settings: Settings, cause: str) -> tuple[DbtBuildResult, QualityReport]:
    """`dbt build` with dbt core in-process, or as the configured dbt Cloud job when DBT_CLOUD=1, and the
    data-quality verdict of its tests. Raises DbtBuildError when dbt itself could not run."""
    if settings.dbt_cloud:
        from postmodern.transform.dbt_cloud import DbtCloudClient

        build = DbtCloudClient(settings).run_job(cause)
    else:
        build = run_dbt_build(settings)
    return build, quality_report(settings, build)


# The run stopped at the gate resumes from the transformation: dbt then builds and tests the fixed data, and the
# steps before it are not run again.
RESUME_AFTER_FIX = (
    "Fix the data (load what was missing or corrected: `postmodern load`), then finish this run from dbt on, "
    "without redoing what passed: `python flows/recommender_flow.py resume run_transformation`"
)


def stop_unless_passed(report: QualityReport) -> None:
    """The gate before training: a clear error naming each failing test and sample rows, and how to go on."""
    if not report.passed:
        raise DataQualityError(f"{report.describe()}\n{RESUME_AFTER_FIX}")


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
