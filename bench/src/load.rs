//! The load generator: a closed loop (N connections, each sending its next
//! request when the previous answer arrived) and an open loop (a fixed
//! schedule; latency counts from the intended send time, so a stalled
//! server cannot hide its queueing: no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Connection;
use crate::webhooks::Prepared;

/// What one load run measured.
pub struct LoadResult {
    /// Latencies in microseconds, of measured requests only.
    pub histogram: Histogram<u64>,
    /// Measured requests answered 2xx.
    pub ok: u64,
    /// Every non-2xx answer by status (0 = transport error), warm-up too.
    pub non_2xx: BTreeMap<u16, u64>,
    /// The measured window.
    pub elapsed: Duration,
    /// True when the prepared requests ran out before the window ended.
    pub exhausted: bool,
    /// When each accepted request got its answer: (user, time).
    pub accepted: Vec<(u64, SystemTime)>,
}

/// The summary of a load run, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub requests_ok: u64,
    pub throughput_rps: f64,
    pub elapsed_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub non_2xx: BTreeMap<String, u64>,
    pub exhausted: bool,
}

impl LoadResult {
    /// No requests yet.
    pub fn empty() -> Self {
        Self {
            histogram: new_histogram(),
            ok: 0,
            non_2xx: BTreeMap::new(),
            elapsed: Duration::ZERO,
            exhausted: false,
            accepted: Vec::new(),
        }
    }

    /// Adds another run's counts and latencies (the elapsed times add up).
    pub fn merge(&mut self, other: Self) {
        self.elapsed += other.elapsed;
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds merge");
        self.ok += other.ok;
        for (status, n) in other.non_2xx {
            *self.non_2xx.entry(status).or_default() += n;
        }
        self.exhausted |= other.exhausted;
        self.accepted.extend(other.accepted);
    }

    /// Throughput, percentiles and errors.
    pub fn summary(&self) -> LoadSummary {
        let ms = |q: f64| self.histogram.value_at_quantile(q) as f64 / 1000.0;
        let secs = self.elapsed.as_secs_f64();
        LoadSummary {
            requests_ok: self.ok,
            throughput_rps: if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            elapsed_s: secs,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.histogram.max() as f64 / 1000.0,
            non_2xx: self
                .non_2xx
                .iter()
                .map(|(status, n)| (status_label(*status), *n))
                .collect(),
            exhausted: self.exhausted,
        }
    }
}

fn status_label(status: u16) -> String {
    if status == 0 {
        "transport_error".into()
    } else {
        status.to_string()
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// How a closed loop ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After warm-up, measure for this long (or until requests run out).
    Duration { warmup: Duration, measure: Duration },
    /// Send every prepared request; all are measured.
    AllSent,
}

/// `concurrency` connections, each posting the next unsent request.
/// With `cycle`, requests are reused round-robin (for servers that do not
/// remember webhook ids, such as the ceiling server).
pub async fn closed_loop(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    concurrency: usize,
    until: Until,
    cycle: bool,
) -> anyhow::Result<LoadResult> {
    let keep_accepted = false;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let (measure_from, end) = match until {
        Until::Duration { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Until::AllSent => (start, None),
    };
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut conn = Connection::open(addr).await?;
        let (requests, next) = (Arc::clone(&requests), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut out = LoadResult::empty();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let i = if cycle { i % requests.len().max(1) } else { i };
                let Some(request) = requests.get(i) else {
                    out.exhausted = end.is_some();
                    break;
                };
                if end.is_some_and(|end| Instant::now() >= end) {
                    break;
                }
                let sent = Instant::now();
                let status = send(&mut conn, addr, request).await;
                let measured = sent >= measure_from;
                record(&mut out, request, status, sent, measured, keep_accepted);
            }
            anyhow::Ok(out)
        }));
    }
    let mut total = LoadResult::empty();
    for task in tasks {
        total.merge(task.await??);
    }
    let finished = Instant::now();
    total.elapsed = end.map_or(finished, |end| end.min(finished)) - measure_from;
    Ok(total)
}

/// `rate` requests per second on a fixed schedule over `connections`
/// connections (connection k sends requests k, k+N, …). Latency counts from
/// each request's intended send time.
pub async fn open_loop(
    addr: SocketAddr,
    requests: Arc<Vec<Prepared>>,
    connections: usize,
    rate: f64,
    keep_accepted: bool,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<LoadResult> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Connection::open(addr).await?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(connections);
    for (k, mut conn) in conns.into_iter().enumerate() {
        let (requests, progress) = (Arc::clone(&requests), Arc::clone(&progress));
        tasks.push(tokio::spawn(async move {
            let mut out = LoadResult::empty();
            for i in (k..requests.len()).step_by(connections) {
                let intended = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(intended.into()).await;
                let status = send(&mut conn, addr, &requests[i]).await;
                record(
                    &mut out,
                    &requests[i],
                    status,
                    intended,
                    true,
                    keep_accepted,
                );
                if (200..300).contains(&status) {
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut total = LoadResult::empty();
    for task in tasks {
        total.merge(task.await??);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Posts one request; after a transport error (status 0) the connection
/// is opened again for the next one.
async fn send(conn: &mut Connection, addr: SocketAddr, request: &Prepared) -> u16 {
    match conn.post(request).await {
        Ok((status, _)) => status,
        Err(_) => {
            if let Ok(fresh) = Connection::open(addr).await {
                *conn = fresh;
            }
            0
        }
    }
}

fn record(
    out: &mut LoadResult,
    request: &Prepared,
    status: u16,
    from: Instant,
    measured: bool,
    keep_accepted: bool,
) {
    if !(200..300).contains(&status) {
        *out.non_2xx.entry(status).or_default() += 1;
        return;
    }
    if keep_accepted {
        out.accepted.push((request.user, SystemTime::now()));
    }
    if measured {
        out.ok += 1;
        let micros = u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX);
        out.histogram.saturating_record(micros.max(1));
    }
}
