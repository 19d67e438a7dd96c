#!/usr/bin/env bash
# Starts a real S3-compatible server for the S3 blob store's tests: moto 5 (PyPI)
# on 127.0.0.1:${KILN_S3_PORT:-59000} with request authentication on, so signatures and
# credentials are checked. Its first three requests, unauthenticated, create an IAM user,
# its access key and a policy allowing s3:*; the bucket is then created with that key.
# Idempotent: a server already answering on the port is reused with the credentials it
# was given. Prints the export lines the tests read (KILN_TEST_S3_ENDPOINT, _BUCKET,
# _REGION, _ACCESS_KEY, _SECRET_KEY) and KILN_REQUIRE_S3=1, which makes them fail rather
# than skip without a server.
# Usage: eval "$(bash .ci/s3.sh)"
set -euo pipefail
port=${KILN_S3_PORT:-59000}
endpoint="http://127.0.0.1:${port}"
state="/tmp/kiln-s3-${port}.env"

if ! python3 -c 'import moto.server, flask, flask_cors, boto3' 2>/dev/null; then
  echo "installing moto (S3 and IAM) and its server's Flask" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq python3-pip; } >&2
  fi
  # A distribution's Python may refuse user packages (PEP 668): then install anyway, the
  # machine is a CI runner.
  # moto[s3] and Flask are all its server needs for S3 and IAM (moto[server] adds the
  # other services' dependencies: CloudFormation's linter, Docker's client, …).
  packages=('moto[s3]>=5,<6' flask flask-cors)
  python3 -m pip install --quiet "${packages[@]}" >&2 \
    || python3 -m pip install --quiet --break-system-packages "${packages[@]}" >&2
fi

# Whether something answers HTTP on the port (any status).
answers() {
  python3 - "$endpoint" 2>/dev/null <<'PY'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=2)
except urllib.error.HTTPError:
    pass
PY
}

if answers && [ -s "$state" ]; then
  cat "$state"
  echo "export KILN_REQUIRE_S3=1"
  exit 0
fi
if answers; then
  echo "port $port answers but was not started by this script; set KILN_S3_PORT" >&2
  exit 1
fi

log=$(mktemp /tmp/kiln-s3.XXXXXX.log)
INITIAL_NO_AUTH_ACTION_COUNT=3 MOTO_ALLOW_NONEXISTENT_REGION=true \
  nohup python3 -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 </dev/null &
echo "moto server pid $! on $endpoint, log $log" >&2
for _ in $(seq 1 100); do
  answers && break
  sleep 0.2
done
answers || { echo "moto did not answer on $endpoint:" >&2; cat "$log" >&2; exit 1; }

python3 - "$endpoint" >"$state.new" <<'PY'
import json, sys
import boto3
from botocore.config import Config

endpoint = sys.argv[1]
region, bucket = "us-east-1", "kiln-test"
unauthenticated = dict(endpoint_url=endpoint, region_name=region,
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
iam = boto3.client("iam", **unauthenticated)
iam.create_user(UserName="kiln")
key = iam.create_access_key(UserName="kiln")["AccessKey"]
iam.put_user_policy(UserName="kiln", PolicyName="s3", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}))
s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                  aws_access_key_id=key["AccessKeyId"],
                  aws_secret_access_key=key["SecretAccessKey"],
                  config=Config(s3={"addressing_style": "path"}))
s3.create_bucket(Bucket=bucket)
print(f"export KILN_TEST_S3_ENDPOINT={endpoint}")
print(f"export KILN_TEST_S3_BUCKET={bucket}")
print(f"export KILN_TEST_S3_REGION={region}")
print(f"export KILN_TEST_S3_ACCESS_KEY={key['AccessKeyId']}")
print(f"export KILN_TEST_S3_SECRET_KEY={key['SecretAccessKey']}")
PY
mv "$state.new" "$state"
cat "$state"
echo "export KILN_REQUIRE_S3=1"
