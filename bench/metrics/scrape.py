#!/usr/bin/env python3
"""/metrics scrape benchmark (standard library only; psql for PostgreSQL).

Starts `kiln serve` on a fresh SQLite data dir (or the PostgreSQL database of
SCRAPE_DATABASE_URL, which it empties first), creates a project, stops the server and
seeds the database directly with SCRAPE_BUILDS ended builds (default 1,000,000, one job
each, over three branches), 200 running builds, 50 queued jobs and 20 agents — so every
count /metrics takes is taken over a large history. It starts the server again, sends
real events through the API (ingest, build-end and HTTP histograms fill up), calls a
dozen routes, then times SCRAPE_REQUESTS sequential scrapes (default 300) over one
keep-alive connection, as Prometheus does. Prints p50/p95/p99/max and the body size;
writes results/latest.md.

Usage: SCRAPE_KILN=target/release/kiln python3 bench/metrics/scrape.py
"""

import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from seeded import call as http_call, free_port, fresh_project, run_sql, start as start_kiln  # noqa: E402

KILN = os.environ.get("SCRAPE_KILN", "target/release/kiln")
BUILDS = int(os.environ.get("SCRAPE_BUILDS", "1000000"))
REQUESTS = int(os.environ.get("SCRAPE_REQUESTS", "300"))
DATABASE_URL = os.environ.get("SCRAPE_DATABASE_URL")
ADMIN = "kiln_bench_metrics_admin_0123456789abcdef"
HERE = os.path.dirname(os.path.abspath(__file__))



def start(data_dir, port):
    return start_kiln(KILN, data_dir, port, ADMIN, DATABASE_URL)


def call(connection, method, path, body=None, token=ADMIN):
    return http_call(connection, method, path, token, body)


SEED = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {builds})
INSERT INTO builds (project_id, run_id, number, status, branch, commit_sha, created_at,
  started_at, ended_at, duration_ms, last_event_at, last_event_id, last_seq)
SELECT {project}, 'seed-' || i, i,
  CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'success' END,
  CASE i % 3 WHEN 0 THEN 'main' WHEN 1 THEN 'dev' ELSE 'feature/x' END,
  'c0ffee', 1700000000000 + i * 1000, 1700000000000 + i * 1000,
  1700000000000 + i * 1000 + 60000, 60000, 1700000000000 + i * 1000 + 60000, 0, 3 FROM n;
INSERT INTO jobs (build_id, project_id, step, position, state, priority, depends_on, labels,
  spec, created_at, queued_at, started_at, finished_at)
SELECT id, project_id, 'build', 0, 'passed', 5, '[]', '[]', '{{}}', created_at, created_at,
  created_at, created_at + 60000 FROM builds WHERE project_id = {project};
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
INSERT INTO builds (project_id, run_id, number, status, branch, created_at, started_at,
  last_event_at, last_event_id, last_seq)
SELECT {project}, 'running-' || i, {builds} + i, 'running', 'main', 1800000000000,
  1800000000000, 1800000000000, 0, 1 FROM n;
INSERT INTO jobs (build_id, project_id, step, position, state, priority, depends_on, labels,
  spec, created_at, queued_at)
SELECT id, project_id, 'build', 0, 'queued', 5, '[]', '[]', '{{}}', created_at, created_at
  FROM builds WHERE run_id LIKE 'running-%' AND number <= {builds} + 50;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
INSERT INTO agents (name, labels, concurrency, executor, registered_at, last_seen_at)
SELECT 'agent-' || i, '[]', 2, 'process', 1800000000000, 1800000000000 FROM n;
UPDATE projects SET last_build_number = {builds} + 200 WHERE id = {project};
"""


def seed(data_dir, project_id):
    sql = SEED.format(builds=BUILDS, project=project_id)
    started = time.monotonic()
    run_sql(data_dir, DATABASE_URL, sql)
    print(f"seeded {BUILDS:,} builds + jobs in {time.monotonic() - started:.1f} s", flush=True)


def main():
    data_dir = tempfile.mkdtemp(prefix="kiln-bench-metrics-")
    port = free_port()
    project_id = fresh_project(KILN, data_dir, port, ADMIN, DATABASE_URL)
    seed(data_dir, project_id)

    server = start(data_dir, port)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        status, body = call(connection, "POST", "/api/v1/projects/bench/tokens",
                            {"name": "bench", "scopes": ["ingest", "read"]})
        assert status == 201, body
        token = json.loads(body)["token"]
        # Real traffic: builds that end (the build-end consumer), reads of many routes.
        for n in range(50):
            run = f"live-{n}"
            events = [{"runId": run, "event": "build_started", "branch": "main"},
                      {"runId": run, "event": "stage_started", "stage": "Build"},
                      {"runId": run, "event": "stage_completed", "stage": "Build"},
                      {"runId": run, "event": "build_completed" if n % 5 else "build_failed"}]
            status, body = call(connection, "POST", "/api/v1/events", events, token)
            assert status == 201, body
            call(connection, "GET", f"/api/v1/builds/{run}", token=token)
            call(connection, "GET", f"/api/v1/builds/{run}/events", token=token)
        for path in ["/healthz", "/readyz", "/api/v1/projects", "/api/v1/builds?project=bench",
                     "/api/v1/queue", "/api/v1/agents", "/api/v1/whoami", "/api/v1/nope",
                     "/api/v1/builds/missing"]:
            call(connection, "GET", path)
        time.sleep(1)

        scrape = http.client.HTTPConnection("127.0.0.1", port)
        times = []
        size = 0
        for _ in range(REQUESTS):
            started = time.perf_counter()
            scrape.request("GET", "/metrics")
            response = scrape.getresponse()
            text = response.read()
            times.append((time.perf_counter() - started) * 1000)
            assert response.status == 200, text
            size = len(text)
        times.sort()
        series = sum(1 for line in text.decode().splitlines() if line and not line.startswith("#"))
        quantile = lambda q: times[min(len(times) - 1, int(q * len(times)))]
        engine = "PostgreSQL" if DATABASE_URL else "SQLite"
        result = (
            f"| engine | builds | scrapes | p50 ms | p95 ms | p99 ms | max ms | bytes | series |\n"
            f"|---|---|---|---|---|---|---|---|---|\n"
            f"| {engine} | {BUILDS:,} | {REQUESTS} | {statistics.median(times):.2f} | "
            f"{quantile(0.95):.2f} | {quantile(0.99):.2f} | {times[-1]:.2f} | {size:,} | {series} |\n"
        )
        print(result)
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "latest.md"), "a") as out:
            out.write(f"kiln: {KILN}\n\n{result}\n")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
