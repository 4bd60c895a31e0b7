"""Deploy targets: the local registry (default) or a SageMaker endpoint (`SAGEMAKER_DEPLOY=1`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from postmodern.config import Settings
from postmodern.model.bundle import ModelBundle
from postmodern.serving.registry import publish


def deploy_bundle(bundle: ModelBundle, settings: Settings) -> str:
    """Publish the bundle where the settings say; returns where it now serves from."""
    if settings.sagemaker_deploy:
        from postmodern.serving.sagemaker import deploy_to_sagemaker

        with tempfile.TemporaryDirectory() as scratch:
            endpoint = deploy_to_sagemaker(bundle.save(Path(scratch) / "bundle"), bundle.version, settings)
        return f"SageMaker endpoint {endpoint}"
    return str(publish(bundle, settings.registry_dir.resolve()))
