"""Deploy a bundle to a SageMaker real-time endpoint (`SAGEMAKER_DEPLOY=1`, optional extra `sagemaker`).

The container image implements the same contract as `postmodern serve` (see the Dockerfile), so the
bundle that serves locally is the one SageMaker unpacks into /opt/ml/model. Each deploy registers a model
and an endpoint configuration named after the model version, then creates the endpoint or updates it in
place (SageMaker shifts traffic once the new instances are healthy, and rolls back if they are not).
Nothing is ever deleted: earlier models and configurations stay for a rollback.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from pathlib import Path

from postmodern.config import Settings

NAME_LIMIT = 63  # SageMaker's limit for model, configuration and endpoint names
BUSY_STATUSES = {"Creating", "Updating", "SystemUpdating", "RollingBack"}


class SageMakerDeployError(RuntimeError):
    """The endpoint could not be created or updated; the message says why, in SageMaker's words."""


def model_archive(bundle_dir: Path, destination: Path) -> Path:
    """model.tar.gz with the bundle's files at the root, as SageMaker extracts it into /opt/ml/model."""
    archive = destination / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(Path(bundle_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def resource_name(endpoint: str, version: str) -> str:
    """`<endpoint>-<version>` in SageMaker's alphabet (letters, digits, hyphens), at most 63 characters;
    the endpoint part is shortened first, so that each version keeps a name of its own."""
    version = re.sub(r"[^A-Za-z0-9-]+", "-", version).strip("-") or "unversioned"
    version = version[-(NAME_LIMIT - 2) :]
    prefix = endpoint[: NAME_LIMIT - len(version) - 1].rstrip("-")
    return f"{prefix}-{version}" if prefix else version


def deploy_to_sagemaker(bundle_dir: Path, version: str, settings: Settings, boto_session=None) -> str:
    """Upload the bundle, register a model and an endpoint configuration, then create or update the
    endpoint and wait until it serves; returns the endpoint name."""
    if boto_session is None:
        try:
            import boto3
        except ImportError as error:
            raise RuntimeError(
                "SAGEMAKER_DEPLOY=1 needs the SageMaker extra: pip install -c constraints.txt '.[sagemaker]'"
            ) from error
        boto_session = boto3.session.Session()
    s3 = boto_session.client("s3")
    sagemaker = boto_session.client("sagemaker")
    endpoint = settings.sagemaker_endpoint
    name = resource_name(endpoint, version)
    key = f"{endpoint}/{version}/model.tar.gz"
    tags = [{"Key": "postmodern:model_version", "Value": version}]
    with tempfile.TemporaryDirectory() as scratch:
        s3.upload_file(str(model_archive(bundle_dir, Path(scratch))), settings.sagemaker_bucket, key)
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn=settings.sagemaker_role,
        PrimaryContainer={"Image": settings.sagemaker_image, "ModelDataUrl": f"s3://{settings.sagemaker_bucket}/{key}"},
        Tags=tags,
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InitialInstanceCount": 1,
                "InstanceType": settings.sagemaker_instance,
            }
        ],
        Tags=tags,
    )
    status = endpoint_status(sagemaker, endpoint)
    if status is None:
        sagemaker.create_endpoint(EndpointName=endpoint, EndpointConfigName=name, Tags=tags)
    elif status == "Failed":  # SageMaker cannot update a failed endpoint, and deleting it is the user's call
        raise SageMakerDeployError(
            f"SageMaker endpoint {endpoint} has failed ({failure_reason(sagemaker, endpoint)}); delete it "
            f"(aws sagemaker delete-endpoint --endpoint-name {endpoint}) and deploy again: model {name} is ready"
        )
    else:
        if status in BUSY_STATUSES:  # SageMaker refuses an update while one is under way
            wait_in_service(sagemaker, endpoint)
        sagemaker.update_endpoint(EndpointName=endpoint, EndpointConfigName=name)
    wait_in_service(sagemaker, endpoint)
    return endpoint


def endpoint_status(sagemaker, endpoint: str) -> str | None:
    """The endpoint's status, or None when there is no such endpoint."""
    from botocore.exceptions import ClientError

    try:
        return sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointStatus"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ValidationException":  # "Could not find endpoint"
            return None
        raise


def wait_in_service(sagemaker, endpoint: str) -> None:
    from botocore.exceptions import WaiterError

    try:
        sagemaker.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint, WaiterConfig={"Delay": 30, "MaxAttempts": 120}
        )
    except WaiterError:
        reason = failure_reason(sagemaker, endpoint)
        raise SageMakerDeployError(f"SageMaker endpoint {endpoint} is not in service: {reason}") from None


def failure_reason(sagemaker, endpoint: str) -> str:
    description = sagemaker.describe_endpoint(EndpointName=endpoint)
    return description.get("FailureReason") or f"status {description['EndpointStatus']}"
