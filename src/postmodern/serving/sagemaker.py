"""Deploy a bundle to a SageMaker real-time endpoint (`SAGEMAKER_DEPLOY=1`, optional extra `sagemaker`).

The container image implements the same contract as `postmodern serve` (see the Dockerfile), so the
bundle that serves locally is the one SageMaker unpacks into /opt/ml/model. An existing endpoint is
updated in place to the new model; nothing is ever deleted.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

from postmodern.config import Settings


def model_archive(bundle_dir: Path, destination: Path) -> Path:
    """model.tar.gz with the bundle's files at the root, as SageMaker extracts it into /opt/ml/model."""
    archive = destination / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(Path(bundle_dir).iterdir()):
            tar.add(path, arcname=path.name)
    return archive


def deploy_to_sagemaker(bundle_dir: Path, version: str, settings: Settings, boto_session=None) -> str:
    """Upload the bundle, register a model and create or update the endpoint; returns the endpoint name."""
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
    name = f"{settings.sagemaker_endpoint}-{version}"[:63]
    key = f"{settings.sagemaker_endpoint}/{version}/model.tar.gz"
    with tempfile.TemporaryDirectory() as scratch:
        s3.upload_file(str(model_archive(bundle_dir, Path(scratch))), settings.sagemaker_bucket, key)
    sagemaker.create_model(
        ModelName=name,
        ExecutionRoleArn=settings.sagemaker_role,
        PrimaryContainer={"Image": settings.sagemaker_image, "ModelDataUrl": f"s3://{settings.sagemaker_bucket}/{key}"},
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
    )
    existing = sagemaker.list_endpoints(NameContains=settings.sagemaker_endpoint)["Endpoints"]
    if any(endpoint["EndpointName"] == settings.sagemaker_endpoint for endpoint in existing):
        sagemaker.update_endpoint(EndpointName=settings.sagemaker_endpoint, EndpointConfigName=name)
    else:
        sagemaker.create_endpoint(EndpointName=settings.sagemaker_endpoint, EndpointConfigName=name)
    sagemaker.get_waiter("endpoint_in_service").wait(EndpointName=settings.sagemaker_endpoint)
    return settings.sagemaker_endpoint
