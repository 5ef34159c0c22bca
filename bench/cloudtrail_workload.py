"""The vocabulary of the synthetic CloudTrail workloads (bench_detect, bench_replay).

Records are variations of the project's real CloudTrail fixtures: these are the APIs,
user agents and start time the variations draw from, kept in one place so the two
benchmarks measure the same kind of traffic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

BASE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cloudtrail_rules" / "base"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
APIS = [("sts.amazonaws.com", "GetCallerIdentity"), ("s3.amazonaws.com", "GetObject"),
        ("s3.amazonaws.com", "ListBuckets"), ("ec2.amazonaws.com", "DescribeInstances"),
        ("iam.amazonaws.com", "ListUsers"), ("iam.amazonaws.com", "CreateUser"),
        ("lambda.amazonaws.com", "Invoke"), ("kms.amazonaws.com", "Decrypt")]
# The first two are the usual SDKs; the others are rarer and make some rules fire.
AGENTS = ["aws-cli/2.15.59 md/awscrt#0.19.19 ua/2.0 os/linux#6.1", "Boto3/1.34.0 Botocore/1.34.0",
          "aws-sdk-go/1.44.0 (go1.21; linux; amd64)", "console.amazonaws.com", "curl/8.4.0"]
