"""The local model registry: one folder per model version and a LATEST pointer, switched atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from postmodern.model.bundle import BundleError, ModelBundle

LATEST = "LATEST"
SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
READABLE_DIR, READABLE_FILE = 0o755, 0o644


def publish(bundle: ModelBundle, registry_dir: Path) -> Path:
    """Write the bundle as `registry_dir/<version>` and point LATEST at it; readers never see half a bundle, and
    deploys running at once each publish whole (the last to finish is LATEST)."""
    registry_dir = Path(registry_dir)
    final = registry_dir / bundle.version
    if final.exists():
        raise BundleError(f"model version {bundle.version} is already in the registry at {final}")
    registry_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{bundle.version}.", suffix=".partial", dir=registry_dir))
    staging.chmod(READABLE_DIR)  # mkdtemp's folders are private; a server may run as another user
    try:
        bundle.save(staging)
        staging.rename(final)  # atomic; refused when another deploy of this version got there first
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if final.exists():
            raise BundleError(f"model version {bundle.version} is already in the registry at {final}") from None
        raise BundleError(f"cannot publish {bundle.version} to {registry_dir}: {error}") from error
    with tempfile.NamedTemporaryFile("w", dir=registry_dir, prefix=f".{LATEST}.", delete=False) as pointer:
        pointer.write(bundle.version)
    os.chmod(pointer.name, READABLE_FILE)
    os.replace(pointer.name, registry_dir / LATEST)
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
