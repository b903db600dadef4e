//! The service processes the benchmark spawns, and what `/proc` says about
//! them: CPU seconds (user + sys) and resident memory, sampled every 100 ms.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

/// How often the resident set size is sampled.
const RSS_INTERVAL: Duration = Duration::from_millis(100);

/// A spawned process of the service (or of the bench's own ceiling server).
pub struct Service {
    /// `serve`, `ingress`, `worker` or `ceiling`.
    pub role: String,
    /// Its process id.
    pub pid: u32,
    child: Child,
    log: PathBuf,
    peak_kb: Arc<AtomicU64>,
    stop_sampler: Arc<AtomicBool>,
}

/// CPU and memory of a process over a measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigures {
    /// `serve`, `ingress`, `worker` or `ceiling`.
    pub role: String,
    /// User + system CPU seconds spent in the window.
    pub cpu_seconds: f64,
    /// Resident set size after start-up, before load (MB), when measured.
    pub rss_idle_mb: Option<f64>,
    /// Highest sampled VmRSS in the window (MB).
    pub rss_peak_mb: f64,
    /// VmHWM at the end (the kernel's own peak since start, MB).
    pub vm_hwm_mb: f64,
}

/// A CPU reading at the start of a window.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark(f64);

impl Service {
    /// Spawns `bin args…` with `env`, standard error into `log`.
    pub fn spawn(
        role: &str,
        bin: &Path,
        args: &[String],
        env: &[(String, String)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let stderr = std::fs::File::create(&log).context("failed to create a process log")?;
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {} {role}", bin.display()))?;
        let pid = child.id().context("the child has no pid")?;
        let peak_kb = Arc::new(AtomicU64::new(0));
        let stop_sampler = Arc::new(AtomicBool::new(false));
        tokio::spawn(sample_rss(
            pid,
            Arc::clone(&peak_kb),
            Arc::clone(&stop_sampler),
        ));
        Ok(Self {
            role: role.to_string(),
            pid,
            child,
            log,
            peak_kb,
            stop_sampler,
        })
    }

    /// Fails with the end of the log if the process already exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "email2fa {} exited early ({status}); its log ends with:\n{}",
                self.role,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// The last lines of the process's standard error, without the one
    /// line per email sent.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("email sent")).collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// How many lines of the process's log contain `text`.
    pub fn log_count(&self, text: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.matches(text).count()
    }

    /// Current resident set size in MB.
    pub fn rss_mb(&self) -> f64 {
        status_kb(self.pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0
    }

    /// Starts a measured window: resets the sampled peak, reads the CPU.
    pub fn mark(&self) -> CpuMark {
        self.peak_kb.store(
            status_kb(self.pid, "VmRSS:").unwrap_or(0),
            Ordering::Relaxed,
        );
        CpuMark(cpu_seconds(self.pid).unwrap_or(0.0))
    }

    /// The figures of the window that began at `mark`.
    pub fn figures(&self, mark: CpuMark, rss_idle_mb: Option<f64>) -> ProcessFigures {
        let now_kb = status_kb(self.pid, "VmRSS:").unwrap_or(0);
        let peak = self.peak_kb.load(Ordering::Relaxed).max(now_kb);
        ProcessFigures {
            role: self.role.clone(),
            cpu_seconds: (cpu_seconds(self.pid).unwrap_or(mark.0) - mark.0).max(0.0),
            rss_idle_mb,
            rss_peak_mb: peak as f64 / 1024.0,
            vm_hwm_mb: status_kb(self.pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        }
    }

    /// SIGKILL, as a crash or the OOM killer: no graceful stop.
    pub async fn kill(mut self) {
        self.stop_sampler.store(true, Ordering::Relaxed);
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        self.stop_sampler.store(true, Ordering::Relaxed);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "  email2fa {} did not stop in {grace:?}; killing it",
                self.role
            );
            let _ = self.child.kill().await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_sampler.store(true, Ordering::Relaxed);
    }
}

async fn sample_rss(pid: u32, peak: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(RSS_INTERVAL);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match status_kb(pid, "VmRSS:") {
            Some(kb) => {
                peak.fetch_max(kb, Ordering::Relaxed);
            }
            None => break,
        }
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}
