#!/usr/bin/env python3
"""Runs every measurement of Kiln's ingest benchmark in one go and writes the table.

Called by bench/run.sh, which builds the binaries and starts PostgreSQL first; this
script only uses the standard library. Everything it starts it stops (try/finally), and
everything it talks to is on 127.0.0.1.

Measured, in this order:
  B4  raw SQLite, 1,000 rows per transaction   (bench/baseline-sqlite, C + libsqlite3)
  B5  raw SQLite, one row per transaction       (same program)
  B1  Fastify + pg, one INSERT per event         (bench/baseline-fastify)
  Kiln on SQLite, then Kiln on PostgreSQL: maximum rate at 64 connections (one event per
  request), p99 at half that rate (paced), idle RSS after start-up, and an extra run with
  100 events per request to show what the storage path does when HTTP is amortised.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
LUA = os.path.join(BENCH, "load", "ingest.lua")
CEILING_LUA = os.path.join(BENCH, "load", "ceiling.lua")
SCHEMA = os.path.join(ROOT, "crates", "kiln-store", "migrations", "sqlite", "0001_init.sql")
ADMIN = "kiln_benchadmin"
TICK = os.sysconf("SC_CLK_TCK")


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- CPU accounting


def proc_cpu(pid):
    """utime+stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def tree_cpu(pid):
    """CPU seconds of a process and its direct children (the PostgreSQL backends)."""
    if pid is None:
        return 0.0
    return proc_cpu(pid) + sum(proc_cpu(kid) for kid in children_of(pid))


def snapshot():
    """pid -> (name, CPU seconds) for every process (a process that ends between two
    snapshots is not seen: its parent's reaped-children time is not counted either, as
    that may include work done long before)."""
    result = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = text[text.find("(") + 1:text.rfind(")")]
        fields = text.rsplit(")", 1)[1].split()
        result[int(entry)] = (name, sum(int(v) for v in fields[11:13]) / TICK)
    return result


def top_others(before, after, exclude, wall):
    """The processes outside the benchmark that used the most CPU between two snapshots."""
    usage = {}
    for pid, (name, cpu) in after.items():
        if pid in exclude:
            continue
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            usage[name] = usage.get(name, 0.0) + delta
    ranked = sorted(usage.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{name} {cpu / wall:.2f}" for name, cpu in ranked if cpu / wall >= 0.05)


def machine_busy():
    """Non-idle CPU seconds of the whole machine so far (all cores)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- helpers


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
        return response.status, (json.loads(text) if text.strip() else None)


def wait_healthy(url, process, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            status, _ = http("GET", url + "/healthz", timeout=1)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url}/healthz did not answer 200 within {seconds}s")


def run_id(n):
    return f"00000000-0000-4000-8000-{n:012d}"


def seed_builds(url, token):
    """One build_started per run id the load uses (the load never sends terminal events)."""
    events = [
        {"runId": run_id(n), "event": "build_started", "eventId": f"start-{n}",
         "host": "h1", "pid": 123, "command": "make"}
        for n in range(1, 65)
    ]
    status, _ = http("POST", url + "/api/v1/events", events, token)
    if status not in (200, 201):
        raise RuntimeError(f"seeding builds answered {status}")


@dataclass
class Load:
    requests: int = 0
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    ok_rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    p999_ms: float = 0.0
    max_ms: float = 0.0
    batch: int = 1
    cpu: dict = field(default_factory=dict)

    @property
    def events_per_s(self):
        return self.ok_rps * self.batch


def run_wrk(args, url, token, tag, seconds, connections, rate=0, batch=1, server_pid=None,
            pg_pid=None, ceiling=False, extra_env=None):
    env = dict(os.environ, WRK_RATE=str(int(rate)), WRK_BATCH=str(batch))
    env.pop("WRK_NO_EVENT_ID", None)
    env.pop("WRK_RUNS", None)
    env.update(extra_env or {})
    command = ["wrk", f"-t{args.wrk_threads}", f"-c{connections}", f"-d{seconds}s",
               "--timeout", "10s"]
    if ceiling:
        command += ["-s", CEILING_LUA, url + "/healthz"]
    else:
        command += ["-s", LUA, url + "/api/v1/events", "--", token or "", tag,
                    str(args.wrk_threads)]
    before = (machine_busy(), proc_cpu(server_pid) if server_pid else 0.0, tree_cpu(pg_pid))
    processes_before = snapshot()
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    after = (machine_busy(), proc_cpu(server_pid) if server_pid else 0.0, tree_cpu(pg_pid))
    exclude = {os.getpid(), process.pid}
    if server_pid:
        exclude.add(server_pid)
    if pg_pid:
        exclude.add(pg_pid)
        exclude.update(children_of(pg_pid))
    others = top_others(processes_before, snapshot(), exclude, wall)
    match = re.search(r"^RESULT (.*)$", output, re.M)
    if process.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    values = dict(pair.split("=") for pair in match.group(1).split())
    load = Load(
        requests=int(values["requests"]), ok=int(values["ok"]), failed=int(values["failed"]),
        seconds=float(values["seconds"]), ok_rps=float(values["ok_rps"]),
        p50_ms=float(values["p50_ms"]), p90_ms=float(values["p90_ms"]),
        p99_ms=float(values["p99_ms"]), p999_ms=float(values["p999_ms"]),
        max_ms=float(values["max_ms"]), batch=batch,
    )
    wrk_cpu = usage.ru_utime + usage.ru_stime
    total = after[0] - before[0]
    server = after[1] - before[1]
    pg = after[2] - before[2]
    load.cpu = {
        "wall": wall,
        "server": server / wall,
        "postgres": pg / wall,
        "wrk": wrk_cpu / wall,
        "other": max(0.0, total - server - pg - wrk_cpu) / wall,
    }
    log(f"  {tag}: {load.events_per_s:,.0f} events/s ok, {load.failed} failed, "
        f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms; cores used: "
        + ", ".join(f"{k} {v:.2f}" for k, v in load.cpu.items() if k != "wall")
        + (f" (others: {others})" if others else ""))
    load.cpu["others"] = others
    if load.failed:
        log(f"  WARNING: {load.failed} requests failed in {tag}")
    return load


def stop(process, name):
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop within 15s; killing it")
        process.kill()
        process.wait()


# ---------------------------------------------------------------- the measurements


def sqlite_baseline(args, work, per_txn, seconds):
    path = os.path.join(work, f"raw-{per_txn}.db")
    output = subprocess.run([args.sqlite_insert, path, SCHEMA, str(per_txn), str(seconds)],
                            check=True, capture_output=True, text=True).stdout
    values = dict(pair.split("=") for pair in output.split())
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    log(f"  raw SQLite, {per_txn}/txn: {float(values['rows_per_sec']):,.0f} rows/s "
        f"(SQLite {values['sqlite']})")
    return values


def measure_server(args, name, command, env, url, token_setup, pg_pid):
    """Starts a server, measures idle RSS, max rate, paced p99 and (for Kiln) a batched run."""
    result = {"name": name}
    log_path = os.path.join(args.work, f"{re.sub(r'[^a-z0-9]+', '-', name.lower())}.log")
    with open(log_path, "w") as server_log:
        process = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                   cwd=args.work)
    try:
        wait_healthy(url, process)
        time.sleep(args.idle_wait)
        result["rss_idle_kib"] = rss_kib(process.pid)
        token = token_setup(url)
        seed_builds(url, token)
        tag = re.sub(r"[^a-z0-9]+", "", name.lower())
        run_wrk(args, url, token, f"{tag}-warmup", args.warmup, 64, server_pid=process.pid,
                pg_pid=pg_pid)
        top = run_wrk(args, url, token, f"{tag}-max", args.duration, 64,
                      server_pid=process.pid, pg_pid=pg_pid)
        result["max"] = top
        half = top.ok_rps / 2
        result["half_rate"] = half
        result["paced"] = run_wrk(args, url, token, f"{tag}-half", args.paced_duration, 64,
                                  rate=half, server_pid=process.pid, pg_pid=pg_pid)
        if args.batch and name.startswith("Kiln"):
            result["batched"] = run_wrk(args, url, token, f"{tag}-batch", args.paced_duration,
                                        args.batch_connections, batch=args.batch,
                                        server_pid=process.pid, pg_pid=pg_pid)
        if name == "Kiln SQLite":
            result["ceiling"] = run_wrk(args, url, None, f"{tag}-ceiling", 5, 64,
                                        server_pid=process.pid, ceiling=True)
        result["rss_after_kib"] = rss_kib(process.pid)
    finally:
        stop(process, name)
    if process.returncode not in (0, -signal.SIGTERM, 143):
        log(f"{name} exited with {process.returncode}; its log is {log_path}")
    return result


def kiln_token_setup(url):
    http("POST", url + "/api/v1/projects", {"slug": "bench", "name": "Bench"}, ADMIN)
    _, body = http("POST", url + "/api/v1/projects/bench/tokens",
                   {"name": "bench", "scopes": ["ingest"]}, ADMIN)
    return body["token"]


def psql(args, sql, database="postgres"):
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(args.pg_port), "-U", "postgres",
                    "-d", database, "-qAtc", sql], check=True, capture_output=True)


# ---------------------------------------------------------------- the report


def fmt_rate(value):
    return f"{value:,.0f}"


def report(args, r, machine):
    b1 = r["b1"]["max"].events_per_s
    b4 = float(r["b4"]["rows_per_sec"])
    b5 = float(r["b5"]["rows_per_sec"])
    ks, kp = r["kiln_sqlite"], r["kiln_pg"]
    lines = []
    add = lines.append
    add(f"# Kiln ingest benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    add("")
    add(f"Machine: {machine}. Load generator: wrk {args.wrk_threads} threads, 64 connections, "
        f"one event per request, {args.duration} s per maximum run (after a {args.warmup} s "
        f"warm-up), {args.paced_duration} s per paced run. Everything on loopback, load "
        "generator and servers share the 2 cores."
        + (f" Benchmark processes ran at nice {args.nice}." if args.nice else ""))
    if args.kiln_desc:
        add("")
        add(f"Kiln: {args.kiln_desc}.")
    add("")
    add("| system | events/s (64 conn., 1 event/request) | p50 ms | p99 ms | p99 ms at half max rate (achieved rate) | idle RSS | cores: server / postgres / wrk / other |")
    add("|---|---:|---:|---:|---|---:|---|")

    def cores(load):
        c = load.cpu
        return f"{c['server']:.2f} / {c['postgres']:.2f} / {c['wrk']:.2f} / {c['other']:.2f}"

    def row(label, res):
        m, p = res["max"], res["paced"]
        add(f"| {label} | {fmt_rate(m.events_per_s)} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | "
            f"{p.p99_ms:.2f} ({fmt_rate(p.events_per_s)}/s) | {res['rss_idle_kib'] / 1024:.1f} MB | "
            f"{cores(m)} |")

    row("B1 Fastify + pg, 1 INSERT/event (PostgreSQL)", r["b1"])
    add(f"| B4 raw SQLite, 1,000 rows/txn (C, libsqlite3 {r['b4']['sqlite']}) | {fmt_rate(b4)} | | "
        f"| | | 1 thread |")
    add(f"| B5 raw SQLite, 1 row/txn (C, libsqlite3 {r['b5']['sqlite']}) | {fmt_rate(b5)} | | "
        f"{float(r['b5']['txn_p99_ms']):.2f} (commit) | | | 1 thread |")
    row("**Kiln on SQLite**", ks)
    row("**Kiln on PostgreSQL**", kp)
    for label, res in (("Kiln on SQLite", ks), ("Kiln on PostgreSQL", kp)):
        if "batched" in res:
            b = res["batched"]
            add(f"| {label}, {args.batch} events/request, {args.batch_connections} conn. (extra) | "
                f"{fmt_rate(b.events_per_s)} | {b.p50_ms:.2f} | {b.p99_ms:.2f} | | | {cores(b)} |")
    if "ceiling" in ks:
        c = ks["ceiling"]
        add(f"| HTTP ceiling: Kiln `GET /healthz`, 64 conn. (no database; extra) | "
            f"{fmt_rate(c.ok_rps)} req/s | {c.p50_ms:.2f} | {c.p99_ms:.2f} | | | {cores(c)} |")
    add("")
    add("## Against the targets")
    add("")
    add("| target | Kiln on SQLite | Kiln on PostgreSQL |")
    add("|---|---|---|")

    def verdict(value, goal, unit="×"):
        ok = value >= goal
        return f"{value:.2f}{unit} — {'met' if ok else 'MISSED'}"

    s_rate, p_rate = ks["max"].events_per_s, kp["max"].events_per_s
    add(f"| durable ingest ≥ 10× B1 ({fmt_rate(10 * b1)} events/s) | "
        f"{verdict(s_rate / b1, 10)} | {verdict(p_rate / b1, 10)} |")
    add(f"| stretch ≥ 20× B1 | {verdict(s_rate / b1, 20)} | {verdict(p_rate / b1, 20)} |")
    add(f"| SQLite ≥ 20% of B4 | {100 * s_rate / b4:.1f}% — "
        f"{'met' if s_rate >= 0.2 * b4 else 'MISSED'} | n/a |")
    add(f"| SQLite ≥ 5× B5 | {verdict(s_rate / b5, 5)} | n/a |")

    def p99(res):
        v = res["paced"].p99_ms
        return f"{v:.2f} ms — {'met' if v <= 10 else 'MISSED'}"

    add(f"| p99 ≤ 10 ms at half max rate | {p99(ks)} | {p99(kp)} |")

    def rss(res):
        v = res["rss_idle_kib"] / 1024
        return f"{v:.1f} MB — {'met' if v <= 50 else 'MISSED'}"

    add(f"| idle RSS ≤ 50 MB | {rss(ks)} | {rss(kp)} |")
    add("")
    others = [load.cpu["other"] for res in (r["b1"], ks, kp) for load in (res["max"], res["paced"])]
    worst = max(others)
    if r["background_cores"] > 0.2 or worst > 0.25:
        add(f"**Warning: the machine was not quiet** (background {r['background_cores']:.2f} cores "
            f"before the run, up to {worst:.2f} cores of 'other' during it): every figure is "
            "depressed and the ratios are less reliable; re-run on an idle machine.")
        named = sorted({load.cpu.get("others", "") for res in (r["b1"], ks, kp)
                        for load in (res["max"], res["paced"])} - {""})
        if named:
            add(f"Busiest processes outside the benchmark during the runs: {'; '.join(named)}.")
        add("")
    add(f"Kiln RSS after the load: SQLite {ks['rss_after_kib'] / 1024:.1f} MB, "
        f"PostgreSQL {kp['rss_after_kib'] / 1024:.1f} MB. "
        f"Machine load average before the run: {r['loadavg_before']}; "
        "'other' cores are processes outside the benchmark (a busy machine skews every row).")
    return "\n".join(lines) + "\n"


DIAGNOSTICS = [
    ("64 run ids, eventId (the standard load)", 64, 1, {}),
    ("64 run ids, no eventId (no dedup lookup)", 64, 1, {"WRK_NO_EVENT_ID": "1"}),
    ("8 run ids, eventId", 64, 1, {"WRK_RUNS": "8"}),
    ("1 run id, eventId", 64, 1, {"WRK_RUNS": "1"}),
    ("64 run ids, 100 events/request, 8 conn.", 8, 100, {}),
    ("64 run ids, 100 events/request, 8 conn., no eventId", 8, 100, {"WRK_NO_EVENT_ID": "1"}),
]


def diagnose(args, engine_name, command, env, url, pg_pid):
    """Variants of the load against one Kiln server, to see what its ingest cost scales with."""
    rows = []
    with open(os.path.join(args.work, "diagnose.log"), "w") as server_log:
        process = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, process)
        token = kiln_token_setup(url)
        seed_builds(url, token)
        run_wrk(args, url, token, "diag-warmup", args.warmup, 64, server_pid=process.pid,
                pg_pid=pg_pid)
        for index, (label, connections, batch, extra) in enumerate(DIAGNOSTICS):
            load = run_wrk(args, url, token, f"diag{index}", args.duration, connections,
                           batch=batch, server_pid=process.pid, pg_pid=pg_pid, extra_env=extra)
            rows.append((label, load))
    finally:
        stop(process, engine_name)
    lines = [f"## Kiln on {engine_name}: what the ingest cost scales with", "",
             "| load | events/s | p50 ms | p99 ms | cores: server / postgres / wrk / other |",
             "|---|---:|---:|---:|---|"]
    for label, load in rows:
        c = load.cpu
        lines.append(f"| {label} | {fmt_rate(load.events_per_s)} | {load.p50_ms:.2f} | "
                     f"{load.p99_ms:.2f} | {c['server']:.2f} / {c['postgres']:.2f} / "
                     f"{c['wrk']:.2f} / {c['other']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kiln", required=True)
    parser.add_argument("--sqlite-insert", required=True)
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--duration", type=int, default=12)
    parser.add_argument("--paced-duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--idle-wait", type=float, default=2.0)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batch-connections", type=int, default=8)
    parser.add_argument("--pg-pid", type=int, default=None)
    parser.add_argument("--machine", default="")
    parser.add_argument("--kiln-desc", default="")
    parser.add_argument("--quiet-wait", type=float, default=60)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--diagnose", action="store_true",
                        help="instead of the benchmark, run load variants against Kiln")
    args = parser.parse_args()
    # `timeout` and Ctrl-C end the run through the finally blocks, which stop the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    # How busy the machine is before anything starts: other work on these 2 cores (a cargo
    # build next door) depresses every figure, and fsync latency (B5) most of all.
    # Waits up to --quiet-wait seconds for a 3 s window below 0.2 cores.
    deadline = time.monotonic() + args.quiet_wait
    while True:
        busy0, t0 = machine_busy(), time.monotonic()
        time.sleep(3)
        background = (machine_busy() - busy0) / (time.monotonic() - t0)
        if background < 0.2 or time.monotonic() >= deadline:
            break
        log(f"machine busy ({background:.2f} cores outside the benchmark); waiting for quiet")
    log(f"background CPU before the run: {background:.2f} cores")

    run_tag = f"{os.getpid()}"
    args.work = tempfile.mkdtemp(prefix="kiln-bench.", dir=os.environ.get("BENCH_TMP", "/var/tmp"))
    databases = [f"bench_b1_{run_tag}", f"bench_kiln_{run_tag}"]
    results = {"loadavg_before": open("/proc/loadavg").read().split()[0:3]}
    results["loadavg_before"] = " ".join(results["loadavg_before"])
    results["background_cores"] = background
    if args.diagnose:
        return main_diagnose(args, databases[1])
    try:
        log(f"B4/B5: raw SQLite ({args.duration} s each)")
        results["b4"] = sqlite_baseline(args, args.work, 1000, args.duration)
        results["b5"] = sqlite_baseline(args, args.work, 1, args.duration)

        for database in databases:
            psql(args, f"DROP DATABASE IF EXISTS {database}")
            psql(args, f"CREATE DATABASE {database}")
        pg_url = f"postgres://postgres@127.0.0.1:{args.pg_port}"

        log("B1: Fastify + pg")
        port = free_port()
        results["b1"] = measure_server(
            args, "B1 Fastify", ["node", os.path.join(BENCH, "baseline-fastify", "server.js")],
            dict(os.environ, DATABASE_URL=f"{pg_url}/{databases[0]}", PORT=str(port)),
            f"http://127.0.0.1:{port}", lambda url: "", args.pg_pid)

        # Only the admin token: a KILN_DATABASE_URL or KILN_LOG in the caller's environment
        # must not change what is measured.
        kiln_env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
        kiln_env["KILN_ADMIN_TOKEN"] = ADMIN
        log("Kiln on SQLite")
        port = free_port()
        data_dir = os.path.join(args.work, "kiln-data")
        results["kiln_sqlite"] = measure_server(
            args, "Kiln SQLite",
            [args.kiln, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir],
            kiln_env, f"http://127.0.0.1:{port}", kiln_token_setup, None)

        log("Kiln on PostgreSQL")
        port = free_port()
        results["kiln_pg"] = measure_server(
            args, "Kiln PostgreSQL",
            [args.kiln, "serve", "--listen", f"127.0.0.1:{port}", "--database-url",
             f"{pg_url}/{databases[1]}"],
            kiln_env, f"http://127.0.0.1:{port}", kiln_token_setup, args.pg_pid)
    finally:
        for database in databases:
            try:
                psql(args, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(args.work, ignore_errors=True)

    text = report(args, results, args.machine)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(results, f, indent=2, default=lambda o: o.__dict__)
    print(text)


def main_diagnose(args, database):
    kiln_env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    kiln_env["KILN_ADMIN_TOKEN"] = ADMIN
    text = []
    try:
        port = free_port()
        log("diagnostics: Kiln on SQLite")
        text.append(diagnose(args, "SQLite",
                             [args.kiln, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                              os.path.join(args.work, "kiln-data")],
                             kiln_env, f"http://127.0.0.1:{port}", None))
        psql(args, f"DROP DATABASE IF EXISTS {database}")
        psql(args, f"CREATE DATABASE {database}")
        port = free_port()
        log("diagnostics: Kiln on PostgreSQL")
        text.append(diagnose(args, "PostgreSQL",
                             [args.kiln, "serve", "--listen", f"127.0.0.1:{port}", "--database-url",
                              f"postgres://postgres@127.0.0.1:{args.pg_port}/{database}"],
                             kiln_env, f"http://127.0.0.1:{port}", args.pg_pid))
    finally:
        try:
            psql(args, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(args.work, ignore_errors=True)
    out = os.path.join(os.path.dirname(args.out), "diagnose.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
