"""Cold start of the Lambda binaries, measured here.

Starts each release binary (target/release/{launch,exchange,sweep,notify}) as Lambda would:
with a Runtime API to poll (served by this script) and its configuration pointing at moto
(the secret is read from moto's Secrets Manager, as it is from AWS at init). Measures:

- init: from exec to the binary's first GET /runtime/invocation/next (configuration,
  SDK setup, the Secrets Manager read, key setup, HTTP client);
- first: the first invocation, from handing out the event to receiving the response.

The floor (target/release/floor, crate bench/floor, same release profile) is measured first
when it was built: the smallest lambda_runtime function that reads one Secrets Manager secret
at init. Each function's init is also given as a multiple of the floor's (target: <= 1.15).

Usage: python bench-cold-start.py MOTO_URL [RUNS] [BIN_DIR]   (from the repository root;
BIN_DIR defaults to target/release)
The numbers depend on this machine and on moto standing in for AWS; they compare builds,
they do not predict Lambda's own figures.
"""

import base64
import http.server
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import uuid

import boto3

MOTO = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
BIN_DIR = sys.argv[3] if len(sys.argv) > 3 else "target/release"
AWS = dict(endpoint_url=MOTO, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
EVENTS = {
    "floor": None,  # answers any event; here an empty SQS batch, like notify
    "launch": "infra/events/apigw-http-healthz.json",
    "exchange": "infra/events/apigw-http-token-iam.json",
    "sweep": "infra/events/eventbridge-scheduled.json",
    "notify": None,  # an empty SQS batch: no webhook is called
}


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    event = b"{}"
    first_next = None
    answered = None
    handed_out = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        cls = type(self)
        if cls.first_next is None:
            cls.first_next = time.perf_counter()
        if cls.handed_out is not None:
            # Second poll: the bench is over; keep the binary waiting.
            time.sleep(30)
            return
        cls.handed_out = time.perf_counter()
        self.send_response(200)
        self.send_header("lambda-runtime-aws-request-id", str(uuid.uuid4()))
        self.send_header("lambda-runtime-deadline-ms", str(int((time.time() + 30) * 1000)))
        self.send_header("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:123456789012:function:bench")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(cls.event)))
        self.end_headers()
        self.wfile.write(cls.event)

    def do_POST(self):
        cls = type(self)
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        cls.answered = time.perf_counter()
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()


def setup():
    ddb = boto3.client("dynamodb", **AWS)
    name = f"bench-{secrets.token_hex(4)}"
    attrs = ["pk", "sk", "due_pk", "due_sk", "outbox_pk", "outbox_sk"]
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": "S"} for a in attrs],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": index,
                "KeySchema": [{"AttributeName": f"{index}_pk", "KeyType": "HASH"}, {"AttributeName": f"{index}_sk", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index in ["due", "outbox"]
        ],
    )
    queue = boto3.client("sqs", **AWS).create_queue(QueueName=name)["QueueUrl"]
    key = lambda n: base64.b64encode(secrets.token_bytes(n)).decode()
    doc = {
        "client_secret": key(32),
        "webhook_secret": "whsec_" + key(24),
        "token_keys": {"k1": key(32)},
        "active_token_key": "k1",
        "link_key": key(32),
    }
    arn = boto3.client("secretsmanager", **AWS).create_secret(Name=name, SecretString=json.dumps(doc))["ARN"]
    return name, queue, arn


def once(binary, event, env):
    # A handler class of its own per run: a late poll from the previous run's binary (killed,
    # its request still being served) must not take this run's event.
    Api = type("Api", (RuntimeApi,), {"event": event, "first_next": None, "answered": None, "handed_out": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}")
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while Api.answered is None:
            if proc.poll() is not None:
                raise SystemExit(f"{binary} exited during the benchmark ({proc.returncode})")
            if time.perf_counter() - start > 30:
                raise SystemExit(f"{binary}: no answer in 30 s")
            time.sleep(0.001)
        return Api.first_next - start, Api.answered - Api.handed_out
    finally:
        proc.kill()
        proc.wait()
        server.shutdown()


def main():
    table, queue, arn = setup()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ENDPOINT_URL": MOTO,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "SPKEEPER_CLIENT_ID": "6f1a8d2c-3b4e-4f5a-9b8c-7d6e5f4a3b2c",
        "SPKEEPER_PUBLIC_URL": "https://addin.example.com",
        "SPKEEPER_ALLOWED_SP_HOSTS": "*.sharepoint.com",
        "SPKEEPER_STORE": "dynamodb",
        "SPKEEPER_TABLE": table,
        "SPKEEPER_QUEUE_URL": queue,
        "SPKEEPER_SECRETS_ARN": arn,
        "SPKEEPER_TOKEN_AUTH": "iam",
        "SPKEEPER_WEBHOOK_URL": "https://hooks.example.com/spkeeper",
    }
    print(f"{'function':<9} {'init ms (median, p90)':>24} {'x floor':>8} {'first invocation ms (median)':>30}  size")
    floor = None
    for name, event_file in EVENTS.items():
        binary = f"{BIN_DIR}/{name}"
        if name == "floor" and not os.path.exists(binary):
            continue
        event = open(event_file, "rb").read() if event_file else b'{"Records": []}'
        inits, firsts = [], []
        for _ in range(RUNS):
            init, first = once(binary, event, env)
            inits.append(init * 1000)
            firsts.append(first * 1000)
        inits.sort()
        p90 = inits[min(len(inits) - 1, int(len(inits) * 0.9))]
        size = os.path.getsize(binary)
        median = statistics.median(inits)
        if name == "floor":
            floor = median
        ratio = f"{median / floor:.2f}" if floor else "-"
        print(f"{name:<9} {median:>15.1f} {p90:>8.1f} {ratio:>8} {statistics.median(firsts):>30.1f}  {size:,} bytes")


if __name__ == "__main__":
    main()
