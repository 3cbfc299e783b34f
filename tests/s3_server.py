"""A real S3-compatible server (moto in server mode) as a separate process on 127.0.0.1.

IAM authentication is switched on after a few set-up calls, so wrong and read-only
credentials are refused the way AWS refuses them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import requests

SETUP_CALLS = 7  # provision's calls (1 bucket + 2 users × 3): none left over for a test


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen
    bucket: str
    writer: tuple[str, str]
    reader: tuple[str, str]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int | None = None, log: Path | None = None) -> tuple[str, subprocess.Popen]:
    port = port or free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(SETUP_CALLS)}
    out = log.open("ab") if log else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=out,
        stderr=out,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=1)
            return endpoint, process
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("moto server did not start")


def provision(endpoint: str, bucket: str = "podcast") -> tuple[tuple[str, str], tuple[str, str]]:
    """Create the bucket, a writer and a read-only user; return their access keys."""
    admin = dict(
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
    )
    boto3.client("s3", **admin).create_bucket(Bucket=bucket)
    iam = boto3.client("iam", **admin)
    keys = []
    for name, actions in (("writer", ["s3:*"]), ("reader", ["s3:GetObject", "s3:ListBucket"])):
        iam.create_user(UserName=name)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        keys.append((key["AccessKeyId"], key["SecretAccessKey"]))
    return keys[0], keys[1]
