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

/// Counts, the recovery time, and every broken expectation.
pub(super) async fn reconcile(
    fault: Fault,
    d: &Deployment,
    tally: &Tally,
    injected: &Injected,
    started: Instant,
) -> anyhow::Result<Row> {
    let (per_user, strangers) = arrivals(d);
    let accepted: HashMap<u64, SystemTime> = tally.accepted.iter().copied().collect();
    let delivered = accepted.keys().filter(|u| per_user.contains_key(u)).count() as u64;
    let duplicates: u64 = per_user.values().map(|(n, _)| n - 1).sum();
    let unasked = per_user
        .keys()
        .filter(|u| !accepted.contains_key(u))
        .count() as u64;
    let q = |sql: &str| format!("select count(*) from email2fa.{sql}");
    let dead_letters = d.count(&q("dead_letters")).await?;
    let unresolved = d
        .count(&q("dead_letters where resolved_at is null"))
        .await?;
    let stuck = d
        .count(&q(&format!("deliveries where {UNFINISHED}")))
        .await?;
    let first_sends = d.count(&q("deliveries where resent_from is null")).await?;
    let sent_rows = d.count(&q("deliveries where status = 'sent'")).await?;
    let repair = injected.repaired_at;
    let recovery = recovery_time(repair, &accepted, &per_user);

    let mut row = Row {
        scenario: fault.name(),
        title: fault.title(),
        accepted: accepted.len() as u64,
        delivered,
        lost: accepted.len() as u64 - delivered,
        duplicates,
        in_flight_at_fault: injected.in_flight,
        dead_letters,
        tally: tally.clone(),
        recovery_s: recovery.as_secs_f64(),
        wall_s: started.elapsed().as_secs_f64(),
        problems: Vec::new(),
    };
    let mut problem = |broken: bool, text: String| {
        if broken {
            row.problems.push(text);
        }
    };
    let n = accepted.len() as i64;
    problem(
        row.lost > 0,
        format!("{} accepted emails never arrived", row.lost),
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
        duplicates > u64::try_from(injected.in_flight).unwrap_or(0),
        format!(
            "{duplicates} duplicates, but only {} sends were in flight at the fault",
            injected.in_flight
        ),
    );
    problem(
        unasked + strangers > 0,
        format!(
            "{} emails for webhooks no host saw accepted",
            unasked + strangers
        ),
    );
    problem(
        first_sends != n,
        format!("{first_sends} deliveries for {n} accepted webhooks (each must run once)"),
    );
    problem(
        sent_rows != n || stuck > 0 || unresolved > 0,
        format!(
            "tables: {sent_rows} sent of {n}, {stuck} unfinished, {unresolved} unresolved dead letters"
        ),
    );
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
            row.wall_s,
            fault.bound()
        ),
    );
    Ok(row)
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
