"""Static checks of what ships in deploy/ and the Dockerfile.

cfn-lint for the CloudFormation template, the Kubernetes JSON schemas for the
manifests, hadolint for the Dockerfile, and the IAM lists in the template equal to
what the code declares it calls.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import orjson
import pytest
import yaml

from pipeline import iam
from pipeline.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30"


def _bin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    assert Path(found).exists(), f"{name} is a dev dependency and must be installed"
    return found


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "cloudformation" / "riposte.yaml").read_text())
    return data


def _role_actions(template: dict[str, Any], role_name: str) -> set[str]:
    """Every action a role's inline and managed (in-template) policies allow."""
    resources = template["Resources"]
    role = resources[role_name]["Properties"]
    documents = [p["PolicyDocument"] for p in role.get("Policies", [])]
    documents += [resources[ref["Ref"]]["Properties"]["PolicyDocument"]
                  for ref in role.get("ManagedPolicyArns", [])]
    actions: set[str] = set()
    for document in documents:
        for statement in document["Statement"]:
            listed = statement["Action"]
            actions.update([listed] if isinstance(listed, str) else listed)
    return actions


def test_cloudformation_template_passes_cfn_lint() -> None:
    result = subprocess.run([_bin("cfn-lint"), str(DEPLOY / "cloudformation" / "riposte.yaml")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint_and_is_shaped_for_production() -> None:
    result = subprocess.run([_bin("hadolint"), str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, "multi-stage build"
    assert "USER 10001" in text, "runs as a non-root user"
    assert 'ENTRYPOINT ["riposte"]' in text, "exec form, so SIGTERM reaches riposte"
    assert "HEALTHCHECK" in text
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "pip install" not in final_stage, "no build tools in the final image"
    assert (ROOT / ".dockerignore").exists()


@pytest.mark.parametrize(("name", "doc"), [d for d in _k8s_docs()
                                           if not d[1]["apiVersion"].startswith(("keda.sh",
                                                                                 "kustomize"))],
                         ids=lambda v: v if isinstance(v, str) else v.get("kind", "?"))
def test_kubernetes_manifests_validate_against_the_schema(name: str, doc: dict[str, Any]
                                                          ) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_deployment_is_hardened_and_drains_in_time() -> None:
    docs = {d["kind"]: d for _, d in _k8s_docs()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"] and container["resources"]["requests"]
    config = parse_config(tomllib.loads(docs["ConfigMap"]["data"]["riposte.toml"]),
                          origin="configmap", env={})
    assert pod["terminationGracePeriodSeconds"] > config.service.shutdown_deadline
    assert config.metrics.host == "0.0.0.0", "probes reach the pod IP, not loopback"
    keda = docs["ScaledObject"]
    assert keda["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert {t["type"] for t in keda["spec"]["triggers"]} == {"aws-sqs-queue",
                                                             "aws-kinesis-stream"}
    assert docs["PodDisruptionBudget"]["spec"]["selector"] == \
        docs["Deployment"]["spec"]["selector"]


def test_ecs_task_definition_drains_in_time_and_reads_secrets() -> None:
    task = orjson.loads((DEPLOY / "ecs" / "task-definition.json").read_bytes())
    container = task["containerDefinitions"][0]
    assert container["stopTimeout"] > 25  # service.shutdown_deadline default
    assert container["healthCheck"]["command"][0] == "CMD"
    assert container["logConfiguration"]["logDriver"] == "awslogs"
    assert all(s["valueFrom"].startswith("arn:aws:secretsmanager:") for s in container["secrets"])
    assert task["requiresCompatibilities"] == ["FARGATE"]


def test_reader_role_grants_exactly_what_the_code_calls() -> None:
    assert _role_actions(_template(), "ReaderRole") == set(iam.reader_actions())


def test_responder_role_adds_exactly_what_the_actions_declare() -> None:
    template = _template()
    responder = _role_actions(template, "ResponderRole")
    assert responder == set(iam.responder_actions())
    assert not any(a.startswith(("ec2:Create", "ec2:Modify", "iam:Update", "iam:Put"))
                   for a in _role_actions(template, "ReaderRole")), "the reader cannot contain"


def test_every_aws_service_the_code_calls_is_in_a_policy() -> None:
    """Each ``aws.client("svc")`` in the code has permissions for that service somewhere."""
    import re

    services: set[str] = set()
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "sinks").rglob("*.py")]:
        services.update(re.findall(r"client\(\s*\"([a-z0-9-]+)\"", path.read_text()))
    prefixes = {a.split(":")[0] for a in iam.responder_actions()}
    aliases = {"route53resolver": "route53resolver", "sts": "sts"}
    missing = {s for s in services if aliases.get(s, s) not in prefixes}
    assert not missing, f"clients created without permissions in the policies: {missing}"


def test_queue_policy_only_accepts_our_rules() -> None:
    statement = _template()["Resources"]["FindingsQueuePolicy"]["Properties"][
        "PolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    rules = {name for name, r in _template()["Resources"].items()
             if r["Type"] == "AWS::Events::Rule"}
    allowed = {ref["Fn::GetAtt"][0] for ref in statement["Condition"]["ArnEquals"]["aws:SourceArn"]}
    assert allowed == rules, "exactly our rules may send"
    assert "aws:SourceAccount" in statement["Condition"]["StringEquals"]


def test_example_config_is_valid() -> None:
    data = tomllib.loads((ROOT / "examples" / "riposte.toml").read_text())
    config = parse_config(data, origin="examples/riposte.toml", env={})
    assert config.containment.mode == "dry-run"
