#!/usr/bin/env python3
"""Dashboard benchmark (standard library only).

Starts `kiln serve` on a fresh SQLite data dir, seeds DASH_BUILDS builds (default
10,000) through the ingest API over several projects and branches, runs one build of a
local git repository on a real `kiln agent` whose step writes a long log, then times
DASH_REQUESTS sequential GETs (default 200) of /healthz (the baseline: routing, no
work), the overview `/`, the overview filtered to one project, and the build page with
the long log, as a signed-in instance admin (session cookie). Prints p50/p95/max and the
bytes of each page; writes results/latest.md and latest.json.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

KILN = os.environ["DASH_KILN"]
BUILDS = int(os.environ.get("DASH_BUILDS", "10000"))
REQUESTS = int(os.environ.get("DASH_REQUESTS", "200"))
LOG_LINES = int(os.environ.get("DASH_LOG_LINES", "200000"))
ADMIN = "kiln_bench_dashboard_admin_0123456789abcdef"
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, token=ADMIN, cookie=None, raw=False):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if cookie:
        request.add_header("Cookie", cookie)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = response.read()
        if raw:
            return response, payload
        return json.loads(payload) if payload else None


def git(directory, *args):
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@b", "-c", "init.defaultBranch=main", *args],
                   cwd=directory, check=True, stdout=subprocess.DEVNULL)


def wait_healthy(base):
    for _ in range(300):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("kiln serve did not become healthy")


def seed(base):
    projects = ["shop", "api", "docs", "mobile", "infra"]
    tokens = {}
    for slug in projects:
        call(base, "POST", "/api/v1/projects", {"slug": slug, "name": slug.title()})
        tokens[slug] = call(base, "POST", f"/api/v1/projects/{slug}/tokens", {"name": "ci", "scopes": ["ingest"]})["token"]
    started = time.time()
    batch = []
    sent = 0
    for index in range(BUILDS):
        slug = projects[index % len(projects)]
        run_id = str(uuid.uuid4())
        branch = ["main", "develop", f"feature/{index % 37}"][index % 3]
        common = {"runId": run_id, "origin": "kiln-cli", "host": f"ci-{index % 7}", "command": "make ci",
                  "branch": branch, "commit": uuid.uuid4().hex + "abcdef12"}
        events = [dict(common, event="build_started"),
                  dict(common, event="stage_started", stage="compile"),
                  dict(common, event="stage_completed", stage="compile", durationMs=30_000 + index % 500)]
        if index >= BUILDS - 25:
            events.append(dict(common, event="build_progress", progress=(index % 90) + 5))
        elif index % 10 == 3:
            events.append(dict(common, event="build_failed", message="tests failed", durationMs=61_000 + index % 900))
        else:
            events.append(dict(common, event="build_completed", durationMs=60_000 + index % 900))
        batch.append((slug, events))
        if len(batch) == 100 or index == BUILDS - 1:
            by_project = {}
            for slug_of, evs in batch:
                by_project.setdefault(slug_of, []).extend(evs)
            for slug_of, evs in by_project.items():
                call(base, "POST", "/api/v1/events", evs, token=tokens[slug_of])
                sent += len(evs)
            batch = []
    return projects, sent, time.time() - started


def long_log_build(base, workdir):
    """A real build of a local repository whose step writes LOG_LINES lines, run by a real agent."""
    repo = os.path.join(workdir, "repo")
    os.makedirs(repo)
    with open(os.path.join(repo, ".kiln.yml"), "w") as f:
        f.write("steps:\n  - name: test\n    run: |\n"
                f"      i=0; while [ $i -lt {LOG_LINES} ]; do printf '\\033[32mok\\033[0m line %d of the long test log <tag> & more text\\n' $i; i=$((i+1)); done\n"
                "      echo 'error: one failure for the viewer to find' >&2\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "Long log")
    call(base, "PUT", "/api/v1/projects/shop/repo", {"repo": repo})
    agent_token = call(base, "POST", "/api/v1/agent-tokens", {"name": "bench"})["token"]
    agent = subprocess.Popen([KILN, "agent", "--server", base, "--token", agent_token, "--name", "bench-agent",
                              "--work-dir", os.path.join(workdir, "agent")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        triggered = call(base, "POST", "/api/v1/projects/shop/builds", {"branch": "main"})
        run_id = triggered["runId"]
        deadline = time.time() + 300
        while time.time() < deadline:
            status = call(base, "GET", f"/api/v1/builds/{run_id}")["status"]
            if status in ("success", "failed", "cancelled"):
                break
            time.sleep(0.5)
        jobs = call(base, "GET", f"/api/v1/projects/shop/builds/{run_id}/jobs")["jobs"]
        return run_id, status, max(job["logSize"] for job in jobs)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()


def login(base):
    created = call(base, "POST", "/api/v1/users", {"email": "bench@example.com", "name": "Bench", "instanceAdmin": True})
    request = urllib.request.Request(base + "/api/v1/session", method="POST",
                                     data=json.dumps({"email": "bench@example.com", "password": created["password"]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return response.headers["Set-Cookie"].split(";")[0]


def measure(base, path, cookie):
    times = []
    size = 0
    for _ in range(REQUESTS):
        request = urllib.request.Request(base + path, headers={"Cookie": cookie} if cookie else {})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            status = response.status
        times.append((time.perf_counter() - start) * 1000)
        size = len(body)
        if status != 200:
            raise SystemExit(f"{path}: {status}")
    times.sort()
    return {"path": path, "p50": statistics.median(times), "p95": times[int(len(times) * 0.95) - 1],
            "max": times[-1], "bytes": size}


def main():
    workdir = tempfile.mkdtemp(prefix="kiln-dash-bench-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, KILN_ADMIN_TOKEN=ADMIN, KILN_LOG="warn")
    # The build's repository is a local directory, which a server takes only from a
    # directory it was told to allow.
    server = subprocess.Popen([KILN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(workdir, "data"),
                               "--allow-local-repos", workdir],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "server.log"), "w"))
    try:
        wait_healthy(base)
        projects, events, seconds = seed(base)
        print(f"seeded {BUILDS} builds ({events} events) in {seconds:.1f} s", flush=True)
        run_id, status, log_size = long_log_build(base, workdir)
        print(f"long-log build {run_id}: {status}, log {log_size / 1048576:.1f} MiB", flush=True)
        cookie = login(base)
        results = [
            measure(base, "/healthz", None),
            measure(base, "/", cookie),
            measure(base, "/?project=api&status=success", cookie),
            measure(base, "/?before=5000", cookie),
            measure(base, f"/builds/{run_id}", cookie),
        ]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    lines = [f"Dashboard benchmark: {BUILDS} builds, {REQUESTS} sequential requests per page, "
             f"long log {log_size / 1048576:.1f} MiB ({LOG_LINES} lines)", "",
             "| page | p50 ms | p95 ms | max ms | bytes |", "|---|---|---|---|---|"]
    for row in results:
        lines.append(f"| `{row['path']}` | {row['p50']:.2f} | {row['p95']:.2f} | {row['max']:.2f} | {row['bytes']:,} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "latest.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(HERE, "results", "latest.json"), "w") as f:
        json.dump({"builds": BUILDS, "requests": REQUESTS, "log_bytes": log_size, "results": results}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
