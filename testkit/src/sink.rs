//! A real, small SMTP server that keeps what it receives in memory: the test
//! peer of the end-to-end tests and the sink of the benchmark. It is a test
//! and benchmark tool, not part of the delivery path.
//!
//! [`SmtpSink`] speaks enough ESMTP for lettre's client (pooled connections,
//! `RSET` between messages, pipelining, `AUTH PLAIN`/`LOGIN` over a plain
//! connection) and lets a test script the failures a real relay produces:
//! transient and permanent refusals at the end of `DATA`
//! ([`SmtpSink::fail_next`]), a connection dropped mid-`DATA`, refused
//! recipients, wrong credentials, slow replies (or none), and the whole
//! server going down and coming back.
//!
//! The hot path is built for thousands of messages per second: one buffered
//! reader and writer per connection, replies flushed only when the client has
//! no further complete command waiting (so pipelined commands cost one write),
//! atomics for counters and the fault fast path, and locks held only to push
//! or read a value.

mod auth;
mod session;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// The largest message accepted, advertised as `SIZE` in the `EHLO` reply.
pub const MAX_MESSAGE_SIZE: usize = 10_485_760;

/// How often [`SmtpSink::wait_for`] looks at the message count.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// A message the sink accepted, with the envelope it arrived under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// When the end of `DATA` was read.
    pub received_at: SystemTime,
    /// The `MAIL FROM` address, without angle brackets (empty for `<>`).
    pub mail_from: String,
    /// The accepted `RCPT TO` addresses, in order, without angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as sent: CRLF line endings, dot-unstuffed, without the
    /// final `.\r\n` line.
    pub data: Vec<u8>,
}

/// A failure the sink gives instead of accepting a message, at the end of
/// `DATA` (after the body was read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `451 4.3.0`: a transient failure; the sender should retry later.
    TempFail,
    /// `550 5.7.1`: a permanent refusal of the message.
    Reject,
    /// `535 5.7.8`: an authentication failure.
    AuthFail,
    /// Any reply code with its text (one line; the enhanced status code, if
    /// wanted, goes at the start of the text).
    Custom(u16, String),
    /// No reply at all: the connection is closed after the message was
    /// read (a server that dies mid-`DATA`). The message is not kept.
    Disconnect,
}

/// Counts of what the sink did, for asserting how many attempts were made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// TCP connections accepted, across restarts.
    pub connections: usize,
    /// `451` replies given for [`Fault::TempFail`].
    pub temp_fails: usize,
    /// `550` replies given for [`Fault::Reject`].
    pub rejects: usize,
    /// `535` replies given, for [`Fault::AuthFail`] or wrong credentials.
    pub auth_fails: usize,
    /// Replies given for [`Fault::Custom`].
    pub custom_faults: usize,
    /// Connections closed mid-`DATA` for [`Fault::Disconnect`].
    pub disconnects: usize,
    /// `RCPT TO` commands refused by [`SmtpSink::reject_recipient`].
    pub rejected_recipients: usize,
}

/// A running in-memory SMTP server; clones share the same server.
///
/// Dropping the last clone shuts the server down.
#[derive(Clone)]
pub struct SmtpSink {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<Server>>,
}

/// The listening half: dropping `shutdown` (or sending on it) stops the
/// accept loop, which then closes every connection it spawned.
struct Server {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// What the accept loop and every connection share.
#[derive(Default)]
struct Shared {
    messages: Mutex<Vec<ReceivedMessage>>,
    config: RwLock<Config>,
    faults: Mutex<VecDeque<(usize, Fault)>>,
    /// Messages still to fail, so that the common case (none) takes no lock.
    pending_faults: AtomicUsize,
    delay_nanos: AtomicU64,
    counters: Counters,
}

#[derive(Default)]
struct Config {
    rejected_patterns: Vec<String>,
    credentials: Option<(String, String)>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    temp_fails: AtomicUsize,
    rejects: AtomicUsize,
    auth_fails: AtomicUsize,
    custom_faults: AtomicUsize,
    disconnects: AtomicUsize,
    rejected_recipients: AtomicUsize,
}

impl SmtpSink {
    /// Starts a sink on `127.0.0.1` and a port the system picks.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a sink listening on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let (addr, server) = listen(addr, Arc::clone(&shared)).await?;
        let inner = Inner {
            shared,
            addr,
            server: Mutex::new(Some(server)),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The address the sink listens on (also while stopped).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The port the sink listens on.
    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// The next `n` messages get `fault` at the DATA end (after the message
    /// body), then normal service resumes.
    ///
    /// Calls queue up: `fail_next(2, TempFail)` then `fail_next(1, Reject)`
    /// fails two messages transiently and the third permanently.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let shared = &self.inner.shared;
        let mut faults = lock(&shared.faults);
        if n > 0 {
            faults.push_back((n, fault));
            shared.pending_faults.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// Every RCPT TO whose address contains `pattern` is refused with
    /// `550 5.1.1` (permanent).
    pub fn reject_recipient(&self, pattern: &str) {
        let mut config = write(&self.inner.shared.config);
        config.rejected_patterns.push(pattern.to_owned());
    }

    /// Require AUTH PLAIN/LOGIN with these credentials (advertised in EHLO);
    /// wrong ones get `535 5.7.8`, and `MAIL FROM` before authenticating gets
    /// `530 5.7.0`.
    pub fn require_auth(&self, user: &str, password: &str) {
        let mut config = write(&self.inner.shared.config);
        config.credentials = Some((user.to_owned(), password.to_owned()));
    }

    /// Answer every command/connection slowly (for timeout tests): each reply,
    /// the greeting included, waits `delay` first. `Duration::ZERO` turns the
    /// delay off.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .shared
            .delay_nanos
            .store(nanos, Ordering::Relaxed);
    }

    /// Every message accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.inner.shared.messages).clone()
    }

    /// How many messages were accepted so far.
    pub fn count(&self) -> usize {
        lock(&self.inner.shared.messages).len()
    }

    /// Poll until at least `n` messages arrived or the deadline passes;
    /// returns them (fewer than `n` when the deadline passed).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count() < n && tokio::time::Instant::now() < deadline {
            let next = tokio::time::Instant::now() + POLL_INTERVAL;
            tokio::time::sleep_until(next.min(deadline)).await;
        }
        self.messages()
    }

    /// Stop listening and drop every open connection (the SMTP server is
    /// "down": connections are refused). Does nothing when already stopped.
    pub async fn stop(&self) {
        let server = lock(&self.inner.server).take();
        if let Some(server) = server {
            // The accept loop may have ended on its own already; either way
            // it has closed the listener and every connection once it ends.
            let _ = server.shutdown.send(());
            if let Err(error) = server.task.await {
                tracing::warn!(%error, "the SMTP sink's accept loop failed");
            }
        }
    }

    /// Listen again on the same port (the server is "back"). Does nothing
    /// when already running.
    pub async fn restart(&self) -> std::io::Result<()> {
        if lock(&self.inner.server).is_some() {
            return Ok(());
        }
        let (_, server) = listen(self.inner.addr, Arc::clone(&self.inner.shared)).await?;
        let mut slot = lock(&self.inner.server);
        if slot.is_none() {
            *slot = Some(server);
        }
        Ok(())
    }

    /// How many times each fault reply was given (for asserting attempts),
    /// and total connections accepted.
    pub fn stats(&self) -> SinkStats {
        let counters = &self.inner.shared.counters;
        let get = |counter: &AtomicUsize| counter.load(Ordering::SeqCst);
        SinkStats {
            connections: get(&counters.connections),
            temp_fails: get(&counters.temp_fails),
            rejects: get(&counters.rejects),
            auth_fails: get(&counters.auth_fails),
            custom_faults: get(&counters.custom_faults),
            disconnects: get(&counters.disconnects),
            rejected_recipients: get(&counters.rejected_recipients),
        }
    }
}

impl std::fmt::Debug for SmtpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSink")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

/// Binds `addr` and spawns the accept loop.
async fn listen(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<(SocketAddr, Server)> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (shutdown, stopped) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, shared, stopped));
    Ok((addr, Server { shutdown, task }))
}

/// Accepts connections until told to stop, then closes the listener and
/// every connection (the connections live in a `JoinSet` so that stopping
/// can abort and await them all).
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(session::serve(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    // Out of file descriptors, most likely: back off rather
                    // than spin, and keep serving the open connections.
                    tracing::warn!(%error, "the SMTP sink cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

impl Shared {
    /// The delay before each reply, if one is set.
    fn delay(&self) -> Option<Duration> {
        match self.delay_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    fn auth_required(&self) -> bool {
        read(&self.config).credentials.is_some()
    }

    fn credentials_match(&self, user: &[u8], password: &[u8]) -> bool {
        match &read(&self.config).credentials {
            Some((u, p)) => u.as_bytes() == user && p.as_bytes() == password,
            None => false,
        }
    }

    fn is_rejected(&self, recipient: &str) -> bool {
        let config = read(&self.config);
        config
            .rejected_patterns
            .iter()
            .any(|pattern| recipient.contains(pattern.as_str()))
    }

    /// The fault for the message just read, if one is queued.
    fn take_fault(&self) -> Option<Fault> {
        if self.pending_faults.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let mut faults = lock(&self.faults);
        let (remaining, fault) = faults.front_mut()?;
        *remaining -= 1;
        let fault = if *remaining > 0 {
            fault.clone()
        } else {
            faults.pop_front()?.1
        };
        self.pending_faults.fetch_sub(1, Ordering::SeqCst);
        let counter = match fault {
            Fault::TempFail => &self.counters.temp_fails,
            Fault::Reject => &self.counters.rejects,
            Fault::AuthFail => &self.counters.auth_fails,
            Fault::Custom(..) => &self.counters.custom_faults,
            Fault::Disconnect => &self.counters.disconnects,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Some(fault)
    }

    fn record(&self, message: ReceivedMessage) {
        lock(&self.messages).push(message);
    }
}

// A panic while holding one of these locks cannot leave the value half
// updated (every critical section is a single push, pop or assignment), so a
// poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
