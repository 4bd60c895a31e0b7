import pytest
from conftest import SNOWFLAKE_CREDENTIALS

from postmodern.config import ConfigError, Settings, load_settings


def test_defaults_need_no_env_file_and_run_locally(monkeypatch):
    for name in ("WAREHOUSE", "SF_SCHEMA", "SF_TABLE", "MAX_SESSIONS", "COMET_API_KEY", "DBT_CLOUD", "DUCKDB_PATH"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.warehouse == "duckdb"
    assert settings.sf_schema == "POST_MODERN_DATA_STACK"
    assert settings.sf_table == "COVEO_DATASET_RAW"
    assert settings.tracking_backend == "mlflow"
    assert not settings.en_batch and not settings.dbt_cloud and not settings.sagemaker_deploy
    assert settings.max_sessions is None
    assert str(settings.duckdb_path).startswith("data")


def test_environment_overrides_and_empty_values_mean_unset(monkeypatch):
    monkeypatch.setenv("MAX_SESSIONS", "500")
    monkeypatch.setenv("EN_BATCH", "1")
    monkeypatch.setenv("SF_TABLE", "")
    settings = load_settings(_env_file=None)
    assert settings.max_sessions == 500
    assert settings.en_batch is True
    assert settings.sf_table == "COVEO_DATASET_RAW"


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    monkeypatch.delenv("APPLICATION_API_KEY", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("APPLICATION_API_KEY=acme\nMAX_SESSIONS=42\n")
    settings = Settings(_env_file=env_file)
    assert settings.application_api_key == "acme"
    assert settings.max_sessions == 42


@pytest.mark.parametrize(
    ("switch", "missing"),
    [
        ({"warehouse": "snowflake"}, ["SF_USER", "SF_PWD", "SF_ACCOUNT", "SF_DB", "SF_ROLE"]),
        ({"dbt_cloud": True}, ["DBT_ACCOUNT_ID", "DBT_PROJECT_ID", "DBT_JOB_ID", "DBT_API_KEY"]),
        ({"sagemaker_deploy": True}, ["SAGEMAKER_ROLE", "SAGEMAKER_IMAGE", "SAGEMAKER_BUCKET"]),
    ],
)
def test_a_chosen_cloud_path_names_each_missing_variable(switch, missing):
    with pytest.raises(ConfigError) as error:
        load_settings(_env_file=None, **switch)
    for name in missing:
        assert name in str(error.value)


def test_complete_snowflake_settings_are_accepted():
    settings = load_settings(_env_file=None, **SNOWFLAKE_CREDENTIALS)
    assert settings.warehouse == "snowflake"


def test_invalid_values_are_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="MAX_SESSIONS"):
        load_settings(_env_file=None, max_sessions=0)
    with pytest.raises(ConfigError, match="WAREHOUSE"):
        load_settings(_env_file=None, warehouse="bigquery")


def test_secrets_never_show_in_summary_or_repr():
    settings = load_settings(
        _env_file=None,
        warehouse="snowflake",
        sf_user="u",
        sf_pwd="hunter2",
        sf_account="a",
        sf_db="d",
        sf_role="r",
        comet_api_key="comet-secret",
        application_api_key="org-key-123",
    )
    shown = repr(settings) + str(settings.public_summary())
    assert "hunter2" not in shown and "comet-secret" not in shown
    assert "org-key-123" not in str(settings.public_summary())
    assert settings.tracking_backend == "comet"
    # a Comet key in a shared .env need not send this workspace's runs there
    assert load_settings(_env_file=None, comet_api_key="k", tracker="mlflow").tracking_backend == "mlflow"
    with pytest.raises(ConfigError, match="COMET_API_KEY"):
        load_settings(_env_file=None, tracker="comet")
