//! The real `email2fa` binary as a child process, its output captured.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary, with a clean environment: only what a test passes.
pub fn email2fa(dir: &Path, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_email2fa"));
    command.current_dir(dir).env_clear();
    for key in ["PATH", "HOME"] {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs a command to its end.
pub fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    email2fa(dir, env)
        .args(args)
        .output()
        .expect("run email2fa")
}

/// A running `email2fa serve`.
pub struct Service {
    child: Child,
    pub stdout: Arc<Mutex<String>>,
    pub stderr: Arc<Mutex<String>>,
    pub base: String,
}

/// Appends each line of `stream` to `into`, from a thread of its own.
pub fn capture(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            let mut text = into.lock().expect("lock");
            text.push_str(&line);
            text.push('\n');
        }
    });
}

impl Service {
    /// Starts `email2fa serve` on port 0 and waits until it listens.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut env = env.to_vec();
        env.push(("EMAIL2FA_LISTEN", "127.0.0.1:0"));
        let mut child = email2fa(dir, &env)
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn email2fa serve");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().expect("stdout"), stdout.clone());
        capture(child.stderr.take().expect("stderr"), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            let text = stderr.lock().expect("lock").clone();
            if let Some(at) = text.find("listening on http://") {
                let rest = &text[at + "listening on ".len()..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || c == '"')
                    .unwrap_or(rest.len());
                break rest[..end].to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("email2fa serve exited with {status}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "email2fa serve did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            stdout,
            stderr,
            base,
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "email2fa did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout.lock().expect("lock"),
            self.stderr.lock().expect("lock")
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `email2fa worker` process.
pub struct Worker {
    child: Child,
    pub stderr: Arc<Mutex<String>>,
}

impl Worker {
    /// Starts `email2fa worker` and waits until it runs.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = email2fa(dir, env)
            .arg("worker")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn email2fa worker");
        let stderr = Arc::new(Mutex::new(String::new()));
        capture(child.stderr.take().expect("stderr"), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = stderr.lock().expect("lock").clone();
            if text.contains("email2fa workers running") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("email2fa worker exited with {status}: {text}");
            }
            assert!(
                Instant::now() < deadline,
                "email2fa worker did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, stderr }
    }

    /// Sends a signal (`KILL`, `TERM`) and waits for the exit.
    pub fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "email2fa worker did not exit on SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines the process logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = self.stderr.lock().expect("lock").clone();
        let lines: Vec<&str> = text.lines().filter(|l| !l.contains("email sent")).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// How many emails this process logged as sent.
    pub fn sent(&self) -> usize {
        self.stderr
            .lock()
            .expect("lock")
            .matches("email sent")
            .count()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
