//! Emits the `kiln_postgres_tests` cfg when a PostgreSQL server is configured for tests,
//! so PostgreSQL test variants run there and are listed as ignored (with the reason)
//! elsewhere.

fn main() {
    test_prerequisites();
}

include!("../../build-support/prerequisites.rs");
