"""Typed settings, read once from the environment and `.env`.

Every variable of the original project is here with an embedded default where one can serve, so the
local path needs no `.env` at all. Choosing a cloud path (Snowflake, dbt Cloud, Comet, SageMaker)
makes its variables required, and a missing one fails at start-up with the variable's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The longest field a load accepts and the longest SKU a request may send: ids are hashes or codes, and one
# longer than this is garbage (or an attack), not a product.
MAX_FIELD_LENGTH = 4096


class ConfigError(ValueError):
    """A setting needed by the chosen path is missing or invalid."""


# Variables each cloud path needs, by the name a user sets in the environment.
REQUIRED_FOR_SNOWFLAKE = ("SF_USER", "SF_PWD", "SF_ACCOUNT", "SF_DB", "SF_ROLE")
REQUIRED_FOR_DBT_CLOUD = ("DBT_ACCOUNT_ID", "DBT_PROJECT_ID", "DBT_JOB_ID", "DBT_API_KEY")
REQUIRED_FOR_SAGEMAKER = ("SAGEMAKER_ROLE", "SAGEMAKER_IMAGE", "SAGEMAKER_BUCKET")


@dataclass(frozen=True)
class LogTables:
    """The append-only tables a load writes, named after the raw log (`SF_TABLE`)."""

    raw: str
    catalog: str
    quarantine: str
    loads: str


class Settings(BaseSettings):
    """All configuration of the stack. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    # Warehouse
    warehouse: Literal["duckdb", "snowflake"] = "duckdb"
    duckdb_path: Path = Field(default=Path("data/warehouse.duckdb"))
    warehouse_lock_timeout: float = Field(default=120.0, ge=0)  # seconds to wait while another process holds it
    duckdb_log_dir: Path | None = None  # the raw log's Parquet segments; default: beside DUCKDB_PATH, "<name>_log"
    sf_schema: str = "POST_MODERN_DATA_STACK"
    sf_table: str = "COVEO_DATASET_RAW"
    sf_catalog_table: str = "COVEO_CATALOG_RAW"
    sf_user: str | None = None
    sf_pwd: SecretStr | None = None
    sf_account: str | None = None
    sf_db: str | None = None
    sf_role: str | None = None
    sf_warehouse: str | None = None
    # Where Snowflake answers when not at <account>.snowflakecomputing.com over HTTPS (a private endpoint, an emulator)
    sf_host: str | None = None
    sf_port: int | None = Field(default=None, ge=1, le=65535)
    sf_protocol: Literal["https", "http"] = "https"

    # Data
    application_api_key: str = "postmodern-local"
    max_sessions: int | None = Field(default=None, ge=1)
    data_dir: Path = Path("data")
    load_memory_limit: str = "3GB"  # DuckDB's memory while loading; it spills to disk beyond

    # Compute and tracking
    en_batch: bool = False
    tracker: Literal["auto", "mlflow", "comet"] = "auto"  # auto: Comet when COMET_API_KEY is set, else MLflow
    comet_api_key: SecretStr | None = None
    comet_project: str = "post-modern-stack"
    mlflow_tracking_uri: str | None = None

    # dbt
    dbt_cloud: bool = False
    dbt_account_id: str | None = None
    dbt_project_id: str | None = None
    dbt_job_id: str | None = None
    dbt_api_key: SecretStr | None = None
    dbt_cloud_url: str = "https://cloud.getdbt.com"

    # Deployment and serving
    sagemaker_deploy: bool = False
    sagemaker_role: str | None = None
    sagemaker_image: str | None = None
    sagemaker_bucket: str | None = None
    sagemaker_instance: str = "ml.m5.large"
    sagemaker_endpoint: str = "post-modern-stack"
    registry_dir: Path = Path("data/registry")
    serving_api_key: SecretStr | None = None  # when set, ranking and reload requests need it in X-API-Key
    serving_max_k: int = Field(default=100, ge=1)
    serving_max_sessions: int = Field(default=256, ge=1)  # sessions in one request
    serving_max_session_length: int = Field(default=500, ge=1)  # SKUs in one session
    serving_max_body_bytes: int = Field(default=1_048_576, ge=1)
    serving_max_sku_length: int = Field(default=MAX_FIELD_LENGTH, ge=1)  # characters in one SKU
    serving_reload_seconds: float = Field(default=2.0, ge=0)  # how often to look for a new bundle; 0: never
    serving_cache_prefixes: int = Field(default=50_000, ge=0)  # recent prefixes whose rankings are reused; 0: none
    serving_workers: int = Field(default=1, ge=1)  # server processes on the port (`serve --workers`): one per core

    # Collecting events one by one (`postmodern collect`)
    collect_dir: Path = Path("data/collect")  # the stage: a write-ahead log of acknowledged events
    collect_flush_seconds: float = Field(default=2.0, gt=0)  # oldest age of a micro-batch before it is loaded
    collect_segment_events: int = Field(default=100_000, ge=1)  # most events in one micro-batch (one load)
    collect_stage_max_events: int = Field(default=2_000_000, ge=1)  # events staged and not yet loaded; beyond: 429
    collect_dedup_seconds: float = Field(default=600.0, ge=0)  # how long an event id is remembered after its load
    collect_max_events: int = Field(default=1_000, ge=1)  # events in one request
    collect_allowed_origins: str = "*"  # pages (comma-separated origins) whose browsers may post events
    demo_collector_url: str = "http://127.0.0.1:8090"  # where the demo page sends its clicks (it says if none answers)

    @model_validator(mode="after")
    def _cloud_paths_are_complete(self) -> Settings:
        required: list[str] = []
        if self.warehouse == "snowflake":
            required += REQUIRED_FOR_SNOWFLAKE
        if self.dbt_cloud:
            required += REQUIRED_FOR_DBT_CLOUD
        if self.sagemaker_deploy:
            required += REQUIRED_FOR_SAGEMAKER
        if self.tracker == "comet":
            required += ("COMET_API_KEY",)
        missing = [name for name in required if not getattr(self, name.lower())]
        if missing:
            raise ConfigError(
                "missing settings for the chosen path: "
                + ", ".join(missing)
                + " (set them in the environment or in .env; see .env.example)"
            )
        return self

    @property
    def log_tables(self) -> LogTables:
        return LogTables(
            raw=self.sf_table,
            catalog=self.sf_catalog_table,
            quarantine=f"{self.sf_table}_QUARANTINE",
            loads=f"{self.sf_table}_LOADS",
        )

    @property
    def log_directory(self) -> Path:
        return self.duckdb_log_dir or self.duckdb_path.with_name(f"{self.duckdb_path.stem}_log")

    @property
    def tracking_backend(self) -> Literal["mlflow", "comet"]:
        if self.tracker == "auto":
            return "comet" if self.comet_api_key else "mlflow"
        return self.tracker

    @cached_property
    def resolved_mlflow_uri(self) -> str:
        """MLflow's local SQLite store beside the data unless a tracking server is configured."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.data_dir / 'mlflow.db').resolve()}"

    def public_summary(self) -> dict[str, object]:
        """What a card or log may show: the chosen paths and names, no credential."""
        return {
            "warehouse": self.warehouse,
            "schema": self.sf_schema,
            "raw_table": self.sf_table,
            "api_key": self.application_api_key[:4] + "…",
            "max_sessions": self.max_sessions,
            "tracker": self.tracking_backend,
            "dbt": "dbt Cloud" if self.dbt_cloud else "dbt core",
            "deploy": "SageMaker" if self.sagemaker_deploy else "local registry",
            "serving_auth": "API key" if self.serving_api_key else "open",
            "compute": "AWS Batch" if self.en_batch else "local",
        }

    def dbt_vars(self) -> dict[str, str]:
        """The variables the dbt project reads (as the original flow passed them)."""
        return {"SF_SCHEMA": self.sf_schema, "SF_TABLE": self.sf_table, "SF_CATALOG_TABLE": self.sf_catalog_table}


def load_settings(**overrides: object) -> Settings:
    """Read settings; turns pydantic's validation error into a ConfigError with a readable message."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as error:
        messages = []
        for item in error.errors():
            message = item["msg"].removeprefix("Value error, ")
            field = ".".join(str(part) for part in item["loc"]).upper()
            messages.append(f"{field}: {message}" if field else message)
        raise ConfigError("invalid settings: " + "; ".join(messages)) from None
