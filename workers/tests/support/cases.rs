//! How many cases a property runs: shared by the property suites of both
//! crates (`tests/properties.rs`, `workers/tests/properties.rs`).

use proptest::test_runner::Config;

/// `default` cases per property, unless `PROPTEST_CASES` says otherwise
/// (`PROPTEST_CASES=100000 cargo test --test properties` for a long run).
/// Failures are not saved to files: a case worth keeping becomes a named
/// regression test.
pub fn config(default: u32) -> Config {
    let config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    let cases = match std::env::var_os("PROPTEST_CASES") {
        Some(_) => config.cases,
        None => default,
    };
    // A property that assumes (skips inputs) may skip about as many cases
    // as it runs; proptest's fixed 1,024 would end a long run early.
    Config {
        cases,
        max_global_rejects: cases.max(1024),
        ..config
    }
}
