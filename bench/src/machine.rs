//! What the machine and the tree were when the numbers were taken.

use serde_json::{Value, json};

fn run(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The 1-, 5- and 15-minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// nproc, CPU model, load average, kernel, git commit, rustc, the command.
pub fn info() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let dirty = !run("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    json!({
        "nproc": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "cpu_model": cpu_model,
        "loadavg_before": loadavg(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "git_commit": run("git", &["rev-parse", "HEAD"]),
        "git_dirty": dirty,
        "rustc": run("rustc", &["--version"]),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    })
}
