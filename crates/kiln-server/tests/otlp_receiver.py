"""An OTLP/HTTP trace receiver for Kiln's export test: decodes every request with the
official protobuf schema (the `opentelemetry-proto` package, strict
`google.protobuf.json_format.Parse`: an unknown field or a wrong type fails), round-trips
it through the binary wire format, and appends the decoded spans to a file, one JSON
line per request.

OTLP/JSON writes trace and span ids as hex where protobuf's JSON mapping expects base64;
they are converted first (as collectors do), and must be 16 and 8 bytes.

Usage: otlp_receiver.py PORT_FILE OUT_FILE [FAIL_FIRST]
  binds 127.0.0.1 on a free port, writes it to PORT_FILE; answers the first FAIL_FIRST
  requests 503 (retryable), then decodes. A request it cannot decode gets 400 and a
  line {"error": ...} in OUT_FILE.
"""

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

PORT_FILE, OUT_FILE = sys.argv[1], sys.argv[2]
FAIL_FIRST = int(sys.argv[3]) if len(sys.argv) > 3 else 0
LOCK = threading.Lock()
STATE = {"failures_left": FAIL_FIRST}
ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


def ids_to_base64(value):
    if isinstance(value, list):
        return [ids_to_base64(item) for item in value]
    if isinstance(value, dict):
        converted = {}
        for key, item in value.items():
            if key in ID_LENGTHS and isinstance(item, str):
                raw = bytes.fromhex(item)
                if len(raw) != ID_LENGTHS[key]:
                    raise ValueError(f"{key} {item!r} is {len(raw)} bytes, not {ID_LENGTHS[key]}")
                converted[key] = base64.b64encode(raw).decode()
            else:
                converted[key] = ids_to_base64(item)
        return converted
    return value


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def decode(body):
    request = trace_service_pb2.ExportTraceServiceRequest()
    json_format.Parse(json.dumps(ids_to_base64(json.loads(body))), request)
    # The binary wire format, as a collector receiving protobuf would see it.
    request = trace_service_pb2.ExportTraceServiceRequest.FromString(request.SerializeToString())
    spans = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append({
                    "resource": resource,
                    "scope": scope_spans.scope.name,
                    "traceId": span.trace_id.hex(),
                    "spanId": span.span_id.hex(),
                    "parentSpanId": span.parent_span_id.hex(),
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": {kv.key: any_value(kv.value) for kv in span.attributes},
                    "statusCode": span.status.code,
                    "statusMessage": span.status.message,
                })
    return spans


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=b"{}"):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            return self.answer(404)
        with LOCK:
            if STATE["failures_left"] > 0:
                STATE["failures_left"] -= 1
                return self.answer(503)
        try:
            if self.headers.get("content-type") != "application/json":
                raise ValueError(f"content-type {self.headers.get('content-type')!r}")
            line = {"spans": decode(body)}
            status = 200
        except Exception as error:  # reported to the test through the file
            line = {"error": f"{type(error).__name__}: {error}"}
            status = 400
        with LOCK, open(OUT_FILE, "a") as out:
            out.write(json.dumps(line) + "\n")
        self.answer(status)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(PORT_FILE + ".tmp", "w") as port_file:
    port_file.write(str(server.server_address[1]))
import os  # noqa: E402

os.replace(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
