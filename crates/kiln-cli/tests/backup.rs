//! `kiln backup` and `kiln restore` with real processes: a backup taken while a `kiln
//! serve` takes a continuous load of events holds every event acknowledged before it
//! began (and of later ones whole batches or nothing), the reported log, the artifact
//! manifest with its bytes and the secret key; a restore checks what it is given and
//! refuses a non-empty directory; a backup of an older schema is migrated by `kiln serve`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, KILN, Server, Workspace, project_token, stderr, stdout};
use kiln_client::protocol::EventPayload;
use kiln_client::{ArtifactTarget, Client};
use kiln_store::Engine;
use kiln_store::test_support::TestDatabase;
use sha2::{Digest, Sha256};

const CLIENTS: usize = 8;
const PER_REQUEST: usize = 5;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn event(run_id: &str, n: usize) -> EventPayload {
    EventPayload {
        run_id: run_id.to_owned(),
        event: if n == 0 { "build_started" } else { "heartbeat" }.to_owned(),
        event_id: Some(format!("{run_id}-{n}")),
        ..EventPayload::default()
    }
}

/// One acknowledged request: when its answer arrived, and each event's (eventId, id, seq).
struct AckedBatch {
    acked_at: Instant,
    events: Vec<(String, i64, i64)>,
}

/// Sends batches for `run_id` one after the other until `stop`, recording each answer.
async fn ingest_until(client: Client, run_id: String, stop: Arc<AtomicBool>) -> Vec<AckedBatch> {
    let mut batches = Vec::new();
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        let batch: Vec<EventPayload> = (next..next + PER_REQUEST)
            .map(|n| event(&run_id, n))
            .collect();
        let answer = client
            .send_events(&batch)
            .await
            .unwrap_or_else(|error| panic!("{run_id}: ingest failed under load: {error}"));
        let acked_at = Instant::now();
        batches.push(AckedBatch {
            acked_at,
            events: answer
                .events
                .into_iter()
                .map(|ack| {
                    assert_eq!(ack.status, "stored", "{ack:?}");
                    (
                        ack.event_id.expect("eventId echoed"),
                        ack.id.expect("id"),
                        ack.seq.expect("seq"),
                    )
                })
                .collect(),
        });
        next += PER_REQUEST;
    }
    batches
}

/// Every stored event of `run_id`: eventId → (id, seq), in id order as read.
async fn stored_events(reader: &Client, run_id: &str) -> (HashMap<String, (i64, i64)>, Vec<i64>) {
    let mut stored = HashMap::new();
    let mut seqs = Vec::new();
    let mut cursor = 0;
    loop {
        let page = reader
            .build_events(run_id, cursor, Some(1000))
            .await
            .unwrap_or_else(|error| panic!("{run_id}: {error}"));
        let Some(last) = page.events.last() else {
            break;
        };
        cursor = last["id"].as_i64().unwrap();
        for event in &page.events {
            let event_id = event["eventId"].as_str().unwrap().to_owned();
            let ids = (
                event["id"].as_i64().unwrap(),
                event["seq"].as_i64().unwrap(),
            );
            seqs.push(ids.1);
            assert!(
                stored.insert(event_id.clone(), ids).is_none(),
                "{event_id} stored twice"
            );
        }
    }
    (stored, seqs)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Runs `kiln backup --data-dir DATA --to FILE [EXTRA…]`.
fn backup(data: &Path, file: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(KILN);
    command
        .args(["backup", "--data-dir"])
        .arg(data)
        .arg("--to")
        .arg(file)
        .args(extra)
        .env("KILN_LOG", "warn")
        .env_remove("KILN_DATABASE_URL")
        .env_remove("KILN_DATA_DIR");
    command.output().expect("run kiln backup")
}

fn restore(file: &Path, data: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(KILN);
    command
        .args(["restore", "--from"])
        .arg(file)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("KILN_LOG", "warn")
        .env_remove("KILN_DATABASE_URL");
    command.output().expect("run kiln restore")
}

/// Uploads `bytes` as artifact `path` of `run_id` (through a file in `dir`).
async fn upload(client: &Client, dir: &Path, run_id: &str, path: &str, bytes: &[u8]) {
    let local = dir.join(path.replace('/', "_"));
    std::fs::write(&local, bytes).unwrap();
    client
        .upload_artifact(
            &ArtifactTarget::Build {
                run_id: run_id.into(),
            },
            &local,
            path,
            0o644,
            Some("Build"),
        )
        .await
        .unwrap_or_else(|error| panic!("upload {path}: {error}"));
}

#[test]
fn a_backup_under_load_restores_every_acknowledged_event_log_and_artifact_on_sqlite() {
    backup_under_load(None);
}

/// The same on PostgreSQL: `pg_dump` of an exported snapshot, restored by `pg_restore`
/// into a second, empty database.
#[test]
#[cfg_attr(
    not(kiln_postgres_tests),
    ignore = "PostgreSQL skipped: set KILN_TEST_DATABASE_URL (bash .ci/run does)"
)]
fn a_backup_under_load_restores_every_acknowledged_event_log_and_artifact_on_postgres() {
    let runtime = runtime();
    let source = runtime.block_on(TestDatabase::create(Engine::Postgres));
    let target = runtime.block_on(TestDatabase::create(Engine::Postgres));
    backup_under_load(Some((&source.url, &target.url)));
}

/// `databases`: the server's PostgreSQL database and the empty one to restore into;
/// `None` for SQLite in the data dir.
fn backup_under_load(databases: Option<(&str, &str)>) {
    let (source_flags, target_flags): (Vec<&str>, Vec<&str>) = match databases {
        Some((source, target)) => (
            vec!["--database-url", source],
            vec!["--database-url", target],
        ),
        None => (vec![], vec![]),
    };
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &source_flags);
    let token = project_token(&workspace, &server);
    let runtime = runtime();
    let client = Client::new(&server.url, Some(token.clone()));
    let admin = Client::new(&server.url, Some(ADMIN.into()));

    // A build with a reported log, two artifacts and a project secret.
    let log: Vec<u8> = (0..2_000)
        .flat_map(|n| format!("line {n} of the build's output\n").into_bytes())
        .collect();
    let big: Vec<u8> = (0..300_000u32).map(|n| (n * 7919 % 251) as u8).collect();
    runtime.block_on(async {
        client.send_events(&[event("artifacts", 0)]).await.unwrap();
        let ack = client
            .report_log(
                "artifacts",
                "Build",
                0,
                log.clone(),
                Some(("passed", Some(0))),
            )
            .await
            .unwrap();
        eprintln!("log acknowledged: {ack:?}");
        upload(
            &client,
            workspace.dir.path(),
            "artifacts",
            "dist/app.bin",
            &big,
        )
        .await;
        upload(
            &client,
            workspace.dir.path(),
            "artifacts",
            "dist/notes.txt",
            b"hello\n",
        )
        .await;
        admin
            .set_secret("web", "DEPLOY_KEY", "s3cr3t")
            .await
            .unwrap();
    });
    let manifest_before = runtime
        .block_on(client.artifact_manifest("artifacts"))
        .unwrap();
    assert_eq!(manifest_before.files.len(), 2);

    // The load: every client sends batches as fast as the server answers.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let client = Client::new(&server.url, Some(token.clone()));
            runtime.spawn(ingest_until(client, format!("load-{n}"), stop.clone()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1_500));

    // The backup, in the middle of the load.
    let file = workspace
        .dir
        .path()
        .join("backups")
        .join("kiln-backup.tar.gz");
    let began = Instant::now();
    let written = backup(&workspace.data(), &file, &source_flags);
    let took = began.elapsed();
    assert!(written.status.success(), "{}", stderr(&written));
    let size = std::fs::metadata(&file).unwrap().len();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Vec<AckedBatch>> = runtime.block_on(async {
        let mut all = Vec::new();
        for client in clients {
            all.push(client.await.unwrap());
        }
        all
    });
    let original_key = std::fs::read(workspace.data().join("secret.key")).unwrap();
    drop(server);

    let before: usize = acked
        .iter()
        .flatten()
        .filter(|batch| batch.acked_at < began)
        .map(|batch| batch.events.len())
        .sum();
    let total: usize = acked.iter().flatten().map(|batch| batch.events.len()).sum();
    assert!(
        before >= CLIENTS * PER_REQUEST * 10,
        "the load acknowledged only {before} events before the backup"
    );

    // Restore into a fresh directory and serve it.
    let restored = workspace.dir.path().join("restored");
    let restore_began = Instant::now();
    let answer = restore(&file, &restored, &target_flags);
    let restore_took = restore_began.elapsed();
    assert!(answer.status.success(), "{}", stderr(&answer));
    assert!(
        stdout(&answer).contains("artifact blobs"),
        "{}",
        stdout(&answer)
    );
    assert_eq!(
        std::fs::read(restored.join("secret.key")).unwrap(),
        original_key,
        "the secret key comes back as it was"
    );
    let server = Server::start(&restored, 0, &target_flags);
    let reader = Client::new(&server.url, Some(token.clone()));
    let admin = Client::new(&server.url, Some(ADMIN.into()));
    let mut present_after = 0;
    let mut absent_after = 0;
    runtime.block_on(async {
        for (n, batches) in acked.iter().enumerate() {
            let run_id = format!("load-{n}");
            let (stored, seqs) = stored_events(&reader, &run_id).await;
            assert_eq!(
                seqs,
                (1..=seqs.len() as i64).collect::<Vec<_>>(),
                "{run_id}: the restored sequence has no gap"
            );
            let mut accounted = 0;
            for batch in batches {
                let present = batch
                    .events
                    .iter()
                    .filter(|(event_id, _, _)| stored.contains_key(event_id))
                    .count();
                if batch.acked_at < began {
                    assert_eq!(
                        present,
                        batch.events.len(),
                        "{run_id}: a batch acknowledged before the backup began is missing"
                    );
                } else if present == 0 {
                    absent_after += batch.events.len();
                } else {
                    present_after += batch.events.len();
                }
                assert!(
                    present == 0 || present == batch.events.len(),
                    "{run_id}: half a batch restored ({present} of {})",
                    batch.events.len()
                );
                for (event_id, id, seq) in &batch.events {
                    if let Some(ids) = stored.get(event_id) {
                        assert_eq!(*ids, (*id, *seq), "{event_id} restored with other ids");
                        accounted += 1;
                    }
                }
            }
            assert_eq!(
                accounted,
                stored.len(),
                "{run_id}: an event nobody acknowledged"
            );
        }

        // The log, the manifest and the bytes.
        let page = reader
            .job_log("web", "artifacts", "Build", 0)
            .await
            .unwrap();
        assert!(
            page.bytes
                .windows(b"line 1999 of the build's output".len())
                .any(|window| window == b"line 1999 of the build's output"),
            "the restored log holds the reported output ({} bytes)",
            page.bytes.len()
        );
        let manifest_after = reader.artifact_manifest("artifacts").await.unwrap();
        let files = |manifest: &kiln_client::protocol::ArtifactManifest| {
            let mut files: Vec<(String, u64, String)> = manifest
                .files
                .iter()
                .map(|file| (file.path.clone(), file.size, file.sha256.clone()))
                .collect();
            files.sort();
            files
        };
        assert_eq!(files(&manifest_after), files(&manifest_before));
        for (path, expected) in [("dist/app.bin", &big[..]), ("dist/notes.txt", b"hello\n")] {
            let dest = workspace.dir.path().join("download");
            reader
                .download_artifact("artifacts", path, &dest, Some(&sha256_hex(expected)))
                .await
                .unwrap_or_else(|error| panic!("{path}: {error}"));
            assert_eq!(std::fs::read(&dest).unwrap(), expected, "{path}");
        }
        let verification = admin.verify_artifacts("artifacts").await.unwrap();
        assert!(
            verification.ok && verification.checked == 2,
            "the restored blobs verify: {verification:?}"
        );
        let secrets = admin.list_secrets("web").await.unwrap();
        assert_eq!(secrets.secrets[0].name, "DEPLOY_KEY");
    });
    drop(server);
    if databases.is_some() {
        // The target database now holds Kiln's tables: refused, then replaced with --force.
        let again = workspace.dir.path().join("again");
        let refused = restore(&file, &again, &target_flags);
        assert_eq!(refused.status.code(), Some(2));
        assert!(
            stderr(&refused).contains("already holds Kiln's tables"),
            "{}",
            stderr(&refused)
        );
        let mut forced_flags = target_flags.clone();
        forced_flags.push("--force");
        let forced = restore(&file, &again, &forced_flags);
        assert!(forced.status.success(), "{}", stderr(&forced));
        let server = Server::start(&again, 0, &target_flags);
        let reader = Client::new(&server.url, Some(token.clone()));
        let manifest = runtime
            .block_on(reader.artifact_manifest("artifacts"))
            .unwrap();
        assert_eq!(manifest.files.len(), 2);
    }
    eprintln!(
        "backup under load ({}): {total} events acknowledged, {before} before the backup began (all restored), \
         {present_after} acknowledged after it restored and {absent_after} not (whole batches); \
         backup {size} bytes in {:.2} s, restore {:.2} s",
        if databases.is_some() {
            "postgres"
        } else {
            "sqlite"
        },
        took.as_secs_f64(),
        restore_took.as_secs_f64()
    );
}

/// A restore checks the file before it writes anything: a damaged, cut or foreign file is
/// refused with the reason, a non-empty directory needs `--force`; a blob the backup could
/// not find is reported by both commands.
#[test]
fn restore_checks_the_file_and_the_target() {
    let workspace = Workspace::new();
    let server = Server::start(&workspace.data(), 0, &[]);
    let token = project_token(&workspace, &server);
    let client = Client::new(&server.url, Some(token));
    let runtime = runtime();
    let kept = b"kept bytes\n".repeat(1_000);
    let lost = b"bytes whose blob goes missing\n";
    runtime.block_on(async {
        client.send_events(&[event("checked", 0)]).await.unwrap();
        upload(&client, workspace.dir.path(), "checked", "kept.txt", &kept).await;
        upload(&client, workspace.dir.path(), "checked", "lost.txt", lost).await;
    });
    // A blob lost from the store (a disk error, a hand-deleted file).
    let lost_sha = sha256_hex(lost);
    let blob = workspace.data().join(format!(
        "artifacts/blobs/{}/{}/{lost_sha}",
        &lost_sha[..2],
        &lost_sha[2..4]
    ));
    std::fs::remove_file(&blob).unwrap();
    let file = workspace.dir.path().join("plain.tar");
    let written = backup(&workspace.data(), &file, &[]);
    assert_eq!(written.status.code(), Some(1), "{}", stderr(&written));
    assert!(stderr(&written).contains(&lost_sha), "{}", stderr(&written));
    drop(server);

    let bytes = std::fs::read(&file).unwrap();
    let target = workspace.dir.path().join("target");
    // A flipped byte inside the database entry (the tar is not compressed).
    let mut damaged = bytes.clone();
    damaged[4096] ^= 0x55;
    let damaged_file = workspace.dir.path().join("damaged.tar");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let refused = restore(&damaged_file, &target, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("kiln.db does not match its checksum"),
        "{}",
        stderr(&refused)
    );
    assert!(
        !target.join("kiln.db").exists(),
        "nothing restored from a damaged file"
    );
    // Cut short: the manifest is gone.
    let cut_file = workspace.dir.path().join("cut.tar");
    std::fs::write(&cut_file, &bytes[..bytes.len() / 2]).unwrap();
    let refused = restore(&cut_file, &target, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("cut short"),
        "{}",
        stderr(&refused)
    );
    // Not a backup at all.
    let foreign = workspace.dir.path().join("foreign.tar");
    std::fs::write(
        &foreign,
        b"hello, this is not a tar file at all".repeat(100),
    )
    .unwrap();
    let refused = restore(&foreign, &target, &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("not a Kiln backup"),
        "{}",
        stderr(&refused)
    );

    // The good file restores, saying which blob was missing.
    let restored = restore(&file, &target, &[]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    assert!(
        stderr(&restored).contains(&lost_sha),
        "{}",
        stderr(&restored)
    );
    // Again into the same directory: refused, then replaced with --force.
    let again = restore(&file, &target, &[]);
    assert_eq!(again.status.code(), Some(2));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    std::fs::write(
        target.join("kiln.db-wal"),
        b"a stale WAL that must not be replayed",
    )
    .unwrap();
    let forced = restore(&file, &target, &["--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert!(!target.join("kiln.db-wal").exists());

    let server = Server::start(&target, 0, &[]);
    let admin = Client::new(&server.url, Some(ADMIN.into()));
    runtime.block_on(async {
        let manifest = admin.artifact_manifest("checked").await.unwrap();
        assert_eq!(manifest.files.len(), 2, "the manifest names both files");
        let verification = admin.verify_artifacts("checked").await.unwrap();
        assert!(!verification.ok);
        assert_eq!(verification.mismatches.len(), 1, "{verification:?}");
        assert_eq!(verification.mismatches[0].path, "lost.txt");
        let dest = workspace.dir.path().join("kept");
        admin
            .download_artifact("checked", "kept.txt", &dest, Some(&sha256_hex(&kept)))
            .await
            .unwrap();
    });
}

/// A backup of a database an earlier Kiln wrote (schema 17) restores, and `kiln serve`
/// migrates it forward at start; an unreachable PostgreSQL database is a clear error, and
/// a SQLite backup does not go into PostgreSQL.
#[test]
fn a_backup_of_an_older_schema_is_migrated_forward_by_kiln_serve() {
    let runtime = runtime();
    let database = runtime.block_on(TestDatabase::create(Engine::Sqlite));
    runtime.block_on(database.at_schema_version(
        17,
        &["INSERT INTO projects (slug, name, created_at) VALUES ('legacy', 'Legacy', 1700000000000)"],
    ));
    let workspace = Workspace::new();
    let file = workspace.dir.path().join("old.tar.gz");
    let mut command = Command::new(KILN);
    let written = command
        .args(["backup", "--database-url", &database.url, "--data-dir"])
        .arg(workspace.dir.path().join("no-data-dir"))
        .arg("--to")
        .arg(&file)
        .env("KILN_LOG", "warn")
        .output()
        .unwrap();
    assert!(written.status.success(), "{}", stderr(&written));
    assert!(
        stderr(&written).contains("no secret key file"),
        "{}",
        stderr(&written)
    );
    let target = workspace.dir.path().join("data");
    let restored = restore(&file, &target, &[]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let latest = kiln_store::backup::latest_schema_version(Engine::Sqlite);
    assert!(
        stdout(&restored).contains(&format!(
            "database schema 17 (kiln serve migrates it to {latest} at start)"
        )),
        "{}",
        stdout(&restored)
    );
    let server = Server::start(&target, 0, &[]);
    let admin = Client::new(&server.url, Some(ADMIN.into()));
    let projects = runtime.block_on(admin.list_projects()).unwrap();
    assert!(
        serde_json::to_string(&projects).unwrap().contains("legacy"),
        "{projects:?}"
    );
    drop(server);
    let facts = kiln_store::backup::inspect_sqlite(&target.join("kiln.db")).unwrap();
    assert_eq!(facts.schema_version, latest);

    let refused = Command::new(KILN)
        .args([
            "backup",
            "--database-url",
            "postgres://kiln@127.0.0.1:1/kiln",
            "--to",
        ])
        .arg(workspace.dir.path().join("pg.tar"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("cannot open the database for its snapshot"),
        "{}",
        stderr(&refused)
    );
    // A SQLite backup is not restored into PostgreSQL.
    let refused = restore(
        &file,
        &workspace.dir.path().join("elsewhere"),
        &["--database-url", "postgres://kiln@127.0.0.1:1/kiln"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("holds a SQLite database"),
        "{}",
        stderr(&refused)
    );
}
