#!/usr/bin/env python3
"""Kiln's chaos suite: real processes killed, databases restarted, disks filled and
connections abused while clients work, each scenario checked for what Kiln promises and
reported with its figures.

Run by tests/chaos/run.sh (which `.ci/run` calls); standard library only. Everything it
starts listens on 127.0.0.1 and is stopped when it ends (try/finally). Scenarios:

  replica_kill   kill -9 one of two PostgreSQL replicas behind HAProxy while 50 clients
                 ingest with retries: acknowledged events lost, duplicates, seconds until
                 HAProxy routes around the dead replica
  agent_kill     kill -9 agents mid-step while 100 builds run: jobs lost, each killed job
                 retried or failed as its rules say, seconds to recover (≤ lease + 5 s)
  pg_restart     PostgreSQL stopped and started under load: 503 + Retry-After while it is
                 down, recovery without restarting Kiln, nothing acknowledged lost
  disk_full      the SQLite data directory on a full tmpfs: 503 with a clear error,
                 nothing corrupt, recovery when space returns
  slow_clients   10,000 idle connections, slowloris heads, SSE clients that never read:
                 memory stays bounded and other clients are answered
  clock_jumps    the test clock jumped forward and back around stale detection and
                 leases (a Rust test: crates/kiln-server/tests/clock_jumps.rs)

Usage: chaos.py [--kiln target/debug/kiln] [--only a,b] [--out target/chaos/results.md]
Exit status 0 only when every scenario run held every invariant.
"""

import argparse
import http.client
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN = "kiln_chaosadmin_0123456789abcdef"


def log(message):
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


class Failed(Exception):
    """An invariant the scenario checks did not hold."""


def check(condition, message):
    if not condition:
        raise Failed(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(values, q):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- HTTP


class Http:
    """One keep-alive connection to a base URL; reconnects after any failure."""

    def __init__(self, base, token=None, timeout=10.0):
        parsed = urllib.parse.urlparse(base)
        self.host, self.port = parsed.hostname, parsed.port
        self.token = token
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        """(status, headers, parsed JSON or text); raises OSError/HTTPException on a
        connection failure (the connection is dropped first)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        all_headers = {"Content-Type": "application/json"}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        data = None if body is None else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=all_headers)
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return response.status, dict(response.getheaders()), parsed

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def call(base, method, path, body=None, token=ADMIN, expect=(200, 201, 204)):
    status, _, parsed = Http(base, token).request(method, path, body)
    if status not in expect:
        raise Failed(f"{method} {path} answered {status}: {parsed}")
    return parsed


# ---------------------------------------------------------------- processes


class Kiln:
    """A `kiln serve` process."""

    def __init__(self, kiln, work, name, args, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.log_path = os.path.join(work, f"{name}.log")
        clean = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        clean.update({"KILN_ADMIN_TOKEN": ADMIN, "KILN_LOG": "info"})
        clean.update(env or {})
        self.log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [kiln, "serve", "--listen", f"127.0.0.1:{self.port}", *args],
            env=clean, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise Failed(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            try:
                if Http(self.url, timeout=1).request("GET", "/healthz")[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise Failed(f"{self.name} did not answer /healthz within {timeout} s")

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()


def pg_bin():
    candidates = sorted(d for d in (f"/usr/lib/postgresql/{v}/bin" for v in os.listdir("/usr/lib/postgresql"))
                        if os.path.exists(os.path.join(d, "initdb")))
    if not candidates:
        raise Failed("PostgreSQL is not installed (tests/chaos/run.sh installs it)")
    return candidates[-1]


class Postgres:
    """A private PostgreSQL cluster on a free port, owned by the postgres user."""

    def __init__(self, work):
        self.bin = pg_bin()
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kiln-chaos-pg.", dir="/tmp")
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C.UTF-8")
        self.start()
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-qc",
                        "create database kiln"], check=True, capture_output=True)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/kiln"

    def run(self, tool, *args):
        subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(self.bin, tool), *args],
                       check=True, capture_output=True)

    def start(self):
        self.run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "pg.log"), "-w", "-t", "30",
                 "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=300",
                 "start")

    def stop(self):
        self.run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def destroy(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class HAProxy:
    """HAProxy in front of Kiln replicas: health checks on /healthz every 250 ms, a
    connection refused retried on another server."""

    def __init__(self, work, backends):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket_path = os.path.join(work, "haproxy.sock")
        servers = "\n".join(f"  server r{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        config = f"""global
  stats socket {self.socket_path} mode 600 level admin
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 60s
  retries 3
  option redispatch 1
  option http-no-delay
frontend kiln
  bind 127.0.0.1:{self.port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
  default-server inter 250ms fall 2 rise 2 on-marked-down shutdown-sessions
{servers}
"""
        self.config_path = os.path.join(work, "haproxy.cfg")
        with open(self.config_path, "w") as f:
            f.write(config)
        self.log_file = open(os.path.join(work, "haproxy.log"), "w")
        self.process = subprocess.Popen(["haproxy", "-db", "-f", self.config_path],
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if all(state == "UP" for state in self.states().values()):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failed("HAProxy did not see its replicas up within 20 s")

    def states(self):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.socket_path)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(",")))
            if fields.get("pxname") == "replicas" and fields.get("svname", "").startswith("r"):
                states[fields["svname"]] = fields["status"].split()[0]
        return states

    def stop(self):
        self.process.terminate()
        self.process.wait()
        self.log_file.close()


# ---------------------------------------------------------------- ingest load


class Ingesters:
    """N clients, each with its own build, sending one event per request with stable
    eventIds and retrying each until it is acknowledged (as `kiln emit` and the SDK do).
    Records what was acknowledged and every failed attempt."""

    def __init__(self, base, token, clients, prefix, payload_bytes=0, pause=0.0):
        self.base, self.token = base, token
        self.prefix = prefix
        self.payload = "x" * payload_bytes
        self.pause = pause
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.acked = {}        # runId -> set(eventId)
        self.failures = []     # (time, kind, detail)
        self.successes = []    # time of each acknowledgement
        self.latencies = []
        self.threads = [threading.Thread(target=self.client, args=(i,), daemon=True)
                        for i in range(clients)]

    def run_id(self, i):
        return f"{self.prefix}-{i:04d}"

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def client(self, i):
        http_ = Http(self.base, self.token, timeout=15)
        run_id = self.run_id(i)
        acked = set()
        with self.lock:
            self.acked[run_id] = acked
        n = 0
        while not self.stop_flag.is_set():
            event = {"runId": run_id, "eventId": f"e{n}",
                     "event": "build_started" if n == 0 else "chaos_tick",
                     "data": {"n": n, "pad": self.payload}}
            delay = 0.02
            first_try = time.time()
            while True:
                began = time.time()
                try:
                    status, headers, body = http_.request("POST", "/api/v1/events", event)
                except (OSError, http.client.HTTPException) as error:
                    with self.lock:
                        self.failures.append((time.time(), "connection", type(error).__name__))
                else:
                    if status in (200, 201):
                        now = time.time()
                        with self.lock:
                            acked.add(event["eventId"])
                            self.successes.append(now)
                            self.latencies.append(now - began)
                        break
                    retry_after = headers.get("Retry-After") or headers.get("retry-after")
                    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                    message = body.get("error", {}).get("message") if isinstance(body, dict) else str(body)
                    with self.lock:
                        self.failures.append((time.time(), f"{status}", (code, message, retry_after)))
                    if 400 <= status < 500 and status not in (408, 429):
                        # A refusal is final: this event will never be stored.
                        break
                # Once told to stop, an event still refused after 10 s of retries is
                # given up (it was never acknowledged, so nothing is lost).
                if self.stop_flag.is_set() and time.time() - first_try > 10:
                    return
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            n += 1
            if self.pause:
                time.sleep(self.pause)

    def finish(self, grace=60):
        """Stops sending new events; each client finishes (or gives up) the event it is
        retrying, all within `grace` seconds."""
        self.stop_flag.set()
        deadline = time.time() + grace
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.time()))

    def acknowledged(self):
        with self.lock:
            return sum(len(v) for v in self.acked.values())

    def verify(self, base):
        """(lost, duplicates, stored): every acknowledged event read back by cursor."""
        lost = duplicates = stored = 0
        reader = Http(base, self.token, timeout=30)
        for run_id, acked in self.acked.items():
            seen = {}
            cursor = 0
            while True:
                status, _, body = reader.request(
                    "GET", f"/api/v1/builds/{run_id}/events?lastEventId={cursor}&limit=1000")
                if status == 404 and not acked:
                    break
                check(status == 200, f"reading {run_id}'s events answered {status}: {body}")
                for event in body["events"]:
                    seen[event.get("eventId")] = seen.get(event.get("eventId"), 0) + 1
                cursor = body["lastEventId"] or cursor
                if not body["hasMore"]:
                    break
            stored += sum(seen.values())
            duplicates += sum(count - 1 for count in seen.values())
            lost += len(acked - set(seen))
        return lost, duplicates, stored


def project_with_token(base, slug, scopes=("ingest", "read")):
    call(base, "POST", "/api/v1/projects", {"slug": slug, "name": slug})
    body = call(base, "POST", f"/api/v1/projects/{slug}/tokens", {"name": "chaos", "scopes": list(scopes)})
    return body["token"]


# ---------------------------------------------------------------- scenarios


def scenario_replica_kill(args, work):
    pg = Postgres(work)
    replicas, proxy, load = [], None, None
    try:
        replicas = [Kiln(args.kiln, work, f"replica{i}", ["--database-url", pg.url,
                                                          "--data-dir", os.path.join(work, f"data{i}")])
                    for i in range(2)]
        token = project_with_token(replicas[0].url, "chaos")
        proxy = HAProxy(work, [r.port for r in replicas])
        load = Ingesters(proxy.url, token, args.clients, "replica").start()
        time.sleep(args.warmup)
        before = load.acknowledged()
        killed_at = time.time()
        replicas[0].kill9()
        log(f"replica0 killed after {before} acknowledged events")
        routed_around = None
        while time.time() - killed_at < args.after_kill:
            if routed_around is None and proxy.states().get("r0") not in ("UP", None):
                routed_around = time.time() - killed_at
            time.sleep(0.05)
        load.finish()
        check(routed_around is not None, "HAProxy never marked the killed replica down")
        after_kill = [f for f in load.failures if f[0] >= killed_at]
        last_error = max((f[0] for f in after_kill), default=killed_at) - killed_at
        lost, dupes, stored = load.verify(replicas[1].url)
        acked = load.acknowledged()
        figures = {
            "clients": args.clients,
            "acknowledged events": acked,
            "acknowledged before the kill": before,
            "stored": stored,
            "acknowledged events lost": lost,
            "duplicates": dupes,
            "seconds until HAProxy marked the replica down": round(routed_around, 2),
            "failed attempts seen by clients after the kill (retried)": len(after_kill),
            "seconds from the kill to the last failed attempt": round(last_error, 2),
            "ingest p99 ms": round(pct(load.latencies, 0.99) * 1000, 1),
        }
        check(lost == 0, f"{lost} acknowledged events lost")
        check(dupes == 0, f"{dupes} duplicate events stored")
        check(acked > before, "no event was acknowledged after the kill")
        return figures
    finally:
        if load:
            load.finish(5)
        if proxy:
            proxy.stop()
        for replica in replicas:
            replica.stop()
        pg.destroy()


def git(repo, *args):
    subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="chaos", GIT_AUTHOR_EMAIL="chaos@localhost",
                            GIT_COMMITTER_NAME="chaos", GIT_COMMITTER_EMAIL="chaos@localhost"))


def scenario_agent_kill(args, work):
    repos = os.path.join(work, "repos")
    repo = os.path.join(repos, "app")
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    with open(os.path.join(repo, ".kiln.yml"), "w") as f:
        f.write(f"""steps:
  - name: work
    run: sleep {args.step_secs}
    retry:
      automatic:
        on: [agent_lost]
        limit: 2
""")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "chaos")
    lease = args.lease
    server = Kiln(args.kiln, work, "server", ["--data-dir", os.path.join(work, "data"),
                                              "--allow-local-repos", repos, "--job-lease", str(lease)])
    agents = {}
    try:
        call(server.url, "POST", "/api/v1/projects", {"slug": "chaos", "name": "chaos"})
        call(server.url, "PUT", "/api/v1/projects/chaos/repo", {"repo": repo, "defaultBranch": "main"})
        agent_token = call(server.url, "POST", "/api/v1/agent-tokens", {"name": "chaos"})["token"]
        serial = [0]

        def start_agent():
            serial[0] += 1
            name = f"agent{serial[0]:02d}"
            agent_dir = os.path.join(work, name)
            os.makedirs(agent_dir)
            clean = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
            log_file = open(os.path.join(work, f"{name}.log"), "w")
            agents[name] = (subprocess.Popen(
                [args.kiln, "agent", "--server", server.url, "--token", agent_token, "--name", name,
                 "--concurrency", "2", "--executor", "process", "--work-dir", os.path.join(agent_dir, "work"),
                 "--cache-dir", os.path.join(agent_dir, "cache")],
                env=clean, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True), log_file)

        for _ in range(args.agents):
            start_agent()
        runs = [call(server.url, "POST", "/api/v1/projects/chaos/builds", {})["runId"]
                for _ in range(args.builds)]
        log(f"{len(runs)} builds queued, {args.agents} agents")

        def jobs():
            out = []
            for run in runs:
                out.extend(call(server.url, "GET", f"/api/v1/projects/chaos/builds/{run}/jobs")["jobs"])
            return out

        def waiting():
            return call(server.url, "GET", "/api/v1/queue")["jobs"]

        kills = []   # (time, agent, [(job id, attempt)])
        recoveries = []
        started = time.time()
        next_kill = started + 3
        pending = []  # (killed_at, job id, attempt)
        deadline = started + args.builds * args.step_secs + 300
        while time.time() < deadline:
            now = time.time()
            snapshot = waiting()
            by_id = {job["id"]: job for job in snapshot}
            for item in list(pending):
                killed_at, job_id, attempt = item
                job = by_id.get(job_id)
                if job is None or job["attempt"] != attempt or job["state"] != "running":
                    recoveries.append(now - killed_at)
                    pending.remove(item)
            if len(kills) < args.kills and now >= next_kill:
                busy = {}
                for job in snapshot:
                    if job["state"] == "running" and job.get("agent") in agents:
                        busy.setdefault(job["agent"], []).append((job["id"], job["attempt"]))
                if busy:
                    victim = random.choice(sorted(busy))
                    process, log_file = agents.pop(victim)
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    log_file.close()
                    killed_at = time.time()
                    kills.append((killed_at, victim, busy[victim]))
                    pending.extend((killed_at, job_id, attempt) for job_id, attempt in busy[victim])
                    start_agent()
                    next_kill = killed_at + args.kill_every
            if not snapshot and not pending:
                break
            time.sleep(0.2)
        final = jobs()
        unfinished = [job for job in final if job["state"] not in ("passed", "failed", "cancelled", "skipped")]
        builds = [call(server.url, "GET", f"/api/v1/builds/{run}") for run in runs]
        open_builds = [b for b in builds if b["status"] in ("queued", "running")]
        killed_jobs = {job_id for _, _, held in kills for job_id, _ in held}
        wrong = []
        for job in final:
            if job["id"] in killed_jobs:
                retried = job["state"] == "passed" and job["attempt"] >= 2
                failed_by_rule = job["state"] == "failed" and job["reason"] == "agent_lost" and job["attempt"] == 3
                if not (retried or failed_by_rule):
                    wrong.append(job)
            elif job["state"] != "passed":
                wrong.append(job)
        figures = {
            "builds": len(runs),
            "agents (concurrency 2)": args.agents,
            "agents killed mid-step": len(kills),
            "jobs held by killed agents": len(killed_jobs),
            "jobs lost (never ended)": len(unfinished),
            "builds left open": len(open_builds),
            "jobs not retried or failed as the rules say": len(wrong),
            "retried and passed": sum(1 for j in final if j["id"] in killed_jobs and j["state"] == "passed"),
            "lease s": lease,
            "recovery p50 s": round(pct(recoveries, 0.5), 2),
            "recovery max s": round(max(recoveries, default=0), 2),
            "seconds for all builds": round(time.time() - started, 1),
        }
        check(kills, "no agent was killed mid-step")
        check(not unfinished, f"{len(unfinished)} jobs never ended: {unfinished[:3]}")
        check(not open_builds, f"{len(open_builds)} builds still open")
        check(not wrong, f"jobs not handled as their rules say: {wrong[:3]}")
        check(not pending, f"{len(pending)} killed jobs never recovered")
        check(max(recoveries, default=0) <= lease + 5,
              f"recovery took {max(recoveries):.1f} s, more than lease + 5 s")
        return figures
    finally:
        for process, log_file in agents.values():
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            process.wait()
            log_file.close()
        server.stop()


def scenario_pg_restart(args, work):
    pg = Postgres(work)
    server, load = None, None
    try:
        server = Kiln(args.kiln, work, "server", ["--database-url", pg.url,
                                                  "--data-dir", os.path.join(work, "data")])
        token = project_with_token(server.url, "chaos")
        load = Ingesters(server.url, token, args.clients, "pgrestart", pause=0.01).start()
        time.sleep(args.warmup)
        stopped_at = time.time()
        pg.stop()
        log("PostgreSQL stopped")
        time.sleep(args.down_secs)
        started_at = time.time()
        pg.start()
        log("PostgreSQL started")
        recovered = None
        while time.time() - started_at < 60:
            with load.lock:
                if any(t > started_at for t in load.successes[-50:]):
                    recovered = min(t for t in load.successes if t > started_at) - started_at
                    break
            time.sleep(0.05)
        time.sleep(2)
        load.finish()
        during = [f for f in load.failures if stopped_at <= f[0]]
        by_kind = {}
        for _, kind, _ in during:
            by_kind[kind] = by_kind.get(kind, 0) + 1
        without_retry_after = [f for f in during if f[1] == "503" and not f[2][2]]
        other = [f for f in during if f[1] != "503"]
        lost, dupes, stored = load.verify(server.url)
        sample = next((f[2] for f in during if f[1] == "503"), None)
        figures = {
            "clients": args.clients,
            "seconds PostgreSQL was down": round(started_at - stopped_at, 1),
            "answers while down, by status": by_kind,
            "503 answers without Retry-After": len(without_retry_after),
            "other failures (not 503)": len(other),
            "a 503's error": sample[:2] if sample else None,
            "seconds from PostgreSQL's start to the first acknowledged event": round(recovered, 2) if recovered is not None else None,
            "acknowledged events": load.acknowledged(),
            "acknowledged events lost": lost,
            "duplicates": dupes,
        }
        check(server.process.poll() is None, "Kiln exited while PostgreSQL was down")
        check(by_kind.get("503", 0) > 0, "no request was answered 503 while PostgreSQL was down")
        check(not without_retry_after, "a 503 without Retry-After")
        check(not other, f"failures other than 503 while PostgreSQL was down: {other[:3]}")
        check(recovered is not None, "ingest never recovered after PostgreSQL came back")
        check(lost == 0, f"{lost} acknowledged events lost")
        check(dupes == 0, f"{dupes} duplicates")
        return figures
    finally:
        if load:
            load.finish(5)
        if server:
            server.stop()
        pg.destroy()


def scenario_disk_full(args, work):
    mount = os.path.join(work, "small")
    os.makedirs(mount)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.disk_mib}m", "tmpfs", mount],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise Failed(f"cannot mount a tmpfs (root is needed): {result.stderr.strip()}")
    server, load = None, None
    try:
        data = os.path.join(mount, "data")
        server = Kiln(args.kiln, work, "server", ["--data-dir", data])
        token = project_with_token(server.url, "chaos")
        # Fill the file system but for a few MiB with a file that can be deleted later.
        filler = os.path.join(mount, "filler")
        free = shutil.disk_usage(mount).free
        with open(filler, "wb") as f:
            f.truncate(0)
            block = b"\0" * (1 << 20)
            for _ in range(max(0, free // (1 << 20) - 4)):
                f.write(block)
        log(f"tmpfs filled: {shutil.disk_usage(mount).free // 1024} KiB free")
        load = Ingesters(server.url, token, args.clients, "diskfull", payload_bytes=16 * 1024).start()
        full_at = None
        deadline = time.time() + 120
        while time.time() < deadline:
            with load.lock:
                full = [f for f in load.failures if f[1] == "503"]
            if full:
                full_at = full[0][0]
                break
            time.sleep(0.1)
        check(full_at is not None, "ingest never failed although the disk filled")
        time.sleep(2)
        with load.lock:
            during = list(load.failures)
        sample = next(f[2] for f in during if f[1] == "503")
        other = [f for f in during if f[1] not in ("503",)]
        healthy = Http(server.url, timeout=5).request("GET", "/healthz")[0]
        freed_at = time.time()
        os.remove(filler)
        log("space returned")
        recovered = None
        while time.time() - freed_at < 60:
            with load.lock:
                later = [t for t in load.successes if t > freed_at]
            if later:
                recovered = min(later) - freed_at
                break
            time.sleep(0.05)
        # Stopped at once: at full speed the writers would fill the small disk again.
        load.finish()
        lost, dupes, stored = load.verify(server.url)
        server.stop()
        server = None
        with sqlite3.connect(os.path.join(data, "kiln.db")) as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        figures = {
            "tmpfs MiB": args.disk_mib,
            "acknowledged events": load.acknowledged(),
            "503 answers while full": sum(1 for f in during if f[1] == "503"),
            "the 503's error (code, message)": sample[:2],
            "other failures": len(other),
            "/healthz while full": healthy,
            "seconds from space returning to the first acknowledged event": round(recovered, 2) if recovered is not None else None,
            "acknowledged events lost": lost,
            "duplicates": dupes,
            "integrity_check": integrity,
        }
        check("space" in (sample[1] or "").lower() or "disk" in (sample[1] or "").lower(),
              f"the 503 does not say the disk is full: {sample}")
        check(not other, f"failures other than 503: {other[:3]}")
        check(recovered is not None, "ingest never recovered once space returned")
        check(lost == 0, f"{lost} acknowledged events lost")
        check(dupes == 0, f"{dupes} duplicates")
        check(integrity == "ok", f"integrity_check: {integrity}")
        return figures
    finally:
        if load:
            load.finish(5)
        if server:
            server.stop()
        subprocess.run(["umount", "-l", mount], capture_output=True)


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def scenario_slow_clients(args, work):
    limit = raise_fd_limit()
    check(limit > args.idle + 2000, f"the open-files limit {limit} is too low for {args.idle} connections")
    server = Kiln(args.kiln, work, "server", ["--data-dir", os.path.join(work, "data"),
                                              "--header-read-timeout", "3", "--idle-timeout", "60"])
    sockets = []
    try:
        token = project_with_token(server.url, "chaos")
        rss_start = rss_kib(server.process.pid)

        def probe(count=50):
            times, failures = [], 0
            for _ in range(count):
                began = time.time()
                try:
                    status = Http(server.url, timeout=5).request("GET", "/healthz")[0]
                    if status != 200:
                        failures += 1
                except (OSError, http.client.HTTPException):
                    failures += 1
                times.append(time.time() - began)
            return pct(times, 0.99) * 1000, failures

        # 1. Idle connections from many loopback addresses (each under the per-address cap).
        for i in range(args.idle):
            s = socket.socket()
            s.bind((f"127.0.{1 + i // 2000}.{1 + (i // 250) % 8}", 0))
            s.connect(("127.0.0.1", server.port))
            sockets.append(s)
        time.sleep(1)
        rss_idle = rss_kib(server.process.pid)
        idle_p99, idle_failures = probe()
        log(f"{len(sockets)} idle connections: /healthz p99 {idle_p99:.1f} ms, {idle_failures} failures")
        for s in sockets:
            s.close()
        sockets.clear()

        # 2. Slowloris: a request head one byte per second, never finished.
        slow = []
        for i in range(args.slowloris):
            s = socket.socket()
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        slow_started = time.time()
        closed_after = []
        selector = selectors.DefaultSelector()
        for i, s in enumerate(slow):
            selector.register(s, selectors.EVENT_READ, i)
        open_ = set(range(len(slow)))
        next_byte = slow_started + 1
        while open_ and time.time() - slow_started < 30:
            for key, _ in selector.select(timeout=0.05):
                i = key.data
                try:
                    data = slow[i].recv(4096)
                except OSError:
                    data = b""
                # The server closes (perhaps after a 408); either way the head is refused.
                if not data or data.startswith(b"HTTP/1.1 408"):
                    closed_after.append(time.time() - slow_started)
                    open_.discard(i)
                    selector.unregister(slow[i])
            if time.time() >= next_byte:
                next_byte += 1
                for i in list(open_):
                    try:
                        slow[i].sendall(b"X")
                    except OSError:
                        pass
        selector.close()
        slow_p99, slow_failures = probe()
        for s in slow:
            s.close()

        # 3. SSE clients that never read, on a build receiving a flood of events.
        run_id = "flood"
        call(server.url, "POST", "/api/v1/events", {"runId": run_id, "eventId": "s", "event": "build_started"}, token=token)
        stuck = []
        for _ in range(args.stuck_streams):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(f"GET /api/v1/builds/{run_id}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            stuck.append(s)
        reader_events = []
        reader_done = threading.Event()

        def reader():
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            conn.request("GET", f"/api/v1/builds/{run_id}/stream", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            while not reader_done.is_set():
                line = response.fp.readline()
                if not line:
                    break
                if line.startswith(b"id: "):
                    reader_events.append(int(line[4:]))
                    if len(reader_events) >= args.flood + 1:
                        break
            conn.close()

        reader_thread = threading.Thread(target=reader, daemon=True)
        reader_thread.start()
        pad = "y" * 2048
        writer = Http(server.url, token)
        peak = rss_kib(server.process.pid)
        for k in range(0, args.flood, 100):
            batch = [{"runId": run_id, "eventId": f"f{k + j}", "event": "chaos_tick", "data": {"pad": pad}}
                     for j in range(100)]
            status = writer.request("POST", "/api/v1/events", batch)[0]
            check(status == 201, f"flood batch answered {status}")
            peak = max(peak, rss_kib(server.process.pid))
        reader_thread.join(60)
        reader_done.set()
        stuck_p99, stuck_failures = probe()
        peak = max(peak, rss_kib(server.process.pid))
        for s in stuck:
            s.close()
        figures = {
            "idle connections": args.idle,
            "RSS MiB at start / with idle connections": (round(rss_start / 1024, 1), round(rss_idle / 1024, 1)),
            "/healthz p99 ms with idle connections (failures)": (round(idle_p99, 1), idle_failures),
            "slowloris connections": args.slowloris,
            "slowloris closed by the server (of them)": len(closed_after),
            "slowloris seconds until closed, max (header timeout 3 s)": round(max(closed_after, default=0), 1),
            "/healthz p99 ms after slowloris (failures)": (round(slow_p99, 1), slow_failures),
            "SSE clients never reading": args.stuck_streams,
            "events flooded (2 KiB each)": args.flood,
            "events the reading client received": len(reader_events),
            "RSS MiB peak during the flood": round(peak / 1024, 1),
            "/healthz p99 ms during stuck streams (failures)": (round(stuck_p99, 1), stuck_failures),
        }
        check(idle_failures == 0, f"{idle_failures} /healthz failures with {args.idle} idle connections")
        check(len(closed_after) == args.slowloris, f"only {len(closed_after)} slowloris connections were closed")
        check(max(closed_after, default=0) <= 3 + 2, "slowloris connections outlived the header timeout")
        check(slow_failures == 0 and stuck_failures == 0, "/healthz failed under slow clients")
        check(len(reader_events) >= args.flood + 1, f"the reading client got {len(reader_events)} of {args.flood + 1} events")
        check(peak / 1024 < args.rss_cap_mib, f"RSS peaked at {peak / 1024:.0f} MiB (cap {args.rss_cap_mib})")
        return figures
    finally:
        for s in sockets:
            s.close()
        server.stop()


def scenario_clock_jumps(args, work):
    began = time.time()
    result = subprocess.run(["cargo", "test", "-q", "-p", "kiln-server", "--test", "clock_jumps", "--",
                             "--nocapture", "--test-threads", "1"],
                            cwd=ROOT, capture_output=True, text=True)
    output = result.stdout + result.stderr
    figures = {line.split("FIGURE ", 1)[1].split(": ", 1)[0]: line.split(": ", 2)[-1]
               for line in output.splitlines() if "FIGURE " in line}
    figures["seconds"] = round(time.time() - began, 1)
    check(result.returncode == 0, f"clock_jumps failed:\n{output[-4000:]}")
    return figures


SCENARIOS = {
    "replica_kill": scenario_replica_kill,
    "agent_kill": scenario_agent_kill,
    "pg_restart": scenario_pg_restart,
    "disk_full": scenario_disk_full,
    "slow_clients": scenario_slow_clients,
    "clock_jumps": scenario_clock_jumps,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kiln", default=os.path.join(ROOT, "target", "debug", "kiln"))
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "chaos", "results.md"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=4)
    parser.add_argument("--after-kill", type=float, default=8)
    parser.add_argument("--builds", type=int, default=100)
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--step-secs", type=float, default=2)
    parser.add_argument("--lease", type=int, default=5)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--kill-every", type=float, default=2.5)
    parser.add_argument("--down-secs", type=float, default=4)
    parser.add_argument("--disk-mib", type=int, default=48)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument("--slowloris", type=int, default=200)
    parser.add_argument("--stuck-streams", type=int, default=100)
    parser.add_argument("--flood", type=int, default=20000)
    parser.add_argument("--rss-cap-mib", type=int, default=512)
    args = parser.parse_args()
    chosen = [name for name in args.only.split(",") if name]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    raise_fd_limit()
    results = {}
    failed = []
    for name in chosen:
        work = tempfile.mkdtemp(prefix=f"kiln-chaos-{name}.")
        log(f"== {name}")
        began = time.time()
        try:
            figures = SCENARIOS[name](args, work)
            results[name] = ("passed", figures, time.time() - began)
            shutil.rmtree(work, ignore_errors=True)
        except Failed as error:
            results[name] = ("FAILED", {"why": str(error), "logs": work}, time.time() - began)
            failed.append(name)
        except Exception as error:  # a harness error is a failure too, with its logs kept
            results[name] = ("FAILED", {"why": f"{type(error).__name__}: {error}", "logs": work},
                             time.time() - began)
            failed.append(name)
        status, figures, seconds = results[name]
        log(f"{name}: {status} in {seconds:.0f} s")
        for key, value in figures.items():
            print(f"FIGURE {name}: {key}: {value}", flush=True)
    lines = [f"# Kiln chaos suite — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    for name, (status, figures, seconds) in results.items():
        lines.append(f"## {name}: {status} ({seconds:.0f} s)")
        lines.append("")
        lines.append("| figure | value |")
        lines.append("|---|---|")
        for key, value in figures.items():
            lines.append(f"| {key} | {value} |")
        lines.append("")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    if failed:
        log(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
