//! One lane: collect a batch, run it, answer, repeat.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use email2fa_db::LaneConn;

use super::batch::{BatchError, run_batch};
use super::{Answer, IngestError, Job, Shared, lane_of};
use crate::domain::EventError;
use crate::domain::batch::{Key, Verdict, key};

/// How often a batch that lost a race is decided again before its
/// webhooks get 503.
const RACE_RETRIES: usize = 3;

/// How long at most a batch far smaller than the previous one waits for
/// more webhooks (see [`run`]).
const CATCH_UP: std::time::Duration = std::time::Duration::from_millis(1);

/// How long a lane with nothing to do keeps the transaction its last
/// commit began for the next batch ([`LaneConn`]) before it ends it.
const QUIET: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs a lane until every sender is gone.
///
/// Under steady load the webhooks answered by one batch come back as the
/// next crowd, a moment later. A webhook that arrived while the batch ran
/// would otherwise make a batch of its own just ahead of them, and the
/// whole crowd would wait a full batch behind it (batches of 31 and 1 in
/// turn, measured at 32 concurrent requests). So a batch that finds under
/// half as many webhooks as the previous one had waits up to [`CATCH_UP`]
/// for as many; after a quiet spell it is one webhook and waits for nothing.
///
/// The lane runs its batches on a database connection of its own
/// ([`LaneConn`], PostgreSQL), which it closes when it stops.
pub(super) async fn run(shared: Arc<Shared>, mut inbox: mpsc::Receiver<Job>) {
    let mut conn: Option<LaneConn> = None;
    let mut carried: Vec<Job> = Vec::new();
    let mut last_size = 0;
    loop {
        let mut jobs = std::mem::take(&mut carried);
        if jobs.is_empty() {
            let next = match tokio::time::timeout(QUIET, inbox.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    LaneConn::idle(&mut conn).await;
                    inbox.recv().await
                }
            };
            match next {
                Some(job) => jobs.push(job),
                None => {
                    LaneConn::close(conn).await;
                    return;
                }
            }
        }
        let max = shared.config.max_batch.max(1);
        if !shared.config.linger.is_zero() && jobs.len() < max {
            let deadline = tokio::time::Instant::now() + shared.config.linger;
            while jobs.len() < max {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while jobs.len() < max {
            match inbox.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let want = last_size.min(max);
        if jobs.len() * 2 < want {
            let deadline = tokio::time::Instant::now() + CATCH_UP;
            while jobs.len() < want {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some(job)) => jobs.push(job),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        last_size = jobs.len();
        carried = run_jobs(&shared, &mut conn, jobs).await;
    }
}

/// Runs one batch and answers its webhooks; returns those to run again in
/// the next batch of this lane.
async fn run_jobs(shared: &Shared, conn: &mut Option<LaneConn>, jobs: Vec<Job>) -> Vec<Job> {
    let (started, size) = (std::time::Instant::now(), jobs.len());
    crate::metrics::ingest_batch(size);
    // The same webhook id twice: the first runs, the others follow it.
    let mut first_of: HashMap<Key, usize> = HashMap::new();
    let mut leaders = Vec::with_capacity(jobs.len());
    let mut followers: Vec<(usize, Job)> = Vec::new();
    for job in jobs {
        let k = key(&job.item.tenant_id, &job.item.webhook_id);
        match first_of.get(&k) {
            Some(&leader) => followers.push((leader, job)),
            None => {
                first_of.insert(k, leaders.len());
                leaders.push(job);
            }
        }
    }
    let verdicts = decide(shared, conn, &leaders).await;
    let mut again = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(leaders.len());
    for (job, verdict) in leaders.into_iter().zip(verdicts) {
        let outcome = Outcome::of(&verdict, &job);
        match verdict {
            Ok(Verdict::Retry(owner)) => reroute(shared, job, owner, &mut again),
            verdict => drop(job.reply.send(answer(verdict))),
        }
        outcomes.push(outcome);
    }
    for (leader, job) in followers {
        match &outcomes[leader] {
            Outcome::Answered {
                body_sha256,
                status,
                body,
            } => {
                let reply = if *body_sha256 == job.item.body_sha256 {
                    Ok(Answer::Replayed {
                        status: *status,
                        body: body.clone(),
                    })
                } else {
                    Err(EventError::WebhookIdConflict.into())
                };
                drop(job.reply.send(reply));
            }
            // Refused or moved: decided afresh after the first.
            Outcome::Again => again.push(job),
        }
    }
    tracing::debug!(
        size,
        elapsed_us = started.elapsed().as_micros() as u64,
        "batch done"
    );
    again
}

/// What a leader's followers get.
enum Outcome {
    Answered {
        body_sha256: Vec<u8>,
        status: u16,
        body: Vec<u8>,
    },
    Again,
}

impl Outcome {
    fn of(verdict: &Result<Verdict, IngestError>, job: &Job) -> Self {
        match verdict {
            Ok(Verdict::Answer(body)) => Self::Answered {
                body_sha256: job.item.body_sha256.clone(),
                status: 200,
                body: body.clone(),
            },
            // The stored receipt's hash is the leader's own (it matched).
            Ok(Verdict::Replay { status, answer }) => Self::Answered {
                body_sha256: job.item.body_sha256.clone(),
                status: *status,
                body: answer.clone(),
            },
            _ => Self::Again,
        }
    }
}

/// A webhook whose challenge belongs to another user key: run it again
/// under that key, in that key's lane.
fn reroute(shared: &Shared, mut job: Job, owner: u32, here: &mut Vec<Job>) {
    job.key = owner;
    let lane = lane_of(owner, shared.lanes.len());
    match shared.lanes.get(lane).and_then(mpsc::WeakSender::upgrade) {
        Some(sender) => {
            if let Err(error) = sender.try_send(job) {
                here.push(error.into_inner());
            }
        }
        None => here.push(job),
    }
}

fn answer(verdict: Result<Verdict, IngestError>) -> Result<Answer, IngestError> {
    match verdict {
        Ok(Verdict::Answer(body)) => Ok(Answer::Fresh(body)),
        Ok(Verdict::Replay { status, answer }) => Ok(Answer::Replayed {
            status,
            body: answer,
        }),
        Ok(Verdict::Refused(error)) => Err(error.into()),
        Ok(Verdict::Retry(_)) => Err(IngestError::Stopped),
        Err(error) => Err(error),
    }
}

/// The verdict of each job: the batch as a whole, decided again when it
/// lost a race; when it fails for another reason than the database being
/// unavailable, each webhook alone, so that one bad webhook fails alone.
async fn decide(
    shared: &Shared,
    conn: &mut Option<LaneConn>,
    jobs: &[Job],
) -> Vec<Result<Verdict, IngestError>> {
    for attempt in 1..=RACE_RETRIES {
        match run_batch(shared, conn, jobs).await {
            Ok(verdicts) => return verdicts.into_iter().map(Ok).collect(),
            Err(BatchError::Race) if attempt < RACE_RETRIES => {
                tracing::debug!(attempt, "a batch lost a race; deciding it again");
            }
            Err(error) if jobs.len() > 1 && error.is_item_specific() => {
                tracing::warn!(%error, size = jobs.len(), "a batch failed; running its webhooks one by one");
                let mut verdicts = Vec::with_capacity(jobs.len());
                for job in jobs {
                    let alone = run_batch(shared, conn, std::slice::from_ref(job)).await;
                    verdicts.push(match alone {
                        Ok(mut v) if !v.is_empty() => Ok(v.remove(0)),
                        Ok(_) => Err(IngestError::Internal),
                        Err(error) => {
                            tracing::warn!(%error, "a webhook failed on its own");
                            Err(error.for_webhook())
                        }
                    });
                }
                return verdicts;
            }
            Err(error) => {
                tracing::warn!(%error, size = jobs.len(), "a batch failed; nothing of it was written");
                return jobs.iter().map(|_| Err(error.for_webhook())).collect();
            }
        }
    }
    jobs.iter()
        .map(|_| Err(BatchError::Race.for_webhook()))
        .collect()
}
