"""Least-privilege IAM policies derived from what the code calls.

Two roles, so a team can run detection without granting response rights:

* **reader**: consume (SQS, Kinesis, the S3 objects CloudTrail notifications
  name), keep state (DynamoDB), read secrets, re-fetch GuardDuty findings, and
  deliver to the AWS sinks;
* **responder**: the reader's rights plus exactly the permissions the
  containment actions declare (each action module lists them next to the calls
  it makes; all registered actions by default, or only the kinds passed to
  ``responder_actions``), plus ``sts:AssumeRole`` for the member-account roles.

``python -m pipeline.iam reader|responder`` prints a policy document; the
CloudFormation template in ``deploy/cloudformation`` carries the same lists and
a test keeps the two equal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import orjson

# Feature → the API permissions its code calls. tests/unit/test_deploy.py checks that every
# AWS service a module creates a client for has permissions here or in an action's list.
READER_FEATURES: dict[str, tuple[str, ...]] = {
    "source.sqs": ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                   "sqs:GetQueueAttributes", "sqs:SendMessage"),
    "source.s3_cloudtrail": ("s3:GetObject", "s3:ListBucket"),
    "source.kinesis": ("kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"),
    "state.dynamodb": ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                       "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:DescribeTable"),
    "secrets": ("secretsmanager:GetSecretValue",),
    "trust.refetch_guardduty": ("guardduty:GetFindings",),
    "sink.security_hub": ("securityhub:BatchImportFindings", "securityhub:DescribeHub"),
    # PublishBatch is authorized as sns:Publish; the healthcheck reads the topic.
    "sink.sns": ("sns:Publish", "sns:GetTopicAttributes"),
    "sink.eventbridge": ("events:PutEvents", "events:DescribeEventBus"),
}

RESPONDER_EXTRA: tuple[str, ...] = ("sts:AssumeRole",)


def reader_actions(features: Iterable[str] | None = None) -> list[str]:
    chosen = READER_FEATURES if features is None else {f: READER_FEATURES[f] for f in features}
    return sorted({action for actions in chosen.values() for action in actions})


def containment_actions(kinds: Iterable[str] | None = None) -> list[str]:
    """The permissions the containment actions declare (all registered ones by default)."""
    from pipeline.actions.registry import all_permissions

    return sorted(all_permissions(kinds))


def responder_actions(kinds: Iterable[str] | None = None) -> list[str]:
    return sorted({*reader_actions(), *containment_actions(kinds), *RESPONDER_EXTRA})


def policy_document(actions: list[str]) -> dict[str, Any]:
    return {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    role = args[0] if args else "reader"
    if role not in ("reader", "responder"):
        print("usage: python -m pipeline.iam reader|responder", file=sys.stderr)
        return 2
    actions = reader_actions() if role == "reader" else responder_actions()
    sys.stdout.write(orjson.dumps(policy_document(actions), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
