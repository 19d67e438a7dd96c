#!/usr/bin/env python3
"""Issue 6's webhook benchmark: deliveries/s to a local receiver with 100 endpoints, and
ingest throughput with 10 active endpoints against ingest with none, in the same run.

Called by bench/webhooks/run.sh (which builds `kiln` and starts PostgreSQL); standard
library only, plus `wrk` and `node`. Reuses bench/driver.py's helpers and its load
(`wrk` + bench/load/ingest.lua). Everything it starts it stops; all traffic is on
127.0.0.1.

Per engine:
  (a) fan-out: a fresh `kiln serve`, one project, ENDPOINTS endpoints (every event, `kiln`
      format) pointing at the receiver. 1. burst: EVENTS events ingested in batches as fast
      as the server commits them; deliveries/s from the first to the last delivery, and
      commit → delivered latency (mostly the backlog's queueing). 2. paced: one event per
      POST at a rate under the burst's delivery rate for PACED_SECONDS; commit → delivered
      p50/p99 in a steady state. "commit" = the moment the ingest POST's 201 arrived (Kiln
      answers only after the commit); "delivered" = the receiver read the request (same
      machine, same wall clock).
  (b) ingest: a fresh `kiln serve`, the standard load (64 connections, one event per
      request, 64 run ids) for ROUND_SECONDS, alternating 0 active endpoints and
      INGEST_ENDPOINTS active endpoints (same project as the load, every event) for ROUNDS
      rounds (the order flips each round); ratio = events/s with endpoints ÷ without.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import driver  # noqa: E402  (bench/driver.py: wrk runs, CPU accounting, helpers)
from driver import (  # noqa: E402
    ADMIN, free_port, http, kiln_token_setup, machine_busy, proc_cpu, run_wrk, seed_builds,
    stop, tree_cpu, wait_healthy,
)

RECEIVER = os.path.join(HERE, "receiver.mjs")
RECEIVER_LUA = os.path.join(HERE, "receiver.lua")


def log(message):
    print(f"[webhooks-bench] {message}", file=sys.stderr, flush=True)


def now_ms():
    return time.time() * 1000.0


def pct(values, p):
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def context():
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    top = subprocess.run(["ps", "-eo", "pcpu=,comm=", "--sort=-pcpu"], capture_output=True,
                         text=True).stdout.splitlines()[:4]
    return f"{time.strftime('%H:%M:%SZ', time.gmtime())} load average {load}; busiest: " + \
        ", ".join(" ".join(line.split()[::-1]) + "%" for line in top)


def fsync_probe(directory, count=100):
    """p50/p99 ms of an 8 KiB append + fsync in `directory` (the data directories' disk):
    every webhook delivery costs commits, so this disk's flush latency bounds them."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 8192)
            started = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        os.remove(path)
    return f"fsync p50 {pct(times, 50):.2f} ms, p99 {pct(times, 99):.2f} ms"


# ---------------------------------------------------------------- the receiver


class Receiver:
    def __init__(self, workers):
        self.port = free_port()
        self.control = free_port()
        self.process = subprocess.Popen(
            ["node", RECEIVER, str(self.port), str(self.control), str(workers)],
            stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        line = self.process.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"the receiver did not start: {line!r}")
        self.workers = workers
        self.url = f"http://127.0.0.1:{self.port}"

    def _get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.control}{path}", timeout=60) as r:
            return json.loads(r.read())

    def count(self):
        return self._get("/count")["count"]

    def collect(self):
        """All records since the last collect (and forgets them)."""
        return self._get("/collect?clear=1")

    def cpu(self):
        return tree_cpu(self.process.pid)

    def stop(self):
        stop(self.process, "receiver")


def receiver_ceiling(args, receiver):
    """wrk against the receiver alone: keep-alive, and a new connection per request."""
    results = {}
    for name, extra in (("keep-alive", []), ("connection per request", ["-H", "Connection: close"])):
        before_cpu, before_busy = receiver.cpu(), machine_busy()
        started = time.monotonic()
        output = subprocess.run(
            ["wrk", f"-t{args.wrk_threads}", "-c64", f"-d{args.ceiling_seconds}s", "--timeout", "10s",
             *extra, "-s", RECEIVER_LUA, receiver.url + "/ceiling"],
            capture_output=True, text=True, check=True).stdout
        wall = time.monotonic() - started
        values = dict(pair.split("=") for pair in
                      next(line for line in output.splitlines() if line.startswith("RESULT"))[7:].split())
        results[name] = {
            "rps": float(values["ok_rps"]), "p99_ms": float(values["p99_ms"]),
            "receiver_cores": (receiver.cpu() - before_cpu) / wall,
            "machine_cores": (machine_busy() - before_busy) / wall,
        }
        log(f"  receiver ceiling, {name}: {float(values['ok_rps']):,.0f} requests/s "
            f"(receiver {results[name]['receiver_cores']:.2f} cores, machine "
            f"{results[name]['machine_cores']:.2f})")
        time.sleep(1)
    receiver.collect()
    return results


# ---------------------------------------------------------------- Kiln


class Kiln:
    def __init__(self, args, engine, label):
        self.args = args
        self.engine = engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tempfile.mkdtemp(prefix=f"kiln-wh-{label}-", dir=args.work)
        self.db = None
        command = [args.kiln, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
                   self.data, "--webhooks-allow-private", "--branch-poll-interval", "86400",
                   # no build goes stale (the reaper's events would add deliveries)
                   "--heartbeat-timeout", "86400"]
        if engine == "postgres":
            self.db = f"kiln_wh_bench_{label}_{os.getpid()}"
            psql(args, f"drop database if exists {self.db}")
            psql(args, f"create database {self.db}")
            command += ["--database-url", f"postgres://postgres@127.0.0.1:{args.pg_port}/{self.db}"]
        env = dict(os.environ, KILN_ADMIN_TOKEN=ADMIN, KILN_LOG=os.environ.get("KILN_LOG", "warn"))
        self.log_path = os.path.join(args.work, f"kiln-{engine}-{label}.log")
        with open(self.log_path, "w") as server_log:
            self.process = subprocess.Popen(command, env=env, stdout=server_log,
                                            stderr=subprocess.STDOUT, cwd=self.data)
        wait_healthy(self.url, self.process)

    @property
    def pid(self):
        return self.process.pid

    def cpu(self):
        return proc_cpu(self.process.pid)

    def stop(self):
        stop(self.process, "kiln")
        if self.db:
            psql(self.args, f"drop database if exists {self.db}")


def psql(args, sql):
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(args.pg_port), "-U", "postgres",
                    "-d", "postgres", "-qAtc", sql], check=True, capture_output=True)


def pg_pid(args, engine):
    """The postmaster's pid (its children are the backends), for CPU accounting."""
    if engine != "postgres":
        return None
    data = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(args.pg_port), "-U", "postgres",
                           "-qAtc", "show data_directory"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with open(os.path.join(data, "postmaster.pid")) as f:
        return int(f.readline())


def store_query(kiln, sql):
    """One read-only query against the server's own database (diagnostics only)."""
    if kiln.engine == "postgres":
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(kiln.args.pg_port), "-U",
                              "postgres", "-d", kiln.db, "-qAtF", ",", "-c", sql],
                             capture_output=True, text=True, check=True).stdout.strip()
        return [float(v) if v not in ("",) else float("nan") for v in out.split(",")]
    import sqlite3
    db = sqlite3.connect(f"file:{os.path.join(kiln.data, 'kiln.db')}?mode=ro", uri=True, timeout=30)
    try:
        row = db.execute(sql).fetchone()
    finally:
        db.close()
    return [float("nan") if v is None else float(v) for v in row]


def delivery_diagnostics(kiln):
    """Where the time went: how fast the consumer queued deliveries (one row per endpoint
    and event) and how long the sender's attempts took (its own latency_ms, measured
    around building the HTTP client, the address check and the request)."""
    first, last, count = store_query(
        kiln, "SELECT MIN(created_at), MAX(created_at), COUNT(*) FROM webhook_deliveries")
    a_first, a_last, attempts = store_query(
        kiln, "SELECT MIN(started_at), MAX(started_at), COUNT(*) FROM webhook_attempts")
    latencies = []
    if kiln.engine == "postgres":
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(kiln.args.pg_port), "-U",
                              "postgres", "-d", kiln.db, "-qAtc",
                              "SELECT latency_ms FROM webhook_attempts"],
                             capture_output=True, text=True, check=True).stdout.split()
        latencies = [float(v) for v in out]
    else:
        import sqlite3
        db = sqlite3.connect(f"file:{os.path.join(kiln.data, 'kiln.db')}?mode=ro", uri=True,
                             timeout=30)
        latencies = [r[0] for r in db.execute("SELECT latency_ms FROM webhook_attempts")]
        db.close()
    span = (last - first) / 1000.0
    return {
        "queued": count, "queued_span_s": span,
        "queued_per_s": (count - 1) / span if span > 0 else float("nan"),
        "attempts": attempts, "attempt_span_s": (a_last - a_first) / 1000.0,
        "attempt_p50_ms": pct(latencies, 50), "attempt_p90_ms": pct(latencies, 90),
        "attempt_p99_ms": pct(latencies, 99),
    }


def create_project(kiln, slug):
    http("POST", kiln.url + "/api/v1/projects", {"slug": slug, "name": slug}, ADMIN)
    _, body = http("POST", kiln.url + f"/api/v1/projects/{slug}/tokens",
                   {"name": "bench", "scopes": ["ingest", "read"]}, ADMIN)
    return body["token"]


def create_endpoints(kiln, slug, receiver, count, active):
    ids = []
    for k in range(count):
        status, body = http("POST", kiln.url + f"/api/v1/projects/{slug}/webhooks",
                            {"url": f"{receiver.url}/{slug}/{k}", "active": active}, ADMIN,
                            timeout=120)
        if status != 201:
            raise RuntimeError(f"creating an endpoint answered {status}: {body}")
        ids.append(body["id"])
    return ids


def set_active(kiln, slug, ids, active):
    for endpoint in ids:
        # A generous timeout: on SQLite this write can wait long for the write lock.
        http("PATCH", kiln.url + f"/api/v1/projects/{slug}/webhooks/{endpoint}", {"active": active},
             ADMIN, timeout=120)


def webhook_status(kiln, slug):
    try:
        _, body = http("GET", kiln.url + f"/api/v1/webhooks/status?project={slug}", None, ADMIN,
                       timeout=120)
        return body
    except OSError as error:
        return {"error": str(error)}


def ingest(kiln, token, events):
    """POSTs events (a list); returns ({global id: ack ms}, answer ms)."""
    sent = now_ms()
    try:
        status, body = http("POST", kiln.url + "/api/v1/events", events, token, timeout=60)
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"ingest answered {error.code}: {error.read()[:500]!r}") from None
    acked = now_ms()
    if status not in (200, 201):
        raise RuntimeError(f"ingest answered {status}: {body}")
    return {e["id"]: acked for e in body["events"] if e.get("id") is not None}, acked - sent


def wait_deliveries(receiver, expected, stall_seconds):
    """Polls the receiver until `expected` deliveries arrived or none came for a while."""
    last, last_change = -1, time.monotonic()
    while True:
        count = receiver.count()
        if count >= expected:
            return count, False
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > stall_seconds:
            return count, True
        time.sleep(0.2)


def analyse(records, acks, endpoints_expected, events_expected):
    """Counts, duplicates, per-endpoint order, deliveries/s and commit → delivered latency."""
    seen = set()
    duplicates = 0
    order_violations = 0
    last_per_endpoint = {}
    latencies = []
    times = []
    for event_id, path, received in records:
        if event_id not in acks:
            continue  # not one of this phase's events
        key = (path, event_id)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        times.append(received)
        latencies.append(received - acks[event_id])
    # order: records of one endpoint sorted by receipt time must have increasing ids
    by_endpoint = {}
    for event_id, path, received in records:
        if event_id in acks:
            by_endpoint.setdefault(path, []).append((received, event_id))
    for path, items in by_endpoint.items():
        items.sort()
        previous = -1
        for _, event_id in items:
            if event_id < previous:
                order_violations += 1
            previous = max(previous, event_id)
        last_per_endpoint[path] = previous
    expected = endpoints_expected * events_expected
    span = (max(times) - min(times)) / 1000.0 if len(times) > 1 else float("nan")
    return {
        "delivered": len(seen), "expected": expected, "duplicates": duplicates,
        "order_violations": order_violations, "endpoints_heard": len(by_endpoint),
        "span_s": span,
        "deliveries_per_s": (len(times) - 1) / span if len(times) > 1 and span > 0 else float("nan"),
        "p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90), "p99_ms": pct(latencies, 99),
        "max_ms": max(latencies) if latencies else float("nan"),
        "first_ms": (min(times) - min(acks.values())) if times else float("nan"),
    }


def fan_out(args, engine, receiver):
    """(a): ENDPOINTS endpoints; a burst, then a paced run."""
    kiln = Kiln(args, engine, "fanout")
    result = {"endpoints": args.endpoints}
    pg = pg_pid(args, engine)
    try:
        token = create_project(kiln, "fan")
        create_endpoints(kiln, "fan", receiver, args.endpoints, True)
        receiver.collect()
        runs = [f"00000000-0000-4000-9000-{n:012d}" for n in range(1, 11)]

        # 1. burst
        log(f"  (a) burst: {args.events} events × {args.endpoints} endpoints")
        acks = {}
        cpu0, pg0, rcv0, busy0, t0 = kiln.cpu(), tree_cpu(pg), receiver.cpu(), machine_busy(), time.monotonic()
        got, _ = ingest(kiln, token, [
            {"runId": run, "event": "build_started", "eventId": f"start-{i}", "host": "h1",
             "command": "make"} for i, run in enumerate(runs)])
        acks.update(got)
        n = len(runs)
        ingest_ms = []
        while n < args.events:
            batch = []
            for _ in range(min(args.batch, args.events - n)):
                n += 1
                batch.append({"runId": runs[n % len(runs)], "event": "build_progress",
                              "eventId": f"burst-{n}", "stage": "Build", "progress": n % 100,
                              "message": f"burst event {n}"})
            got, took = ingest(kiln, token, batch)
            acks.update(got)
            ingest_ms.append(took)
        ingest_done = time.monotonic()
        expected = len(acks) * args.endpoints
        count, stalled = wait_deliveries(receiver, expected, args.stall_seconds)
        wall = time.monotonic() - t0
        burst = analyse(receiver.collect()["records"], acks, args.endpoints, len(acks))
        burst.update({
            "events": len(acks), "stalled": stalled, "ingest_s": ingest_done - t0,
            "server_cores": (kiln.cpu() - cpu0) / wall, "postgres_cores": (tree_cpu(pg) - pg0) / wall,
            "receiver_cores": (receiver.cpu() - rcv0) / wall,
            "machine_cores": (machine_busy() - busy0) / wall, "wall_s": wall,
        })
        result["burst"] = burst
        try:
            burst["store"] = delivery_diagnostics(kiln)
            d = burst["store"]
            log(f"    consumer queued {d['queued']:,.0f} deliveries at {d['queued_per_s']:,.0f}/s "
                f"(over {d['queued_span_s']:.1f} s); sender attempts p50 {d['attempt_p50_ms']:.0f} ms, "
                f"p90 {d['attempt_p90_ms']:.0f}, p99 {d['attempt_p99_ms']:.0f}")
        except (subprocess.CalledProcessError, OSError, ValueError) as error:
            log(f"    (store diagnostics unavailable: {error})")
        log(f"    {burst['delivered']:,}/{burst['expected']:,} delivered"
            f"{' (STALLED)' if stalled else ''}, {burst['deliveries_per_s']:,.0f} deliveries/s over "
            f"{burst['span_s']:.1f} s; commit → delivered p50 {burst['p50_ms']:.0f} ms, p99 "
            f"{burst['p99_ms']:.0f} ms; dup {burst['duplicates']}, order violations "
            f"{burst['order_violations']}; server {burst['server_cores']:.2f} cores, postgres "
            f"{burst['postgres_cores']:.2f}, receiver {burst['receiver_cores']:.2f}, machine "
            f"{burst['machine_cores']:.2f}")

        # 2. paced
        rate = args.paced_rate
        if rate <= 0:
            rate = max(0.1, min(50.0, 0.5 * burst["deliveries_per_s"] / args.endpoints))
        log(f"  (a) paced: {rate:.1f} events/s × {args.endpoints} endpoints for {args.paced_seconds} s")
        runs = [f"00000000-0000-4000-9001-{n:012d}" for n in range(1, 11)]
        ingest(kiln, token, [{"runId": run, "event": "build_started", "eventId": f"start-{i}"}
                             for i, run in enumerate(runs)])
        wait_deliveries(receiver, len(runs) * args.endpoints, args.stall_seconds)
        receiver.collect()
        acks = {}
        cpu0, pg0, rcv0, busy0, t0 = kiln.cpu(), tree_cpu(pg), receiver.cpu(), machine_busy(), time.monotonic()
        interval = 1.0 / rate
        k = 0
        while True:
            due = t0 + k * interval
            if due - t0 >= args.paced_seconds:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            k += 1
            got, _ = ingest(kiln, token, [{
                "runId": runs[k % len(runs)], "event": "build_progress", "eventId": f"paced-{k}",
                "stage": "Test", "progress": k % 100, "message": f"paced event {k}"}])
            acks.update(got)
        expected = len(acks) * args.endpoints
        count, stalled = wait_deliveries(receiver, expected, args.stall_seconds)
        wall = time.monotonic() - t0
        paced = analyse(receiver.collect()["records"], acks, args.endpoints, len(acks))
        paced.update({
            "events": len(acks), "rate": rate, "stalled": stalled,
            "offered_deliveries_per_s": rate * args.endpoints,
            "server_cores": (kiln.cpu() - cpu0) / wall, "postgres_cores": (tree_cpu(pg) - pg0) / wall,
            "receiver_cores": (receiver.cpu() - rcv0) / wall,
            "machine_cores": (machine_busy() - busy0) / wall, "wall_s": wall,
        })
        result["paced"] = paced
        log(f"    {paced['delivered']:,}/{paced['expected']:,} delivered"
            f"{' (STALLED)' if stalled else ''}; commit → delivered p50 {paced['p50_ms']:.1f} ms, "
            f"p90 {paced['p90_ms']:.1f}, p99 {paced['p99_ms']:.1f} ms, max {paced['max_ms']:.0f}; "
            f"server {paced['server_cores']:.2f} cores, machine {paced['machine_cores']:.2f}")
        result["status"] = webhook_status(kiln, "fan")
        result["status"].pop("endpoints", None)
    finally:
        kiln.stop()
    return result


def delete_endpoints(kiln, slug, ids):
    """Deletes endpoints (with their deliveries); returns how many DELETEs answered 503 and
    were retried. (On PostgreSQL a DELETE can race the consumer, which read the endpoint
    before it was deactivated and still inserts its deliveries: the endpoint's row then
    fails its foreign key and the API answers 503.)"""
    retried = 0
    for endpoint in ids:
        for attempt in range(30):
            try:
                http("DELETE", kiln.url + f"/api/v1/projects/{slug}/webhooks/{endpoint}", None,
                     ADMIN, timeout=300)
                break
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    break
                if error.code != 503 or attempt == 29:
                    raise
                retried += 1
                time.sleep(1)
    if retried:
        log(f"    {retried} endpoint DELETEs answered 503 and were retried")
    return retried


def ingest_rounds(args, engine, receiver):
    """(b): ingest with 0 vs INGEST_ENDPOINTS active endpoints, alternating.

    Each active round gets new endpoints, deleted (with their deliveries) after it, so
    every round starts without a backlog: the rounds are comparable, and a 0-endpoint
    round measures ingest with no webhook work left over (--keep-backlog keeps the same
    endpoints across rounds, deactivated in between, instead)."""
    kiln = Kiln(args, engine, "ingest")
    pg = pg_pid(args, engine)
    rounds = []
    try:
        token = kiln_token_setup(kiln.url)  # project "bench", the load's token
        seed_builds(kiln.url, token)
        ids = []
        if args.keep_backlog:
            ids = create_endpoints(kiln, "bench", receiver, args.ingest_endpoints, False)
        run_wrk(args, kiln.url, token, f"{engine}-warmup", args.warmup, 64, server_pid=kiln.pid,
                pg_pid=pg)
        for r in range(args.rounds):
            order = [0, args.ingest_endpoints] if r % 2 == 0 else [args.ingest_endpoints, 0]
            for n in order:
                if n and args.keep_backlog:
                    set_active(kiln, "bench", ids, True)
                elif n:
                    ids = create_endpoints(kiln, "bench", receiver, n, True)
                time.sleep(args.settle)
                receiver.collect()
                rcv0 = receiver.cpu()
                load = run_wrk(args, kiln.url, token, f"{engine}-r{r}-{n}ep", args.round_seconds, 64,
                               server_pid=kiln.pid, pg_pid=pg)
                delivered = receiver.collect()["count"]
                entry = {"round": r, "endpoints": n, "events_per_s": load.events_per_s,
                         "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "failed": load.failed,
                         "cpu": load.cpu, "deliveries": delivered,
                         "deliveries_per_s": delivered / load.cpu["wall"],
                         "receiver_cores": (receiver.cpu() - rcv0) / load.cpu["wall"]}
                if n:
                    status = webhook_status(kiln, "bench")
                    entry["pending_after"] = status.get("pending")
                    entry["delivered_total"] = status.get("delivered")
                    log(f"    deliveries during the round: {delivered:,} ({entry['deliveries_per_s']:,.0f}/s); "
                        f"pending after it: {status.get('pending')}")
                    cleanup_started = time.monotonic()
                    set_active(kiln, "bench", ids, False)
                    if not args.keep_backlog:
                        entry["delete_503s"] = delete_endpoints(kiln, "bench", ids)
                        ids = []
                    entry["cleanup_s"] = time.monotonic() - cleanup_started
                    log(f"    endpoints {'deactivated' if args.keep_backlog else 'deleted'} in "
                        f"{entry['cleanup_s']:.1f} s")
                rounds.append(entry)
    finally:
        kiln.stop()
    none = [r["events_per_s"] for r in rounds if r["endpoints"] == 0]
    some = [r["events_per_s"] for r in rounds if r["endpoints"] > 0]
    pairs = []
    for r in range(args.rounds):
        a = next(x["events_per_s"] for x in rounds if x["round"] == r and x["endpoints"] == 0)
        b = next(x["events_per_s"] for x in rounds if x["round"] == r and x["endpoints"] > 0)
        pairs.append(b / a if a else float("nan"))
    return {
        "rounds": rounds, "none_mean": statistics.mean(none), "some_mean": statistics.mean(some),
        "ratio": statistics.mean(some) / statistics.mean(none), "pair_ratios": pairs,
    }


# ---------------------------------------------------------------- report


def report(args, results):
    out = []
    add = out.append
    add(f"# Webhook benchmark ({time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {args.kiln_desc}, "
        f"{os.cpu_count()} cores, webhook busy share "
        f"{os.environ.get('KILN_WEBHOOK_BUSY_SHARE', '2') + '%'}"
        f"{'' if 'KILN_WEBHOOK_BUSY_SHARE' in os.environ else ' (the default)'})")
    add("")
    c = results["receiver_ceiling"]
    add(f"Receiver (`node receiver.mjs`, {args.receiver_workers} workers) alone under wrk, 64 connections: "
        f"{c['keep-alive']['rps']:,.0f} requests/s with keep-alive ({c['keep-alive']['receiver_cores']:.2f} "
        f"cores), {c['connection per request']['rps']:,.0f} requests/s with a new connection per "
        f"request ({c['connection per request']['receiver_cores']:.2f} cores).")
    add("")
    add("## (a) fan-out")
    add("")
    add("| engine | phase | events | endpoints | delivered / expected | dup | order violations | deliveries/s | commit → delivered p50 / p90 / p99 / max ms | cores: server / postgres / receiver / machine |")
    add("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for engine, r in results["engines"].items():
        a = r.get("fanout")
        if not a:
            continue
        for phase in ("burst", "paced"):
            p = a[phase]
            label = phase if phase == "burst" else f"paced {p['rate']:.1f} events/s"
            add(f"| {engine} | {label} | {p['events']:,} | {a['endpoints']} | {p['delivered']:,} / "
                f"{p['expected']:,}{' (stalled)' if p['stalled'] else ''} | {p['duplicates']} | "
                f"{p['order_violations']} | {p['deliveries_per_s']:,.0f} | {p['p50_ms']:,.1f} / "
                f"{p['p90_ms']:,.1f} / {p['p99_ms']:,.1f} / {p['max_ms']:,.0f} | "
                f"{p['server_cores']:.2f} / {p['postgres_cores']:.2f} / {p['receiver_cores']:.2f} / "
                f"{p['machine_cores']:.2f} |")
    for engine, r in results["engines"].items():
        d = (r.get("fanout") or {}).get("burst", {}).get("store")
        if d:
            add(f"- {engine} burst, from the server's own tables: the consumer queued "
                f"{d['queued']:,.0f} deliveries at {d['queued_per_s']:,.0f}/s (over "
                f"{d['queued_span_s']:.1f} s); the sender's attempts took p50 "
                f"{d['attempt_p50_ms']:.0f} / p90 {d['attempt_p90_ms']:.0f} / p99 "
                f"{d['attempt_p99_ms']:.0f} ms (client set-up, address check and request).")
    add("")
    add("## (b) ingest with endpoints vs without (same server, alternating rounds)")
    add("")
    add("| engine | round | active endpoints | events/s | p50 ms | p99 ms | deliveries/s during the round | cores: server / postgres / wrk / other |")
    add("|---|---:|---:|---:|---:|---:|---:|---|")
    for engine, r in results["engines"].items():
        b = r.get("ingest")
        if not b:
            continue
        for x in b["rounds"]:
            cpu = x["cpu"]
            add(f"| {engine} | {x['round']} | {x['endpoints']} | {x['events_per_s']:,.0f} | "
                f"{x['p50_ms']:.2f} | {x['p99_ms']:.2f} | {x['deliveries_per_s']:,.0f} | "
                f"{cpu['server']:.2f} / {cpu['postgres']:.2f} / {cpu['wrk']:.2f} / {cpu['other']:.2f} |")
    add("")
    for engine, r in results["engines"].items():
        b = r.get("ingest")
        if b:
            add(f"- {engine}: mean {b['none_mean']:,.0f} events/s with no endpoint, {b['some_mean']:,.0f} "
                f"with {args.ingest_endpoints} active → **ratio {b['ratio']:.1%}** (per round: "
                + ", ".join(f"{p:.1%}" for p in b["pair_ratios"]) + "); target ≥ 90%: "
                + ("**met**" if b["ratio"] >= 0.9 else "**missed**"))
    add("")
    for line in results["context"]:
        add(f"    {line}")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kiln", required=True)
    p.add_argument("--kiln-desc", default="kiln")
    p.add_argument("--engines", default="sqlite postgres")
    p.add_argument("--pg-port", type=int, default=55435)
    p.add_argument("--work", required=True)
    p.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "results", "webhooks-latest"))
    p.add_argument("--phases", default="fanout ingest")
    p.add_argument("--receiver-workers", type=int, default=2)
    p.add_argument("--ceiling-seconds", type=int, default=5)
    p.add_argument("--endpoints", type=int, default=100)
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--paced-rate", type=float, default=0)
    p.add_argument("--paced-seconds", type=int, default=30)
    p.add_argument("--stall-seconds", type=float, default=30)
    p.add_argument("--ingest-endpoints", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round-seconds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--keep-backlog", action="store_true")
    p.add_argument("--wrk-threads", type=int, default=2)
    args = p.parse_args()
    # run.sh's timeout and cleanup send SIGTERM: stop the servers and the receiver first.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results = {"engines": {}, "context": [f"START {context()}"]}
    receiver = Receiver(args.receiver_workers)
    try:
        log("receiver ceiling")
        results["receiver_ceiling"] = receiver_ceiling(args, receiver)
        for engine in args.engines.split():
            log(f"=== {engine}")
            results["context"].append(f"{engine} {context()}; {fsync_probe(args.work)}")
            log(results["context"][-1])
            r = results["engines"].setdefault(engine, {})
            if "fanout" in args.phases:
                r["fanout"] = fan_out(args, engine, receiver)
            if "ingest" in args.phases:
                r["ingest"] = ingest_rounds(args, engine, receiver)
        results["context"].append(f"END {context()}; {fsync_probe(args.work)}")
    finally:
        receiver.stop()
    text = report(args, results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(text)


if __name__ == "__main__":
    main()
