"""The local model registry: one folder per model version and a LATEST pointer, switched atomically."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
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


def bundle_version(directory: Path) -> str:
    """The model version of a bundle folder, read from its metadata alone (cheap enough to poll)."""
    try:
        metadata = json.loads((Path(directory) / "metadata.json").read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{directory} is not a model bundle: {error}") from None
    return str(metadata.get("model_version", "unversioned"))


@dataclass(frozen=True)
class ModelSource:
    """Where serving reads its bundle: a fixed folder, or whatever the registry's LATEST points at now."""

    path: Path
    follows_registry: bool = False

    def bundle_dir(self) -> Path:
        return latest_bundle_dir(self.path) if self.follows_registry else self.path

    def __str__(self) -> str:
        return f"the latest bundle in {self.path}" if self.follows_registry else str(self.path)


def resolve_model_source(explicit: Path | None, registry_dir: Path) -> ModelSource:
    """`--model PATH` if given, else SageMaker's /opt/ml/model when it holds a bundle, else the registry."""
    if explicit is not None:
        return ModelSource(Path(explicit))
    if (SAGEMAKER_MODEL_DIR / "metadata.json").exists():
        return ModelSource(SAGEMAKER_MODEL_DIR)
    return ModelSource(Path(registry_dir), follows_registry=True)
