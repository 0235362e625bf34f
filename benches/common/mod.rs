//! Command-line handling shared by the benches (each bench is its own crate: `mod common;`).

/// The bench's arguments. `cargo test --benches` runs a bench without `--bench`: `smoke` is then
/// true and benches shrink their inputs so they cannot rot, yet finish in seconds.
pub struct BenchArgs {
    args: Vec<String>,
    pub smoke: bool,
}

impl BenchArgs {
    pub fn parse() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let smoke = !args.iter().any(|a| a == "--bench");
        BenchArgs { args, smoke }
    }

    /// The value after `--name`, if given.
    pub fn get(&self, name: &str) -> Option<String> {
        self.args
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.args.get(i + 1).cloned())
    }

    /// A number after `--name`, else `default`.
    #[allow(dead_code)] // not every bench takes numbers
    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        self.get(name)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    }
}
