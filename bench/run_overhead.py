#!/usr/bin/env python3
"""What `kiln run` adds to a build's wall time, with the server up, down and slow.

Usage: python3 bench/run_overhead.py [KILN_BINARY] [RUNS]

Runs the same small command (`sh -c 'echo …; true'`, a few lines of output) directly and
wrapped in `kiln run` against: a real `kiln serve` (SQLite, temp dir), a closed port
(connection refused), an unknown host (DNS failure), and a listener that accepts
connections but never answers (slow). Reports the median and worst wall time of RUNS
runs (default 10) and the median added over running the command directly, measured in
the same run. Standard library only; everything on 127.0.0.1.
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

KILN = sys.argv[1] if len(sys.argv) > 1 else "target/release/kiln"
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
ADMIN = "kiln_bench_admin_token_0123456789abcdef"
COMMAND = ["sh", "-c", "for i in 1 2 3 4 5; do echo line $i; done; echo warning >&2"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(argv, env):
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited with {done.returncode}")
    return elapsed


def measure(label, url, token, spool, baseline):
    env = dict(os.environ, KILN_URL=url, KILN_TOKEN=token)
    for key in ("KILN_RUN_ID", "KILN_FLUSH_TIMEOUT", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI"):
        env.pop(key, None)
    times = []
    for run in range(RUNS):
        # A spool of its own per run: what one build pays, not the resend of the
        # spool earlier runs left while the server was away.
        env["KILN_SPOOL_DIR"] = f"{spool}-{run}"
        times.append(timed([KILN, "run", "--", *COMMAND], env))
    median = statistics.median(times)
    added = (median - baseline) * 1000
    print(f"| {label} | {median * 1000:.0f} ms | {max(times) * 1000:.0f} ms | {added:+.0f} ms |")


def silent_listener():
    """Accepts connections and never answers: a server that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            connection, _ = server.accept()
            held.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def main():
    work = tempfile.mkdtemp(prefix="kiln-run-overhead-")
    port = free_port()
    server = subprocess.Popen(
        [KILN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", os.path.join(work, "data")],
        env=dict(os.environ, KILN_ADMIN_TOKEN=ADMIN, KILN_LOG="warn"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in server.stderr:
            if line.startswith("kiln listening on "):
                break
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        admin_env = dict(os.environ, KILN_URL=url, KILN_TOKEN=ADMIN)
        subprocess.run([KILN, "project", "create", "bench"], env=admin_env, check=True,
                       stdout=subprocess.DEVNULL)
        token = subprocess.run(
            [KILN, "token", "create", "--project", "bench", "--scope", "ingest,read"],
            env=admin_env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        baseline = statistics.median(timed(COMMAND, os.environ) for _ in range(RUNS))
        print(f"`kiln run -- sh -c '…'` (6 lines of output, shipped as the build's log), {RUNS} runs each; "
              f"the command alone: {baseline * 1000:.1f} ms median\n")
        print("| server | median | worst | added (median) |")
        print("|---|---|---|---|")
        measure("up (kiln serve, SQLite)", url, token, os.path.join(work, "spool-up"), baseline)
        measure("down (port closed)", f"http://127.0.0.1:{free_port()}", token,
                os.path.join(work, "spool-down"), baseline)
        measure("unknown host", "http://kiln-bench.invalid:8090", token,
                os.path.join(work, "spool-dns"), baseline)
        measure("slow (accepts, never answers)", f"http://127.0.0.1:{silent_listener()}", token,
                os.path.join(work, "spool-slow"), baseline)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
