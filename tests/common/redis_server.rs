//! A private Redis server for the tests that take Redis away:
//! `redis-server` on a free port of 127.0.0.1 without persistence
//! (`--save "" --appendonly no`), so that after a kill it comes back empty,
//! as a production server without persistence does. Never the shared test
//! server of `EMAIL2FA_TEST_REDIS_URL`: other tests use it at the same time.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private `redis-server`, killed when dropped.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or `None` (with a note) when `EMAIL2FA_TEST_REDIS_URL` is
    /// unset: it switches the Redis tests on. With it set, a
    /// `redis-server` that is missing or does not start is a failure.
    pub fn start() -> Option<Self> {
        super::redis_url()?;
        let [port] = super::postfix::free_ports::<1>();
        let mut server = Self { port, child: None };
        server.restart();
        Some(server)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on its port, empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("EMAIL2FA_TEST_REDIS_URL is set but redis-server does not run: {e}")
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the private redis-server on port {port} did not answer: {pong:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
