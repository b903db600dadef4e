//! A private Redis server for the tests that take Redis away
//! ([`email2fa_testkit::servers::PrivateRedis`]: `redis-server` on a free
//! port of 127.0.0.1 without persistence, so that after a kill it comes back
//! empty, as a production server without persistence does). Never the shared
//! test server of `EMAIL2FA_TEST_REDIS_URL`: other tests use it at the same
//! time.

use email2fa_testkit::servers::PrivateRedis;

/// A running private `redis-server`, killed when dropped.
pub struct RedisServer(PrivateRedis);

impl RedisServer {
    /// Starts one, or `None` (with a note) when `EMAIL2FA_TEST_REDIS_URL` is
    /// unset: it switches the Redis tests on. With it set, a
    /// `redis-server` that is missing or does not start is a failure.
    pub async fn start() -> Option<Self> {
        super::redis_url()?;
        let server = PrivateRedis::start().await.unwrap_or_else(|e| {
            panic!(
                "EMAIL2FA_TEST_REDIS_URL is set but a private redis-server does not start: {e:#}"
            )
        });
        Some(Self(server))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        self.0.url()
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on its port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        if let Err(e) = self.0.restart().await {
            panic!("the private redis-server does not start again: {e:#}");
        }
    }
}
