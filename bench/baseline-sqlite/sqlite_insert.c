/*
 * B4/B5: raw SQLite inserts of Kiln's event rows, with no HTTP, JSON parsing or state
 * machine in the way. A single thread, one prepared INSERT statement, WAL journal and
 * synchronous=FULL (the settings Kiln uses), into a table with Kiln's `events` schema
 * (the migration is loaded from the file given on the command line, so the indexes that
 * must be maintained are the same ones).
 *
 *   sqlite_insert DB_PATH SCHEMA_SQL ROWS_PER_TXN SECONDS [MAX_ROWS]
 *
 * Inserts rows for SECONDS (checked after each transaction) and prints one line:
 *   rows=N txns=N seconds=S rows_per_sec=R txn_p50_ms=.. txn_p99_ms=..
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUILDS 64

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

static void exec(sqlite3 *db, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, err);
        exit(1);
    }
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(n + 1);
    if (fread(buf, 1, n, f) != (size_t)n) { perror(path); exit(1); }
    buf[n] = 0;
    fclose(f);
    return buf;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s DB_PATH SCHEMA_SQL ROWS_PER_TXN SECONDS [MAX_ROWS]\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    long per_txn = atol(argv[3]);
    double seconds = atof(argv[4]);
    long max_rows = argc > 5 ? atol(argv[5]) : 100000000L;

    sqlite3 *db;
    check(sqlite3_open(path, &db), db, "open");
    exec(db, "PRAGMA journal_mode = WAL");
    exec(db, "PRAGMA synchronous = FULL");
    exec(db, "PRAGMA foreign_keys = ON");
    exec(db, slurp(argv[2]));

    /* One project and 64 running builds, like the HTTP load (one run id per connection). */
    exec(db, "BEGIN");
    exec(db, "INSERT INTO projects (id, slug, name, created_at) VALUES (1, 'bench', 'Bench', 0)");
    char sql[512];
    for (int b = 1; b <= BUILDS; b++) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO builds (id, project_id, run_id, number, status, created_at, started_at, "
                 "last_event_at, last_event_id, last_seq) VALUES (%d, 1, "
                 "'00000000-0000-4000-8000-%012d', %d, 'running', 0, 0, 0, 0, 0)", b, b, b);
        exec(db, sql);
    }
    exec(db, "COMMIT");

    sqlite3_stmt *begin, *commit, *insert;
    check(sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL), db, "prepare begin");
    check(sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL), db, "prepare commit");
    check(sqlite3_prepare_v2(db,
        "INSERT INTO events (id, build_id, project_id, seq, event_type, client_event_id, received_at, payload) "
        "VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7)", -1, &insert, NULL), db, "prepare insert");

    static const char *types[] = {"heartbeat", "build_progress", "stage_started"};
    long seq[BUILDS + 1] = {0};
    long id = 0, txns = 0;
    size_t lat_cap = 1 << 20;
    double *lat = malloc(lat_cap * sizeof(double));
    char payload[512], client_id[64];
    double start = now_s();
    double elapsed = 0;
    while (elapsed < seconds && id < max_rows) {
        double t0 = now_s();
        check(sqlite3_step(begin), db, "begin");
        sqlite3_reset(begin);
        for (long i = 0; i < per_txn; i++) {
            id++;
            int b = (int)(id % BUILDS) + 1;
            seq[b]++;
            const char *type = types[id % 3];
            snprintf(client_id, sizeof client_id, "e-%ld", id);
            snprintf(payload, sizeof payload,
                     "{\"runId\":\"00000000-0000-4000-8000-%012d\",\"event\":\"%s\",\"eventId\":\"%s\","
                     "\"stage\":\"Build\",\"host\":\"h1\",\"pid\":123,\"command\":\"make\",\"progress\":%ld}",
                     b, type, client_id, id % 100);
            sqlite3_bind_int64(insert, 1, id);
            sqlite3_bind_int64(insert, 2, b);
            sqlite3_bind_int64(insert, 3, seq[b]);
            sqlite3_bind_text(insert, 4, type, -1, SQLITE_STATIC);
            sqlite3_bind_text(insert, 5, client_id, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int64(insert, 6, (sqlite3_int64)(t0 * 1000));
            sqlite3_bind_text(insert, 7, payload, -1, SQLITE_TRANSIENT);
            check(sqlite3_step(insert), db, "insert");
            sqlite3_reset(insert);
        }
        check(sqlite3_step(commit), db, "commit");
        sqlite3_reset(commit);
        double t1 = now_s();
        if ((size_t)txns < lat_cap) lat[txns] = (t1 - t0) * 1000;
        txns++;
        elapsed = t1 - start;
    }
    size_t n = (size_t)txns < lat_cap ? (size_t)txns : lat_cap;
    qsort(lat, n, sizeof(double), cmp_double);
    printf("rows=%ld txns=%ld seconds=%.3f rows_per_sec=%.1f txn_p50_ms=%.3f txn_p99_ms=%.3f sqlite=%s\n",
           id, txns, elapsed, id / elapsed, lat[n / 2], lat[(size_t)(n * 0.99)], sqlite3_libversion());
    sqlite3_finalize(begin);
    sqlite3_finalize(commit);
    sqlite3_finalize(insert);
    sqlite3_close(db);
    return 0;
}
