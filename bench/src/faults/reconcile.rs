//! After a scenario: what the hosts saw, what the sink received per
//! recipient and what the tables say, reconciled into a [`Row`] with the
//! recovery time and every broken expectation.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use super::Fault;
use super::hosts::{self, Tally};
use super::report::Row;
use super::scenario::{GIVE_UP, Injected, UNFINISHED};
use crate::deployment::Deployment;
use crate::webhooks::user_of;

/// Messages per recipient user, with the first arrival of each.
fn arrivals(d: &Deployment) -> (HashMap<u64, (u64, SystemTime)>, u64) {
    let mut per_user: HashMap<u64, (u64, SystemTime)> = HashMap::new();
    let mut strangers = 0;
    for message in d.sink.messages() {
        match message.rcpt_to.first().and_then(|r| user_of(r)) {
            Some(user) => {
                let entry = per_user.entry(user).or_insert((0, message.received_at));
                entry.0 += 1;
                entry.1 = entry.1.min(message.received_at);
            }
            None => strangers += 1,
        }
    }
    (per_user, strangers)
}

/// What the sink received and the tables say, against what the hosts
/// saw accepted.
pub(super) struct Ledger {
    /// Messages per recipient user, with the first arrival of each.
    pub per_user: HashMap<u64, (u64, SystemTime)>,
    /// Accepted webhooks whose email arrived at least once.
    pub delivered: u64,
    /// Messages beyond the first per recipient.
    pub duplicates: u64,
    /// Emails for users no host saw accepted, and for no user at all.
    pub unasked: u64,
    /// Rows of `dead_letters`, and those not resolved.
    pub dead_letters: i64,
    pub unresolved: i64,
    /// Deliveries queued, sending or retrying.
    pub stuck: i64,
    /// Deliveries that are not resends, and deliveries `sent`.
    pub first_sends: i64,
    pub sent_rows: i64,
}

impl Ledger {
    /// Reads the sink and the tables.
    pub(super) async fn read(
        d: &Deployment,
        accepted: &HashMap<u64, SystemTime>,
    ) -> anyhow::Result<Self> {
        let (per_user, strangers) = arrivals(d);
        let q = |sql: &str| format!("select count(*) from email2fa.{sql}");
        Ok(Self {
            delivered: accepted.keys().filter(|u| per_user.contains_key(u)).count() as u64,
            duplicates: per_user.values().map(|(n, _)| n - 1).sum(),
            unasked: per_user
                .keys()
                .filter(|u| !accepted.contains_key(u))
                .count() as u64
                + strangers,
            dead_letters: d.count(&q("dead_letters")).await?,
            unresolved: d
                .count(&q("dead_letters where resolved_at is null"))
                .await?,
            stuck: d
                .count(&q(&format!("deliveries where {UNFINISHED}")))
                .await?,
            first_sends: d.count(&q("deliveries where resent_from is null")).await?,
            sent_rows: d.count(&q("deliveries where status = 'sent'")).await?,
            per_user,
        })
    }

    /// The expectations every run shares, for `n` accepted webhooks and at
    /// most `in_flight` sends that may have arrived twice.
    pub(super) fn problems(&self, tally: &Tally, n: u64, in_flight: i64) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |broken: bool, text: String| {
            if broken {
                problems.push(text);
            }
        };
        problem(
            n > self.delivered,
            format!(
                "{} accepted emails never arrived",
                n - self.delivered.min(n)
            ),
        );
        problem(
            tally.gave_up > 0,
            format!(
                "{} webhooks were never accepted (hosts gave up after {GIVE_UP:?})",
                tally.gave_up
            ),
        );
        problem(
            !tally.other_5xx.is_empty(),
            format!(
                "5xx answers other than 503 problem+json: {:?}",
                tally.other_5xx
            ),
        );
        problem(
            !tally.refused_4xx.is_empty(),
            format!("valid webhooks refused: {:?}", tally.refused_4xx),
        );
        problem(
            tally.hangs > 0,
            format!(
                "{} answers took longer than {:?}",
                tally.hangs,
                hosts::ANSWER_TIMEOUT
            ),
        );
        problem(
            self.duplicates > u64::try_from(in_flight).unwrap_or(0),
            format!(
                "{} duplicates, but only {in_flight} sends were in flight at the fault",
                self.duplicates
            ),
        );
        problem(
            self.unasked > 0,
            format!("{} emails for webhooks no host saw accepted", self.unasked),
        );
        let n = n as i64;
        problem(
            self.first_sends != n,
            format!(
                "{} deliveries for {n} accepted webhooks (each must run once)",
                self.first_sends
            ),
        );
        problem(
            self.sent_rows != n || self.stuck > 0 || self.unresolved > 0,
            format!(
                "tables: {} sent of {n}, {} unfinished, {} unresolved dead letters",
                self.sent_rows, self.stuck, self.unresolved
            ),
        );
        problems
    }
}

/// Counts, the recovery time, and every broken expectation.
pub(super) async fn reconcile(
    fault: Fault,
    d: &Deployment,
    tally: &Tally,
    injected: &Injected,
    started: Instant,
) -> anyhow::Result<Row> {
    let accepted: HashMap<u64, SystemTime> = tally.accepted.iter().copied().collect();
    let ledger = Ledger::read(d, &accepted).await?;
    let n = accepted.len() as u64;
    let recovery = recovery_time(injected.repaired_at, &accepted, &ledger.per_user);
    let mut problems = ledger.problems(tally, n, injected.in_flight);
    let dead_letters = ledger.dead_letters;
    let mut problem = |broken: bool, text: String| {
        if broken {
            problems.push(text);
        }
    };
    problem(
        fault == Fault::SmtpShort && dead_letters > 0,
        format!("{dead_letters} dead letters from an outage shorter than the retry window"),
    );
    problem(
        fault == Fault::SmtpLong && dead_letters == 0,
        "the long outage dead-lettered nothing: it did not outlast the retry window".into(),
    );
    problem(
        started.elapsed() > fault.bound(),
        format!(
            "took {:.0} s, over its bound of {:?}",
            started.elapsed().as_secs_f64(),
            fault.bound()
        ),
    );
    Ok(Row {
        scenario: fault.name(),
        title: fault.title(),
        accepted: n,
        delivered: ledger.delivered,
        lost: n - ledger.delivered.min(n),
        duplicates: ledger.duplicates,
        in_flight_at_fault: injected.in_flight,
        dead_letters,
        tally: tally.clone(),
        recovery_s: recovery.as_secs_f64(),
        wall_s: started.elapsed().as_secs_f64(),
        problems,
    })
}

/// An email slower than this from its webhook's answer to the sink was
/// held up by the fault (a few milliseconds is the norm).
const LATE: Duration = Duration::from_secs(2);

/// From the repair until the service works as before: the first webhook
/// accepted after it, and the arrival of every email accepted before it
/// or held up for longer than [`LATE`] (zero when all had arrived
/// already), whichever comes last.
fn recovery_time(
    repair: SystemTime,
    accepted: &HashMap<u64, SystemTime>,
    per_user: &HashMap<u64, (u64, SystemTime)>,
) -> Duration {
    let since = |t: SystemTime| t.duration_since(repair).unwrap_or_default();
    let first_accept = accepted
        .values()
        .filter(|t| **t >= repair)
        .map(|t| since(*t))
        .min()
        .unwrap_or_default();
    let last_arrival = accepted
        .iter()
        .filter_map(|(u, at)| {
            let (_, arrived) = per_user.get(u)?;
            let late = arrived.duration_since(*at).unwrap_or_default() > LATE;
            (*at < repair || late).then(|| since(*arrived))
        })
        .max()
        .unwrap_or_default();
    first_accept.max(last_arrival)
}
