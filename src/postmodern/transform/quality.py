"""The data-quality gate: dbt tests of severity `error` that fail stop the flow before training; those
of severity `warn` are shown. Each failure comes with a sample of the offending rows, read from the
table dbt stored them in (`store_failures`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from postmodern.config import Settings
from postmodern.transform.dbt_runner import DbtBuildResult
from postmodern.warehouse import WarehouseError, connect

SAMPLE_ROWS = 5


class DataQualityError(RuntimeError):
    """Tests of severity error failed: the data must not reach training."""


@dataclass(frozen=True)
class DataTestOutcome:
    name: str
    unique_id: str
    status: str  # fail or warn
    failures: int
    message: str
    sample: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class QualityReport:
    failures: list[DataTestOutcome]
    warnings: list[DataTestOutcome]

    @property
    def passed(self) -> bool:
        return not self.failures

    def describe(self) -> str:
        if self.passed and not self.warnings:
            return "data quality: every test passed"
        lines = []
        for outcome in self.failures + self.warnings:
            verb = "FAILED" if outcome.status == "fail" else "warned"
            lines.append(f"- {outcome.name} {verb}: {outcome.message}")
            lines.extend(f"    {row}" for row in outcome.sample)
        head = "data quality gate: training stopped" if self.failures else "data quality: warnings"
        return head + "\n" + "\n".join(lines)


def quality_report(settings: Settings, build: DbtBuildResult) -> QualityReport:
    """Failed and warned tests of a build, each with a sample of its offending rows when dbt stored them."""
    nodes = build.manifest.get("nodes", {})

    def outcome(result) -> DataTestOutcome:
        node = nodes.get(result.unique_id, {})
        name = node.get("name", result.unique_id.split(".")[-1])
        return DataTestOutcome(
            name=f"freshness of {name}" if result.unique_id.startswith("source.") else name,
            unique_id=result.unique_id,
            status=result.status,
            failures=int(result.failures or 0),
            message=result.message or f"{result.failures} offending rows",
            sample=_sample(settings, node.get("relation_name")),
        )

    return QualityReport([outcome(r) for r in build.failed_tests], [outcome(r) for r in build.warnings])


def _sample(settings: Settings, relation: str | None) -> list[dict]:
    if not relation:
        return []
    # read-write: dbt-duckdb keeps a read-write connection to the same file open in this process
    warehouse = connect(settings)
    try:
        rows = warehouse.query(f"select * from {relation} limit {SAMPLE_ROWS}").to_pylist()
    except WarehouseError:
        return []
    finally:
        warehouse.close()
    return [{key: _short(value) for key, value in row.items()} for row in rows]


def _short(value: object) -> object:
    text = str(value)
    return value if len(text) <= 80 else text[:77] + "..."
