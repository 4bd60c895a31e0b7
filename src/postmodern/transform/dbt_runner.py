"""Run the dbt project from Python (dbt's `dbtRunner`), on the warehouse chosen by the settings."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from postmodern.config import Settings
from postmodern.warehouse import show_log_in_warehouse

DBT_PROJECT_DIR = Path(__file__).resolve().parents[3] / "dbt"


class DbtBuildError(RuntimeError):
    """`dbt build` could not run: a model or test errored (SQL, connection), as opposed to data failing
    its tests, which is a result (`DbtBuildResult.failed_tests`). The message names each node and why."""

    def __init__(self, message: str, results: list[NodeResult]):
        super().__init__(message)
        self.results = results


@dataclass(frozen=True)
class NodeResult:
    unique_id: str
    status: str
    seconds: float
    message: str | None = None
    failures: int | None = None


@dataclass
class DbtBuildResult:
    results: list[NodeResult]
    manifest: dict
    seconds: float

    @property
    def warnings(self) -> list[NodeResult]:
        return [result for result in self.results if result.status == "warn"]

    @property
    def failed_tests(self) -> list[NodeResult]:
        return [result for result in self.results if result.status == "fail"]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        return counts


@contextmanager
def dbt_environment(settings: Settings) -> Iterator[None]:
    """The variables profiles.yml reads, set in this process for dbt (it runs in process) and taken away after:
    neither a secret nor another workspace's path outlives the build."""
    variables = _dbt_environment(settings)
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _dbt_environment(settings: Settings) -> dict[str, str]:
    """Variables that profiles.yml reads; Snowflake secrets stay in the environment, never in args."""
    environment = {"DUCKDB_PATH": str(Path(settings.duckdb_path).resolve()), "SF_SCHEMA": settings.sf_schema}
    if settings.warehouse == "snowflake":
        environment.update(
            {
                "SF_ACCOUNT": settings.sf_account or "",
                "SF_USER": settings.sf_user or "",
                "SF_PWD": settings.sf_pwd.get_secret_value() if settings.sf_pwd else "",
                "SF_ROLE": settings.sf_role or "",
                "SF_DB": settings.sf_db or "",
                "SF_WAREHOUSE": settings.sf_warehouse or "",
                "SF_HOST": settings.sf_host or "",
                "SF_PORT": str(settings.sf_port or 443),
                "SF_PROTOCOL": settings.sf_protocol,
            }
        )
    return environment


def run_dbt_build(
    settings: Settings,
    project_dir: Path = DBT_PROJECT_DIR,
    target_path: Path | None = None,
    full_refresh: bool = False,
    test_every_row: bool = False,
) -> DbtBuildResult:
    """`dbt build` (models and tests together) with the seed's vars. Tests that fail are in the result;
    DbtBuildError when something errored instead. After an incremental build, the large models' tests check
    the rows it added or rebuilt; `test_every_row` has them check every row."""
    from dbt.cli.main import dbtRunner

    # Build state lives with the rest of the run's data, so separate workspaces never share it.
    target_path = Path(target_path or settings.data_dir / "dbt_target").resolve()
    common_args = [
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(project_dir),
        "--target",
        settings.warehouse,
        "--target-path",
        str(target_path),
        "--log-path",
        str(target_path / "logs"),
        "--vars",
        json.dumps({**settings.dbt_vars(), "test_every_row": test_every_row}),
    ]
    started = time.perf_counter()
    if settings.warehouse == "duckdb":
        # dbt fails at once on a file another process holds: wait for it here, saying so; and show the raw log's
        # segments, as they are now, as views in the file
        show_log_in_warehouse(settings)
    with dbt_environment(settings):
        outcome = dbtRunner().invoke(["build", *common_args, *(["--full-refresh"] if full_refresh else [])])
    run_results_path = target_path / "run_results.json"
    results = parse_run_results(json.loads(run_results_path.read_text())) if run_results_path.exists() else []
    manifest_path = target_path / "manifest.json"
    if not outcome.success and (not manifest_path.exists() or errored(results)):
        raise DbtBuildError(failure_message(results, outcome.exception), results)
    manifest = json.loads(manifest_path.read_text())
    with dbt_environment(settings):
        freshness = source_freshness(common_args, target_path)
    return DbtBuildResult(results + freshness, manifest, time.perf_counter() - started)


def source_freshness(common_args: list[str], target_path: Path) -> list[NodeResult]:
    """How long ago each source was last loaded; `warn` when older than `freshness_warn_days`."""
    from dbt.cli.main import dbtRunner

    output = target_path / "sources.json"  # where dbt writes freshness results
    dbtRunner().invoke(["source", "freshness", *common_args])
    if not output.exists():
        return []
    return [
        NodeResult(
            unique_id=result["unique_id"],
            status=result["status"],
            seconds=float(result.get("execution_time") or 0.0),
            message=f"last loaded {result['max_loaded_at_time_ago_in_s'] / 3600:.1f} h ago"
            if "max_loaded_at_time_ago_in_s" in result
            else result.get("error"),
        )
        for result in json.loads(output.read_text()).get("results", [])
    ]


def errored(results: list[NodeResult]) -> bool:
    """Something broke (as opposed to tests finding bad data), or dbt stopped before running anything."""
    return not results or any(result.status in ("error", "runtime error") for result in results)


def parse_run_results(run_results: dict) -> list[NodeResult]:
    """Node results from dbt's run_results.json (the same artifact locally and in dbt Cloud)."""
    return [
        NodeResult(
            unique_id=result["unique_id"],
            status=result["status"],
            seconds=float(result.get("execution_time") or 0.0),
            message=result.get("message"),
            failures=result.get("failures"),
        )
        for result in run_results.get("results", [])
    ]


def failure_message(results: list[NodeResult], exception: BaseException | None = None) -> str:
    failed = [result for result in results if result.status in ("error", "runtime error", "fail")]
    if failed:
        return "dbt build failed: " + "; ".join(f"{r.unique_id}: {r.status} ({r.message})" for r in failed)
    return f"dbt build failed: {exception or 'see the dbt log'}"
