//! Emits the `kiln_postgres_tests` cfg when a PostgreSQL server is configured for tests,
//! so PostgreSQL test variants run there and are listed as ignored (with the reason)
//! elsewhere.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kiln_postgres_tests)");
    println!("cargo::rerun-if-env-changed=KILN_TEST_DATABASE_URL");
    if std::env::var_os("KILN_TEST_DATABASE_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=kiln_postgres_tests");
    }
}
