//! Emits a cfg per test prerequisite found (PostgreSQL, a Docker API, bubblewrap, an
//! SMTP server), so the tests that need a missing one are listed as ignored with the
//! reason (see `build-support/prerequisites.rs`).

fn main() {
    test_prerequisites();
}

include!("../../build-support/prerequisites.rs");
