"""Shared by the benchmarks that seed a large history straight into Kiln's database
(bench/metrics/scrape.py, bench/analytics/analytics.py): a `kiln serve` on a loopback
port with a fresh data dir (or an emptied PostgreSQL database), HTTP calls, a project
created through the API, and SQL run on either engine. Standard library only (psql for
PostgreSQL)."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kiln, data_dir, port, admin, database_url=None):
    """Starts `kiln serve`; returns the process once /healthz answers."""
    env = dict(os.environ, KILN_ADMIN_TOKEN=admin, KILN_LOG="warn")
    args = [kiln, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir]
    if database_url:
        args += ["--database-url", database_url]
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.05)
    server.kill()
    sys.exit("kiln did not start")


def call(connection, method, path, token, body=None):
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["content-type"] = "application/json"
        body = json.dumps(body)
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def run_sql(data_dir, database_url, sql):
    """Runs a script on the server's database (stopped) and analyzes it."""
    if database_url:
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", database_url, "-c", sql], check=True)
        subprocess.run(["psql", "-q", database_url, "-c", "ANALYZE"], check=True)
    else:
        import sqlite3

        db = sqlite3.connect(os.path.join(data_dir, "kiln.db"))
        db.executescript(sql)
        db.execute("ANALYZE")
        db.commit()
        db.close()


def fresh_project(kiln, data_dir, port, admin, database_url=None, slug="bench"):
    """Empties the PostgreSQL database (if any), starts Kiln once to migrate, creates the
    project, stops Kiln and answers the project's row id."""
    if database_url:
        subprocess.run(["psql", "-q", database_url, "-c",
                        "DROP SCHEMA public CASCADE; CREATE SCHEMA public"], check=True,
                       stderr=subprocess.DEVNULL)
    server = start(kiln, data_dir, port, admin, database_url)
    connection = http.client.HTTPConnection("127.0.0.1", port)
    status, body = call(connection, "POST", "/api/v1/projects", admin, {"slug": slug, "name": slug})
    assert status == 201, body
    server.terminate()
    server.wait()
    query = f"SELECT id FROM projects WHERE slug = '{slug}'"
    if database_url:
        out = subprocess.run(["psql", "-qtA", database_url, "-c", query],
                             check=True, capture_output=True, text=True)
        return int(out.stdout.strip())
    import sqlite3

    db = sqlite3.connect(os.path.join(data_dir, "kiln.db"))
    project_id = db.execute(query).fetchone()[0]
    db.close()
    return project_id
