//! Host platforms under a fault: an open loop of signed `login.started`
//! webhooks, each retried **with the same `webhook-id` and body** until it
//! is accepted, as the README tells hosts to do after a `503` or a lost
//! connection. Every answer is classified; an answer slower than
//! [`ANSWER_TIMEOUT`] counts as a hang.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::client::{Answer, Connection};
use crate::webhooks::Prepared;

/// An answer that takes longer is a hang. The suite's processes wait at
/// most 1 s for a database connection before answering `503`
/// (`EMAIL2FA_DATABASE__ACQUIRE_TIMEOUT_MS`), and a webhook may wait for
/// the batch ahead of it in its lane as well as its own: twice that, and
/// 1 s of slack for a busy machine.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// A host's pause before retrying after a `503` (the service says
/// `Retry-After: 5`; the suite retries sooner to stay short) or a refused
/// connection.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// What the hosts saw.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    /// Accepted webhooks: (user, when the 2xx arrived).
    #[serde(skip)]
    pub accepted: Vec<(u64, SystemTime)>,
    /// 2xx answers that were replays of an earlier commit
    /// (`idempotent-replayed: true`): the first answer was lost in a crash.
    pub replayed: u64,
    /// `503` answers with an `application/problem+json` body.
    pub unavailable: u64,
    /// Any other 5xx (a `503` without problem+json included): a defect.
    pub other_5xx: BTreeMap<u16, u64>,
    /// 4xx answers: a defect here (every webhook is valid and new).
    pub refused_4xx: BTreeMap<u16, u64>,
    /// Connections refused or dropped (the ingress was down).
    pub transport_errors: u64,
    /// Answers that took longer than [`ANSWER_TIMEOUT`].
    pub hangs: u64,
    /// Webhooks never accepted before their give-up time.
    pub gave_up: u64,
    /// The slowest answer, in milliseconds.
    pub slowest_answer_ms: f64,
}

impl Tally {
    /// Every 5xx answer.
    pub fn all_5xx(&self) -> u64 {
        self.unavailable + self.other_5xx.values().sum::<u64>()
    }

    pub fn merge(&mut self, other: Self) {
        self.accepted.extend(other.accepted);
        self.replayed += other.replayed;
        self.unavailable += other.unavailable;
        for (status, n) in other.other_5xx {
            *self.other_5xx.entry(status).or_default() += n;
        }
        for (status, n) in other.refused_4xx {
            *self.refused_4xx.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.hangs += other.hangs;
        self.gave_up += other.gave_up;
        self.slowest_answer_ms = self.slowest_answer_ms.max(other.slowest_answer_ms);
    }
}

/// Posts `requests` at `rate` per second over `connections` connections
/// (connection k sends requests k, k+N, …), each retried until accepted or
/// until `give_up` after its first try; `accepted` counts the accepted
/// ones as they come. With `resign`, every try is signed again with the
/// tenant's key at the time it is sent (same `webhook-id` and body), as a
/// host's retry is: a run longer than the service's 5-minute timestamp
/// tolerance needs it.
pub async fn post_all(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    connections: usize,
    rate: f64,
    give_up: Duration,
    accepted: Arc<AtomicU64>,
    resign: Option<Arc<Vec<u8>>>,
) -> Tally {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for k in 0..connections {
        let requests = Arc::clone(&requests);
        let accepted = Arc::clone(&accepted);
        let resign = resign.clone();
        tasks.push(tokio::spawn(async move {
            let mut host = Host {
                addr,
                conn: None,
                tally: Tally::default(),
                accepted,
                resign,
            };
            for i in (k..requests.len()).step_by(connections) {
                let intended = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(intended.into()).await;
                host.deliver(&requests[i], give_up).await;
            }
            host.tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(tally) = task.await {
            total.merge(tally);
        }
    }
    total
}

/// One host's connection and what it saw.
struct Host {
    addr: SocketAddr,
    conn: Option<Connection>,
    tally: Tally,
    accepted: Arc<AtomicU64>,
    /// The tenant's key, when each try is signed afresh.
    resign: Option<Arc<Vec<u8>>>,
}

impl Host {
    /// Posts one webhook until it is accepted, refused or given up.
    async fn deliver(&mut self, request: &Prepared, give_up: Duration) {
        let deadline = Instant::now() + give_up;
        loop {
            let signed;
            let request = match &self.resign {
                Some(key) => {
                    signed = signed_now(key, request);
                    &signed
                }
                None => request,
            };
            match self.try_once(request).await {
                Some(answer) if (200..300).contains(&answer.status) => {
                    self.tally.replayed += u64::from(answer.replayed);
                    self.tally.accepted.push((request.user, SystemTime::now()));
                    self.accepted.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(answer) if answer.status == 503 && is_problem(&answer) => {
                    self.tally.unavailable += 1;
                }
                Some(answer) if answer.status >= 500 => {
                    *self.tally.other_5xx.entry(answer.status).or_default() += 1;
                }
                Some(answer) => {
                    *self.tally.refused_4xx.entry(answer.status).or_default() += 1;
                    return;
                }
                None => {}
            }
            if Instant::now() >= deadline {
                self.tally.gave_up += 1;
                return;
            }
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }

    /// One try on the open connection (opened first if needed); `None`
    /// after a transport error or a hang, with the connection dropped.
    async fn try_once(&mut self, request: &Prepared) -> Option<Answer> {
        if self.conn.is_none() {
            match Connection::open(self.addr).await {
                Ok(conn) => self.conn = Some(conn),
                Err(_) => {
                    self.tally.transport_errors += 1;
                    return None;
                }
            }
        }
        let conn = self.conn.as_mut()?;
        let sent = Instant::now();
        let result = tokio::time::timeout(ANSWER_TIMEOUT, conn.post_answer(request)).await;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        self.tally.slowest_answer_ms = self.tally.slowest_answer_ms.max(ms);
        match result {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(_)) => {
                self.tally.transport_errors += 1;
                self.conn = None;
                None
            }
            Err(_) => {
                self.tally.hangs += 1;
                self.conn = None;
                None
            }
        }
    }
}

/// `request` signed with `key` at the current time.
fn signed_now(key: &[u8], request: &Prepared) -> Prepared {
    let now = chrono::Utc::now().timestamp();
    Prepared {
        timestamp: now.to_string(),
        signature: email2fa::signature::sign(key, &request.id, now, &request.body),
        ..request.clone()
    }
}

fn is_problem(answer: &Answer) -> bool {
    answer.content_type.starts_with("application/problem+json")
        && serde_json::from_slice::<serde_json::Value>(&answer.body)
            .is_ok_and(|v| v["code"] == "unavailable")
}
