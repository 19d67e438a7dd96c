#!/usr/bin/env python3
"""Analytics and prediction over a large history (standard library only; psql for
PostgreSQL).

Starts `kiln serve` on a fresh SQLite data dir (or the PostgreSQL database of
ANALYTICS_DATABASE_URL, which it empties first), creates a project, stops the server and
seeds the database directly with ANALYTICS_BUILDS ended builds (default 1,000,000) spread
evenly over the 365 days before now — 85% success, 10% failed, 5% cancelled, three
branches, durations with a time-of-day pattern, two stages each, custom metrics on one in
five — then starts it again and times ANALYTICS_REQUESTS (default 20) requests each of:
the analytics of the last 90 days (about 250,000 builds), of the last 7 days, the
prediction of main, and `GET /api/v1/projects/bench` as the baseline of the same run.
Each request is first sent once on its own ("first": over a range nothing has read
yet, analytics read every build and keep the closed days) and then timed
ANALYTICS_REQUESTS times.
Analytics reads no events, so none are seeded.

Usage: ANALYTICS_KILN=target/release/kiln python3 bench/analytics/analytics.py
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

KILN = os.environ.get("ANALYTICS_KILN", "target/release/kiln")
BUILDS = int(os.environ.get("ANALYTICS_BUILDS", "1000000"))
REQUESTS = int(os.environ.get("ANALYTICS_REQUESTS", "20"))
DATABASE_URL = os.environ.get("ANALYTICS_DATABASE_URL")
ADMIN = "kiln_bench_analytics_admin_0123456789abcdef"
HERE = os.path.dirname(os.path.abspath(__file__))
DAY = 86_400_000



def start(data_dir, port):
    return start_kiln(KILN, data_dir, port, ADMIN, DATABASE_URL)


def call(connection, method, path, body=None, token=ADMIN):
    return http_call(connection, method, path, token, body)


# {start}: the first build's start; builds follow every {step} ms. Durations: 4 min at
# night, 8 min during the day (08-18 UTC), plus up to 60 s of spread.
SEED = """
WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i < {builds})
INSERT INTO builds (project_id, run_id, number, status, branch, commit_sha, created_at,
  started_at, ended_at, duration_ms, last_event_at, last_event_id, last_seq, metrics)
SELECT {project}, 'seed-' || i, i,
  CASE WHEN i % 20 = 0 THEN 'cancelled' WHEN i % 10 = 0 THEN 'failed' ELSE 'success' END,
  CASE i % 3 WHEN 0 THEN 'main' WHEN 1 THEN 'dev' ELSE 'feature/x' END,
  'c' || (i / 4), {start} + i * {step}, {start} + i * {step},
  {start} + i * {step} + (CASE WHEN (({start} + i * {step}) / 3600000) % 24 BETWEEN 8 AND 17 THEN 480000 ELSE 240000 END) + (i * 7919) % 60000,
  (CASE WHEN (({start} + i * {step}) / 3600000) % 24 BETWEEN 8 AND 17 THEN 480000 ELSE 240000 END) + (i * 7919) % 60000,
  {start} + i * {step} + 600000, 0, 6,
  CASE WHEN i % 5 = 0 THEN '{{"bundle_kb":' || (400 + i % 50) || ',"tests":' || (1200 + i % 7) || '}}' ELSE NULL END
FROM n;
INSERT INTO stages (build_id, name, position, status, started_at, ended_at, duration_ms)
SELECT id, 'build', 0, 'success', started_at, started_at + 60000, 60000 FROM builds WHERE project_id = {project};
INSERT INTO stages (build_id, name, position, status, started_at, ended_at, duration_ms)
SELECT id, 'test', 1, CASE WHEN status = 'failed' THEN 'failed' ELSE 'success' END,
  started_at + 60000, ended_at, duration_ms - 60000 FROM builds WHERE project_id = {project};
UPDATE projects SET last_build_number = {builds} WHERE id = {project};
"""


def seed(data_dir, project_id, now_ms):
    start_ms = now_ms - 365 * DAY
    step = max(1, (365 * DAY) // BUILDS)
    sql = SEED.format(builds=BUILDS, project=project_id, start=start_ms, step=step)
    started = time.monotonic()
    run_sql(data_dir, DATABASE_URL, sql)
    print(f"seeded {BUILDS:,} builds and {2 * BUILDS:,} stages in {time.monotonic() - started:.1f} s", flush=True)


def timed(connection, path, token):
    # The first request is timed on its own: over a range no request has read yet it reads
    # every build and keeps the closed days (analytics_days); later ones read those back.
    started = time.perf_counter()
    status, body = call(connection, "GET", path, token=token)
    first = (time.perf_counter() - started) * 1000
    assert status == 200, body
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        status, body = call(connection, "GET", path, token=token)
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200, body
    times.sort()
    quantile = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return first, statistics.median(times), quantile(0.95), len(body)


def main():
    data_dir = tempfile.mkdtemp(prefix="kiln-bench-analytics-")
    port = free_port()
    project_id = fresh_project(KILN, data_dir, port, ADMIN, DATABASE_URL)
    now_ms = int(time.time() * 1000)
    seed(data_dir, project_id, now_ms)

    server = start(data_dir, port)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port)
        engine = "PostgreSQL" if DATABASE_URL else "SQLite"
        rows = []
        for name, path in [
            ("baseline: GET project", "/api/v1/projects/bench"),
            ("analytics, 90 days", "/api/v1/projects/bench/analytics?from=" + time.strftime("%Y-%m-%d", time.gmtime((now_ms - 90 * DAY) / 1000))),
            ("analytics, 7 days", "/api/v1/projects/bench/analytics?from=" + time.strftime("%Y-%m-%d", time.gmtime((now_ms - 7 * DAY) / 1000))),
            ("prediction of main", "/api/v1/projects/bench/prediction?branch=main"),
        ]:
            first, p50, p95, size = timed(connection, path, ADMIN)
            rows.append(f"| {engine} | {name} | {first:.1f} | {p50:.1f} | {p95:.1f} | {size:,} |")
        ninety = "/api/v1/projects/bench/analytics?from=" + time.strftime("%Y-%m-%d", time.gmtime((now_ms - 90 * DAY) / 1000))
        status, body = call(connection, "GET", ninety)
        answer = json.loads(body)
        print(f"90 days: {answer['builds']:,} builds, success rate {answer['successRate']:.3f}, "
              f"p50 {answer['duration']['p50Ms']} ms, metrics {[m['name'] for m in answer['metrics']]}")
        status, body = call(connection, "GET", "/api/v1/projects/bench/prediction?branch=main")
        prediction = json.loads(body)
        print(f"prediction of main: {prediction['build']}, accuracy {prediction['accuracy']}")
        result = ("| engine | request | first ms | p50 ms | p95 ms | bytes |\n|---|---|---|---|---|---|\n"
                  + "\n".join(rows) + "\n")
        print(f"{BUILDS:,} builds, {REQUESTS} requests each\n{result}")
        os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
        with open(os.path.join(HERE, "results", "latest.md"), "a") as out:
            out.write(f"kiln: {KILN}, {BUILDS:,} builds\n\n{result}\n")
    finally:
        server.terminate()
        server.wait()
        if os.environ.get("ANALYTICS_KEEP"):
            print(f"kept the data dir: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
