//! The dependency cache on real directories: keys, round trips (nested dirs, symlinks,
//! executable bits), miss then hit, LRU eviction, restart, refused paths.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use kiln_agent::cache::{Cache, CacheError, SaveOutcome, cache_key};

fn strings(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|path| (*path).to_owned()).collect()
}

fn write(path: &Path, contents: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn key_follows_the_lockfile_contents_only() {
    let workspace = tempfile::tempdir().unwrap();
    let workspace = workspace.path();
    write(&workspace.join("package-lock.json"), "{\"v\": 1}");
    write(&workspace.join("src/index.js"), "console.log(1)");
    let key_files = strings(&["package-lock.json"]);

    let first = cache_key("test", &key_files, workspace).unwrap();
    assert_eq!(first.len(), 64);
    assert!(first.bytes().all(|byte| byte.is_ascii_hexdigit()));

    write(&workspace.join("src/index.js"), "console.log(2)");
    assert_eq!(cache_key("test", &key_files, workspace).unwrap(), first);

    write(&workspace.join("package-lock.json"), "{\"v\": 2}");
    let changed = cache_key("test", &key_files, workspace).unwrap();
    assert_ne!(changed, first);

    assert_ne!(cache_key("build", &key_files, workspace).unwrap(), changed);
}

#[test]
fn a_missing_key_file_still_gives_a_stable_key() {
    let workspace = tempfile::tempdir().unwrap();
    let workspace = workspace.path();
    let key_files = strings(&["Cargo.lock"]);

    let missing = cache_key("build", &key_files, workspace).unwrap();
    assert_eq!(cache_key("build", &key_files, workspace).unwrap(), missing);

    write(&workspace.join("Cargo.lock"), "");
    assert_ne!(cache_key("build", &key_files, workspace).unwrap(), missing);
}

#[test]
fn key_files_outside_the_workspace_are_refused() {
    let workspace = tempfile::tempdir().unwrap();
    for bad in ["../package-lock.json", "/etc/passwd", "a/../../b", ""] {
        let error = cache_key("test", &strings(&[bad]), workspace.path()).unwrap_err();
        assert!(
            matches!(error, CacheError::InvalidPath { .. }),
            "{bad}: {error:?}"
        );
    }
}

#[tokio::test]
async fn round_trip_keeps_nested_dirs_symlinks_and_executable_bits() {
    let temp = tempfile::tempdir().unwrap();
    let cache = Cache::open(temp.path().join("cache"), 10 * 1024 * 1024)
        .await
        .unwrap();
    let source = temp.path().join("source");
    write(
        &source.join("node_modules/left-pad/index.js"),
        "module.exports = 1",
    );
    write(
        &source.join("node_modules/left-pad/lib/deep/deeper/file.txt"),
        "deep",
    );
    write(
        &source.join("node_modules/.bin/real-tool"),
        "#!/bin/sh\necho hi\n",
    );
    fs::set_permissions(
        source.join("node_modules/.bin/real-tool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    symlink("real-tool", source.join("node_modules/.bin/tool")).unwrap();
    symlink("../nowhere", source.join("node_modules/dangling")).unwrap();
    fs::create_dir_all(source.join("node_modules/empty-dir")).unwrap();
    write(&source.join("target/debug/app"), "binary");
    fs::set_permissions(
        source.join("target/debug/app"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let key = cache_key("test", &[], &source).unwrap();
    let paths = strings(&["node_modules", "target/debug", "not-there"]);

    let saved = cache.save(&key, &paths, &source).await.unwrap();
    assert_eq!(saved.outcome, SaveOutcome::Stored);
    assert!(saved.bytes > 0);

    // A fresh workspace, with stale contents where the cache restores.
    let restored = temp.path().join("restored");
    write(&restored.join("node_modules/stale.js"), "old");
    write(&restored.join("README"), "kept");
    assert!(cache.restore(&key, &paths, &restored).await.unwrap());

    assert!(!restored.join("node_modules/stale.js").exists());
    assert_eq!(fs::read_to_string(restored.join("README")).unwrap(), "kept");
    assert_eq!(
        fs::read_to_string(restored.join("node_modules/left-pad/lib/deep/deeper/file.txt"))
            .unwrap(),
        "deep"
    );
    assert_eq!(mode(&restored.join("node_modules/.bin/real-tool")), 0o755);
    assert_eq!(mode(&restored.join("target/debug/app")), 0o750);
    assert_eq!(
        fs::read_link(restored.join("node_modules/.bin/tool")).unwrap(),
        Path::new("real-tool")
    );
    assert_eq!(
        fs::read_to_string(restored.join("node_modules/.bin/tool")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        fs::read_link(restored.join("node_modules/dangling")).unwrap(),
        Path::new("../nowhere")
    );
    assert!(restored.join("node_modules/empty-dir").is_dir());
    assert!(!restored.join("not-there").exists());
    assert_eq!(
        fs::metadata(restored.join("node_modules/left-pad/index.js"))
            .unwrap()
            .modified()
            .unwrap(),
        fs::metadata(source.join("node_modules/left-pad/index.js"))
            .unwrap()
            .modified()
            .unwrap()
    );
}

#[tokio::test]
async fn miss_then_hit_and_a_second_save_keeps_the_first() {
    let temp = tempfile::tempdir().unwrap();
    let cache = Cache::open(temp.path().join("cache"), 1024 * 1024)
        .await
        .unwrap();
    let workspace = temp.path().join("workspace");
    write(&workspace.join("deps/a.txt"), "first");
    let key = cache_key("test", &[], &workspace).unwrap();
    let paths = strings(&["deps"]);

    assert!(!cache.restore(&key, &paths, &workspace).await.unwrap());
    assert_eq!(
        cache.save(&key, &paths, &workspace).await.unwrap().outcome,
        SaveOutcome::Stored
    );

    write(&workspace.join("deps/a.txt"), "second");
    assert_eq!(
        cache.save(&key, &paths, &workspace).await.unwrap().outcome,
        SaveOutcome::AlreadyCached
    );
    assert!(cache.restore(&key, &paths, &workspace).await.unwrap());
    assert_eq!(
        fs::read_to_string(workspace.join("deps/a.txt")).unwrap(),
        "first"
    );
}

#[tokio::test]
async fn concurrent_saves_of_one_key_leave_one_whole_entry() {
    let temp = tempfile::tempdir().unwrap();
    let cache = Cache::open(temp.path().join("cache"), 100 * 1024 * 1024)
        .await
        .unwrap();
    let workspace = temp.path().join("workspace");
    for index in 0..200 {
        write(
            &workspace.join(format!("deps/{index}/file.txt")),
            &"x".repeat(1000),
        );
    }
    let key = cache_key("test", &[], &workspace).unwrap();
    let paths = strings(&["deps"]);

    let saves: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache.clone();
            let key = key.clone();
            let paths = paths.clone();
            let workspace = workspace.clone();
            tokio::spawn(async move { cache.save(&key, &paths, &workspace).await })
        })
        .collect();
    let mut stored = 0;
    for save in saves {
        let info = save.await.unwrap().unwrap();
        assert_eq!(info.bytes, 200_000);
        if info.outcome == SaveOutcome::Stored {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);

    let restored = temp.path().join("restored");
    assert!(cache.restore(&key, &paths, &restored).await.unwrap());
    assert_eq!(fs::read_dir(restored.join("deps")).unwrap().count(), 200);
    let leftovers: Vec<_> = fs::read_dir(cache.dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

/// A workspace whose `deps` dir holds one file of `bytes` bytes, with a unique key.
fn workspace_of(root: &Path, name: &str, bytes: usize) -> (std::path::PathBuf, String) {
    let workspace = root.join(name);
    write(&workspace.join("deps/blob"), &"x".repeat(bytes));
    let key = cache_key(name, &[], &workspace).unwrap();
    (workspace, key)
}

#[tokio::test]
async fn eviction_removes_the_least_recently_used_first_and_survives_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let cache_dir = temp.path().join("cache");
    let cache = Cache::open(cache_dir.clone(), 2500).await.unwrap();
    let paths = strings(&["deps"]);
    let (a, key_a) = workspace_of(temp.path(), "a", 1000);
    let (b, key_b) = workspace_of(temp.path(), "b", 1000);
    let (c, key_c) = workspace_of(temp.path(), "c", 1000);

    cache.save(&key_a, &paths, &a).await.unwrap();
    cache.save(&key_b, &paths, &b).await.unwrap();
    // Using A makes B the least recently used.
    assert!(cache.restore(&key_a, &paths, &a).await.unwrap());
    cache.save(&key_c, &paths, &c).await.unwrap();

    assert!(cache.restore(&key_a, &paths, &a).await.unwrap());
    assert!(!cache.restore(&key_b, &paths, &b).await.unwrap());
    assert!(cache.restore(&key_c, &paths, &c).await.unwrap());
    assert_eq!(cache.total_bytes().await.unwrap(), 2000);

    // After a restart with a smaller cap, the index comes back from disk: C was used
    // last, so A goes.
    drop(cache);
    let cache = Cache::open(cache_dir, 1500).await.unwrap();
    assert_eq!(cache.total_bytes().await.unwrap(), 1000);
    assert!(!cache.restore(&key_a, &paths, &a).await.unwrap());
    assert!(cache.restore(&key_c, &paths, &c).await.unwrap());
}

#[tokio::test]
async fn an_entry_bigger_than_the_cap_is_not_kept() {
    let temp = tempfile::tempdir().unwrap();
    let cache = Cache::open(temp.path().join("cache"), 2500).await.unwrap();
    let paths = strings(&["deps"]);
    let (small, key_small) = workspace_of(temp.path(), "small", 1000);
    let (big, key_big) = workspace_of(temp.path(), "big", 3000);

    cache.save(&key_small, &paths, &small).await.unwrap();
    let saved = cache.save(&key_big, &paths, &big).await.unwrap();

    assert_eq!(saved.outcome, SaveOutcome::TooLarge);
    assert!(!cache.restore(&key_big, &paths, &big).await.unwrap());
    assert!(cache.restore(&key_small, &paths, &small).await.unwrap());
    assert_eq!(fs::read_dir(cache.dir()).unwrap().count(), 1);
}

#[tokio::test]
async fn paths_escaping_the_workspace_are_refused() {
    let temp = tempfile::tempdir().unwrap();
    let cache = Cache::open(temp.path().join("cache"), 1024).await.unwrap();
    let workspace = temp.path().join("workspace");
    fs::create_dir_all(&workspace).unwrap();
    let key = cache_key("test", &[], &workspace).unwrap();

    for bad in ["../x", "/etc", "deps/../../x", ".", ""] {
        let error = cache
            .save(&key, &strings(&[bad]), &workspace)
            .await
            .unwrap_err();
        assert!(
            matches!(error, CacheError::InvalidPath { .. }),
            "{bad}: {error:?}"
        );
        assert!(
            error.to_string().contains("relative to the workspace"),
            "{error}"
        );
        let error = cache
            .restore(&key, &strings(&[bad]), &workspace)
            .await
            .unwrap_err();
        assert!(matches!(error, CacheError::InvalidPath { .. }), "{bad}");
    }

    // A symlink in the workspace cannot carry a restore outside of it.
    let outside = temp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    symlink(&outside, workspace.join("link")).unwrap();
    let error = cache
        .save(&key, &strings(&["link/deps"]), &workspace)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("symlink"), "{error}");

    let error = cache
        .restore("../../etc", &strings(&["deps"]), &workspace)
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::InvalidKey { .. }), "{error:?}");
}

#[tokio::test]
async fn open_removes_leftovers_of_interrupted_saves() {
    let temp = tempfile::tempdir().unwrap();
    let cache_dir = temp.path().join("cache");
    write(&cache_dir.join(".tmp-abc-1-2/tree/deps/x"), "partial");
    // An entry dir without a manifest is a leftover too.
    write(&cache_dir.join("abcdef/tree/deps/x"), "partial");

    let cache = Cache::open(cache_dir.clone(), 1024).await.unwrap();

    assert_eq!(fs::read_dir(&cache_dir).unwrap().count(), 0);
    assert_eq!(cache.total_bytes().await.unwrap(), 0);
}

#[tokio::test]
async fn concurrent_saves_of_different_keys_evict_without_errors() {
    let temp = tempfile::tempdir().unwrap();
    let cache = Cache::open(temp.path().join("cache"), 3000).await.unwrap();
    let paths = strings(&["deps"]);

    let saves: Vec<_> = (0..8)
        .map(|index| {
            let (workspace, key) = workspace_of(temp.path(), &format!("w{index}"), 1000);
            let cache = cache.clone();
            let paths = paths.clone();
            tokio::spawn(async move { cache.save(&key, &paths, &workspace).await })
        })
        .collect();
    for save in saves {
        save.await.unwrap().unwrap();
    }

    assert!(cache.total_bytes().await.unwrap() <= 3000);
}
