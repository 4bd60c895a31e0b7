"""The SageMaker deploy path without an account. Deploys run against moto (S3 and SageMaker in-process: the real
boto3 clients, requests checked against AWS's API models, state kept by moto) and are checked on moto's state.
moto has no UpdateEndpoint and its endpoints are in service at once: the update is added to moto's own backend
here, and the endpoint state transitions (updating, failed) are played by a recording fake session."""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, WaiterError
from conftest import make_settings
from serving_support import small_bundle

from postmodern.serving.deploy import deploy_bundle
from postmodern.serving.sagemaker import SageMakerDeployError, deploy_to_sagemaker, model_archive, resource_name


def bundle_files(bundle_dir: Path) -> list[str]:
    """Every path in the bundle folder, relative to it: the model's state folder and its files included."""
    return sorted(str(path.relative_to(bundle_dir)) for path in bundle_dir.rglob("*"))


class FakeAws:
    """boto3.session.Session for S3 and SageMaker: endpoints by name with the states moto does not play
    (updating, failed), every call kept."""

    def __init__(self, endpoints: dict[str, str] | None = None, fails_with: str | None = None):
        self.endpoints = dict(endpoints or {})
        self.fails_with = fails_with  # the FailureReason of an endpoint that never comes into service
        self.calls: list[tuple[str, str, dict]] = []

    def client(self, service: str):
        return FakeClient(self, service)

    def methods(self) -> list[str]:
        return [method for _, method, _ in self.calls]

    # answers, by method name
    def describe_endpoint(self, EndpointName):
        if EndpointName not in self.endpoints:
            error = {"Error": {"Code": "ValidationException", "Message": f'Could not find endpoint "{EndpointName}"'}}
            raise ClientError(error, "DescribeEndpoint")
        status = self.endpoints[EndpointName]
        return {"EndpointStatus": status, **({"FailureReason": self.fails_with} if status == "Failed" else {})}

    def create_endpoint(self, EndpointName, EndpointConfigName, Tags):
        self.endpoints[EndpointName] = "Creating"

    def update_endpoint(self, EndpointName, EndpointConfigName):
        if self.endpoints[EndpointName] != "InService":
            raise ClientError({"Error": {"Code": "ValidationException"}}, "UpdateEndpoint")
        self.endpoints[EndpointName] = "Updating"

    def get_waiter(self, name):
        aws = self

        class Waiter:
            def wait(self, EndpointName, WaiterConfig):
                if aws.fails_with:
                    aws.endpoints[EndpointName] = "Failed"
                    raise WaiterError(name, "Waiter encountered a terminal failure state", {})
                aws.endpoints[EndpointName] = "InService"

        return Waiter()


class FakeClient:
    def __init__(self, aws: FakeAws, service: str):
        self.aws, self.service = aws, service

    def __getattr__(self, method):
        def call(*args, **kwargs):
            self.aws.calls.append((self.service, method, kwargs))
            answer = getattr(self.aws, method, None)
            return answer(*args, **kwargs) if answer else {}

        return call


@pytest.fixture
def settings(tmp_path):
    return make_settings(
        tmp_path,
        sagemaker_deploy=True,
        sagemaker_role="arn:aws:iam::1:role/sm",
        sagemaker_image="1.dkr.ecr/postmodern:1",
        sagemaker_bucket="models",
    )


@pytest.fixture
def bundle_dir(tmp_path):
    return small_bundle("v7", ["a", "b", "c"]).save(tmp_path / "bundle")


def test_model_archive_has_the_bundle_files_at_its_root(bundle_dir, tmp_path):
    with tarfile.open(model_archive(bundle_dir, tmp_path)) as tar:
        names = sorted(tar.getnames())
    assert names == bundle_files(bundle_dir)
    assert {"metadata.json", "vocab.json", "popular.json", "model/config.json"} <= set(names)


@pytest.fixture
def moto_session(monkeypatch):
    """A boto3 session whose S3 and SageMaker are moto's, with the deploy's bucket, and UpdateEndpoint."""
    import boto3
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    add_update_endpoint_to_moto(monkeypatch)
    with mock_aws():
        session = boto3.session.Session()
        session.client("s3").create_bucket(
            Bucket="models", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
        yield session


def add_update_endpoint_to_moto(monkeypatch) -> None:
    """SageMaker's UpdateEndpoint on moto's backend: the endpoint takes the new configuration's variants."""
    from moto.core.utils import utcnow
    from moto.sagemaker.models import SageMakerModelBackend
    from moto.sagemaker.responses import ActionResult, SageMakerResponse

    def update_endpoint(backend, endpoint_name: str, endpoint_config_name: str):
        endpoint = backend.describe_endpoint(endpoint_name) and backend.endpoints[endpoint_name]
        config = backend.describe_endpoint_config(endpoint_config_name)
        endpoint.endpoint_config_name = endpoint_config_name
        endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
        endpoint.last_modified_time = utcnow()
        return endpoint

    def respond(response):
        name, config = response._get_param("EndpointName"), response._get_param("EndpointConfigName")
        return ActionResult({"EndpointArn": update_endpoint(response.sagemaker_backend, name, config).arn})

    monkeypatch.setattr(SageMakerModelBackend, "update_endpoint", update_endpoint, raising=False)
    monkeypatch.setattr(SageMakerResponse, "update_endpoint", respond, raising=False)


def archive_names(session, bucket: str, key: str, scratch: Path) -> list[str]:
    session.client("s3").download_file(bucket, key, str(scratch / "model.tar.gz"))
    with tarfile.open(scratch / "model.tar.gz") as tar:
        return sorted(tar.getnames())


def test_a_first_deploy_uploads_the_bundle_and_creates_the_endpoint(bundle_dir, settings, moto_session, tmp_path):
    assert deploy_to_sagemaker(bundle_dir, "v7", settings, boto_session=moto_session) == "post-modern-stack"
    key = "post-modern-stack/v7/model.tar.gz"
    assert archive_names(moto_session, "models", key, tmp_path) == bundle_files(bundle_dir)
    sagemaker = moto_session.client("sagemaker")
    model = sagemaker.describe_model(ModelName="post-modern-stack-v7")
    assert model["PrimaryContainer"]["Image"] == "1.dkr.ecr/postmodern:1"
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://models/{key}"
    assert model["ExecutionRoleArn"] == "arn:aws:iam::1:role/sm"
    tags = sagemaker.list_tags(ResourceArn=model["ModelArn"])["Tags"]
    assert {"Key": "postmodern:model_version", "Value": "v7"} in tags
    variant = sagemaker.describe_endpoint_config(EndpointConfigName="post-modern-stack-v7")["ProductionVariants"][0]
    assert variant["ModelName"] == "post-modern-stack-v7" and variant["InstanceType"] == "ml.m5.large"
    endpoint = sagemaker.describe_endpoint(EndpointName="post-modern-stack")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == "post-modern-stack-v7"


def test_a_later_deploy_updates_the_same_endpoint_and_deletes_nothing(bundle_dir, settings, moto_session, tmp_path):
    deploy_to_sagemaker(bundle_dir, "v7", settings, boto_session=moto_session)
    later = small_bundle("v8", ["a", "b", "c", "d"]).save(tmp_path / "v8")
    assert deploy_to_sagemaker(later, "v8", settings, boto_session=moto_session) == "post-modern-stack"
    sagemaker = moto_session.client("sagemaker")
    (endpoint,) = sagemaker.list_endpoints()["Endpoints"]
    assert endpoint["EndpointName"] == "post-modern-stack" and endpoint["EndpointStatus"] == "InService"
    described = sagemaker.describe_endpoint(EndpointName="post-modern-stack")
    assert described["EndpointConfigName"] == "post-modern-stack-v8"
    assert described["ProductionVariants"][0]["VariantName"] == "AllTraffic"
    # every version stays, for a rollback: models, configurations and archives
    assert {m["ModelName"] for m in sagemaker.list_models()["Models"]} == {
        "post-modern-stack-v7",
        "post-modern-stack-v8",
    }
    configs = {c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]}
    assert configs == {"post-modern-stack-v7", "post-modern-stack-v8"}
    keys = {o["Key"] for o in moto_session.client("s3").list_objects_v2(Bucket="models")["Contents"]}
    assert keys == {"post-modern-stack/v7/model.tar.gz", "post-modern-stack/v8/model.tar.gz"}
    assert "vocab.json" in archive_names(moto_session, "models", "post-modern-stack/v8/model.tar.gz", tmp_path)


def test_an_endpoint_still_updating_is_waited_for_before_the_next_update(bundle_dir, settings):
    aws = FakeAws({"post-modern-stack": "Updating"})
    deploy_to_sagemaker(bundle_dir, "v9", settings, boto_session=aws)
    methods = aws.methods()
    assert methods.index("get_waiter") < methods.index("update_endpoint")
    assert aws.endpoints["post-modern-stack"] == "InService"


def test_an_endpoint_that_does_not_come_into_service_fails_with_sagemaker_reason(bundle_dir, settings):
    aws = FakeAws(fails_with="the container did not answer /ping")
    with pytest.raises(SageMakerDeployError, match="not in service: the container did not answer /ping"):
        deploy_to_sagemaker(bundle_dir, "v7", settings, boto_session=aws)
    assert not [method for method in aws.methods() if "delete" in method]


def test_a_failed_endpoint_is_left_to_the_user_with_the_command_to_delete_it(bundle_dir, settings):
    aws = FakeAws({"post-modern-stack": "Failed"}, fails_with="out of capacity")
    with pytest.raises(SageMakerDeployError, match="out of capacity.*delete-endpoint --endpoint-name post-modern"):
        deploy_to_sagemaker(bundle_dir, "v7", settings, boto_session=aws)
    assert not [method for method in aws.methods() if "delete" in method or "update" in method]


@pytest.mark.parametrize(
    ("endpoint", "version"),
    [
        ("post-modern-stack", "20250101T120000-1712345678901234"),
        ("a-very-long-endpoint-name-that-fills-most-of-the-sixty-three-characters", "20250101T120000-17"),
        ("shop", "argo/run_7 (retry)"),
    ],
)
def test_resource_names_fit_sagemaker_rules_and_keep_the_version(endpoint, version):
    name = resource_name(endpoint, version)
    assert len(name) <= 63 and re.fullmatch(r"[A-Za-z0-9](-*[A-Za-z0-9])*", name)
    assert name.endswith(re.sub(r"[^A-Za-z0-9-]+", "-", version).strip("-"))
    assert resource_name(endpoint, version + "1") != name


def test_the_flow_deploy_step_takes_the_sagemaker_path_when_asked(settings, moto_session):
    assert deploy_bundle(small_bundle("v10", ["a", "b"]), settings) == "SageMaker endpoint post-modern-stack"
    keys = [o["Key"] for o in moto_session.client("s3").list_objects_v2(Bucket="models")["Contents"]]
    assert keys == ["post-modern-stack/v10/model.tar.gz"]
    assert not (settings.registry_dir / "LATEST").exists()  # not the local registry


def test_the_container_serves_the_contract_from_opt_ml_model():
    """The Dockerfile's `serve` command is a valid `postmodern serve` on SageMaker's port and model folder."""
    from postmodern.cli import build_parser

    dockerfile = (Path(__file__).parents[1] / "Dockerfile").read_text()
    command = re.search(r"exec (postmodern serve [^\\]+)\\n", dockerfile).group(1)

    def parsed_as_the_shell_runs_it(environment: dict[str, str]):
        words = subprocess.run(
            ["sh", "-c", f'for word in {command}; do echo "$word"; done'],
            env={"PATH": os.environ["PATH"], **environment},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return build_parser().parse_args(words[1:])

    args = parsed_as_the_shell_runs_it({})
    assert (args.command, args.host, args.port, str(args.model)) == ("serve", "0.0.0.0", 8080, "/opt/ml/model")
    assert args.workers == len(os.sched_getaffinity(0))  # one per CPU of the instance
    assert parsed_as_the_shell_runs_it({"SERVING_WORKERS": "3"}).workers == 3
    assert "EXPOSE 8080" in dockerfile and 'CMD ["serve"]' in dockerfile
