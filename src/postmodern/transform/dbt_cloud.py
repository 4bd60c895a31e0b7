"""Run the dbt project as a dbt Cloud job (`DBT_CLOUD=1`) through dbt Cloud's v2 API.

Trigger the configured job, poll the run through its life cycle (queued, starting, running, then success, error
or cancelled; each change is printed), then fetch the run's manifest and run results so that the card is the same
as with dbt core. A refusal is reported in dbt Cloud's own words (the `user_message` of its error body), never
with the token.
"""

from __future__ import annotations

import time

import requests

from postmodern.config import Settings
from postmodern.transform.dbt_runner import (
    DbtBuildError,
    DbtBuildResult,
    errored,
    failure_message,
    parse_run_results,
)

# Run status codes of the v2 API: queued 1, starting 2, running 3, then one of these.
SUCCESS, ERROR, CANCELLED = 10, 20, 30


class DbtCloudError(RuntimeError):
    """dbt Cloud refused, failed or timed out; the message says which, never the token."""


class DbtCloudClient:
    def __init__(self, settings: Settings, session: requests.Session | None = None, timeout: float = 30.0):
        self.base = f"{settings.dbt_cloud_url.rstrip('/')}/api/v2/accounts/{settings.dbt_account_id}"
        self.job_id = settings.dbt_job_id
        self.session = session or requests.Session()
        self.session.headers.update(
            {
                "Authorization": f"Token {settings.dbt_api_key.get_secret_value()}",
                "Accept": "application/json",
            }
        )
        self.timeout = timeout

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, f"{self.base}{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise DbtCloudError(f"dbt Cloud unreachable ({method} {path}): {type(error).__name__}") from None
        if response.status_code >= 400:
            raise DbtCloudError(f"dbt Cloud answered {response.status_code} to {method} {path}: {refusal(response)}")
        return response

    def trigger(self, cause: str) -> int:
        response = self._request("POST", f"/jobs/{self.job_id}/run/", json={"cause": cause[:255]})
        return int(response.json()["data"]["id"])

    def status(self, run_id: int) -> dict:
        return self._request("GET", f"/runs/{run_id}/").json()["data"]

    def artifact(self, run_id: int, name: str) -> dict:
        return self._request("GET", f"/runs/{run_id}/artifacts/{name}").json()

    def run_job(self, cause: str, poll_seconds: float = 10.0, timeout_seconds: float = 3600.0) -> DbtBuildResult:
        started = time.monotonic()
        run_id = self.trigger(cause)
        said = None
        while True:
            data = self.status(run_id)
            status = int(data["status"])
            if data.get("status_humanized") != said:
                said = data.get("status_humanized")
                print(f"dbt Cloud run {run_id}: {said or status}", flush=True)
            if status in (SUCCESS, ERROR, CANCELLED):
                break
            if time.monotonic() - started > timeout_seconds:
                raise DbtCloudError(
                    f"dbt Cloud run {run_id} still {data.get('status_humanized', status)} after {timeout_seconds:.0f} s"
                )
            time.sleep(poll_seconds)
        seconds = time.monotonic() - started
        if status == CANCELLED:
            raise DbtCloudError(f"dbt Cloud run {run_id} was cancelled")
        try:
            results = parse_run_results(self.artifact(run_id, "run_results.json"))
        except DbtCloudError:
            if status == SUCCESS:
                raise
            results = []  # a run that failed early writes no artifacts
        if status == ERROR and errored(results):
            # a run that failed before any node says why in its status message
            why = (
                failure_message(results)
                if results
                else f"dbt build failed: {data.get('status_message') or 'no node ran'}"
            )
            raise DbtBuildError(f"dbt Cloud run {run_id}: {why}", results)
        return DbtBuildResult(results, self.artifact(run_id, "manifest.json"), seconds)


def refusal(response: requests.Response) -> str:
    """What dbt Cloud said: its v2 error body's `user_message`, else the start of the body."""
    try:
        message = response.json()["status"]["user_message"]
    except (ValueError, KeyError, TypeError):
        message = None
    return message or response.text[:300]
