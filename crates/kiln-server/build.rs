//! Emits the `kiln_postgres_tests` cfg when a PostgreSQL server is configured for tests,
//! so PostgreSQL test variants run there and are listed as ignored (with the reason)
//! elsewhere; and `KILN_ASSET_VERSION`, a hash of the dashboard's assets, which versions
//! their URLs.

fn main() {
    asset_version();
    test_prerequisites();
}

/// FNV-1a over every file in `assets/` (names and bytes), as 12 hex digits.
fn asset_version() {
    println!("cargo::rerun-if-changed=assets");
    let mut files: Vec<_> = std::fs::read_dir("assets")
        .expect("the assets directory")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in files {
        let name = file.display().to_string();
        let bytes = std::fs::read(&file).expect("an asset file");
        for byte in name.bytes().chain(bytes) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    println!(
        "cargo::rustc-env=KILN_ASSET_VERSION={:012x}",
        hash & 0xffff_ffff_ffff
    );
}

include!("../../build-support/prerequisites.rs");
