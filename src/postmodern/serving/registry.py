"""The local model registry: one folder per model version and a LATEST pointer, switched atomically."""

from __future__ import annotations

import os
from pathlib import Path

from postmodern.model.bundle import BundleError, ModelBundle

LATEST = "LATEST"
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")


def publish(bundle: ModelBundle, registry_dir: Path) -> Path:
    """Write the bundle as `registry_dir/<version>` and point LATEST at it; readers never see half a bundle."""
    registry_dir = Path(registry_dir)
    final = registry_dir / bundle.version
    staging = registry_dir / f".{bundle.version}.partial"
    if final.exists():
        raise BundleError(f"model version {bundle.version} is already in the registry at {final}")
    bundle.save(staging)
    staging.replace(final)
    pointer = registry_dir / f".{LATEST}.tmp"
    pointer.write_text(bundle.version)
    os.replace(pointer, registry_dir / LATEST)
    return final


def latest_bundle_dir(registry_dir: Path) -> Path:
    pointer = Path(registry_dir) / LATEST
    if not pointer.exists():
        raise BundleError(f"no deployed model in {registry_dir}: run the flow first (`make run`)")
    return Path(registry_dir) / pointer.read_text().strip()


def resolve_model_dir(explicit: Path | None, registry_dir: Path) -> Path:
    """`--model PATH` if given, else SageMaker's /opt/ml/model when it holds a bundle, else the registry."""
    if explicit is not None:
        return Path(explicit)
    if (SAGEMAKER_MODEL_DIR / "metadata.json").exists():
        return SAGEMAKER_MODEL_DIR
    return latest_bundle_dir(registry_dir)
