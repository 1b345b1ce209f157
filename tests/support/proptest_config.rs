//! Shared by the property-test files of every crate (`#[path]`-included): how many cases a
//! property runs.

use proptest::test_runner::Config;

/// Cases per property unless `PROPTEST_CASES` says otherwise; no failure files written.
pub fn config(default_cases: u32) -> Config {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}
