//! Batched delivery: the engine claims, mints and records many deliveries
//! per statement. These check the batch statements' promises on both
//! database backends (each delivery claimed once by concurrent claimers, a
//! dead worker's batch claimable again after its lease, a sent delivery
//! never claimed again, a superseded code never stored) and, end to end,
//! that a burst of emails and duplicated jobs send each email once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TENANT, TestApp, ingress_only};
use email2fa::store::{MintedCode, SEND_CONTEXT, SendContextRow, Timestamp};
use email2fa_workers::deliveries::{
    self, BatchClaim, Delivery, NewDelivery, SentRecord, claim_batch, insert_delivery,
};
use email2fa_workers::queue::EmailJob;
use serde_json::json;

fn batch_claim() -> BatchClaim {
    BatchClaim::new(SEND_CONTEXT.columns, SEND_CONTEXT.joins)
}

/// Inserts `count` queued `factor_removed` deliveries (no challenge needed)
/// and returns their ids.
async fn queued_deliveries(app: &TestApp, count: usize) -> Vec<String> {
    let mut tx = app.store.db().begin().await.expect("begin");
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let id = deliveries::new_delivery_id();
        let delivery = NewDelivery {
            id: id.clone(),
            tenant_id: TENANT.into(),
            kind: "factor_removed",
            user_id: format!("u{n}"),
            recipient: format!("u{n}@shop.example"),
            user_name: None,
            locale: None,
            role: "customer".into(),
            challenge_id: None,
            secondary_auth_provider_id: "s1".into(),
            max_attempts: 6,
            not_after: None,
            resent_from: None,
        };
        insert_delivery(&mut tx, &delivery, Timestamp::now())
            .await
            .expect("insert");
        ids.push(id);
    }
    tx.commit().await.expect("commit");
    ids
}

async fn claim(app: &TestApp, ids: &[String], now: Timestamp, lease: i64) -> Vec<Delivery> {
    claim_batch::<SendContextRow>(app.store.db(), &batch_claim(), ids, now, lease)
        .await
        .expect("claim")
        .into_iter()
        .map(|(delivery, _)| delivery)
        .collect()
}

on_both_backends!(
    two_concurrent_batch_claimers_take_each_delivery_exactly_once,
    a_batch_whose_worker_died_is_claimable_again_once_its_lease_ran_out,
    a_sent_delivery_is_never_claimed_again,
    a_claimed_delivery_comes_with_its_tenant_and_provider,
);

/// Without workers: nothing else may mint the codes.
mod a_code_is_stored_only_for_the_challenges_current_send {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = super::ingress_only(super::TestApp::sqlite()).await;
        super::a_code_is_stored_only_for_the_challenges_current_send(app).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(app) = super::ingress_only(super::TestApp::postgres()).await {
            super::a_code_is_stored_only_for_the_challenges_current_send(app).await;
        }
    }
}

on_every_queue!(
    a_burst_of_emails_is_sent_once_each,
    a_job_pushed_twice_sends_its_email_once,
);

/// Two workers claim overlapping batches at the same time (the same ids in
/// opposite orders): every delivery is claimed, and by one of them only.
async fn two_concurrent_batch_claimers_take_each_delivery_exactly_once(app: TestApp) {
    let app = std::sync::Arc::new(app);
    let ids = queued_deliveries(&app, 120).await;
    let mut reversed = ids.clone();
    reversed.reverse();
    let claimers = [ids.clone(), reversed].map(|order| {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            let mut mine = Vec::new();
            for chunk in order.chunks(16) {
                mine.extend(claim(&app, chunk, Timestamp::now(), 60).await);
            }
            mine
        })
    });
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.expect("claimer"));
    }
    let distinct: HashSet<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(claimed.len(), 120, "each delivery claimed exactly once");
    assert_eq!(distinct.len(), 120);
    assert!(
        claimed
            .iter()
            .all(|d| d.attempts == 1 && d.status == "sending")
    );
}

/// A worker claimed a batch and died before recording anything: its
/// deliveries stay `sending` under its lease, then any worker may claim
/// them again (the same rule as for one delivery).
async fn a_batch_whose_worker_died_is_claimable_again_once_its_lease_ran_out(app: TestApp) {
    let ids = queued_deliveries(&app, 10).await;
    let now = Timestamp::now();
    assert_eq!(claim(&app, &ids, now, 30).await.len(), 10);
    assert!(
        claim(&app, &ids, now.plus_seconds(29), 30).await.is_empty(),
        "nobody takes a batch under its lease"
    );
    let again = claim(&app, &ids, now.plus_seconds(31), 30).await;
    assert_eq!(again.len(), 10, "the lease ran out: claimable again");
    assert!(again.iter().all(|d| d.attempts == 2));
    let overdue = deliveries::overdue(app.store.db(), now.plus_seconds(62), now, 100)
        .await
        .expect("overdue");
    assert_eq!(overdue.len(), 10, "the sweep finds them too");
}

/// Recorded as sent in a batch: no claim takes them again, even long after
/// their lease.
async fn a_sent_delivery_is_never_claimed_again(app: TestApp) {
    let ids = queued_deliveries(&app, 5).await;
    let now = Timestamp::now();
    assert_eq!(claim(&app, &ids, now, 30).await.len(), 5);
    let records: Vec<SentRecord> = ids
        .iter()
        .map(|id| SentRecord {
            id: id.clone(),
            reply: "250 OK".into(),
            message_id: format!("<{id}@test>"),
            sent_at: now,
        })
        .collect();
    deliveries::mark_sent_batch(app.store.db(), &records)
        .await
        .expect("mark sent");
    assert!(
        claim(&app, &ids, now.plus_seconds(3600), 30)
            .await
            .is_empty()
    );
    let statuses = deliveries::statuses_of(app.store.db(), &ids)
        .await
        .expect("statuses");
    assert!(statuses.values().all(|s| s == "sent"), "{statuses:?}");
    let replies: i64 = email2fa_db::with_db!(app.store.db(), pool => sqlx::query_scalar(
        "select count(*) from deliveries where smtp_reply = '250 OK' and sent_at is not null \
            and lease_until is null").fetch_one(pool).await.expect("count"));
    assert_eq!(replies, 5);
}

/// The claim reads the service's context in the same statement: the
/// tenant's name and the provider that sends.
async fn a_claimed_delivery_comes_with_its_tenant_and_provider(app: TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    let ids = queued_deliveries(&app, 3).await;
    let claimed =
        claim_batch::<SendContextRow>(app.store.db(), &batch_claim(), &ids, Timestamp::now(), 30)
            .await
            .expect("claim");
    assert_eq!(claimed.len(), 3);
    for (delivery, row) in claimed {
        let context = row.into_send_context(&delivery.tenant_id).expect("tenant");
        assert_eq!(context.tenant_name, "Acme Shop");
        let (service_provider_id, provider) = context.provider.expect("provider");
        assert_eq!(service_provider_id, "p1");
        assert_eq!(provider.expect("service provider").smtp_host, "127.0.0.1");
        assert!(context.challenge.is_none(), "factor_removed has none");
    }
}

/// "Send New Code" replaced the send between the claim and the mint: the
/// old send's code is not stored, the new one's is, in the same batch.
async fn a_code_is_stored_only_for_the_challenges_current_send(app: TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    let mut sends = Vec::new();
    for user in ["u1", "u2"] {
        let answer = app
            .post_signed(
                "enrollment.started",
                json!({"user": {"id": user, "role": "customer"}, "email": format!("{user}@shop.example")}),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json());
        let body = answer.json();
        sends.push((
            body["challenge_id"].as_str().expect("id").to_owned(),
            body["delivery_id"].as_str().expect("id").to_owned(),
        ));
    }
    let code = |(challenge, delivery): &(String, String)| MintedCode {
        tenant_id: TENANT.into(),
        challenge_id: challenge.clone(),
        delivery_id: delivery.clone(),
        code_hash: vec![7; 32],
        expires_at: Timestamp::now().plus_seconds(600),
    };
    let stale = MintedCode {
        delivery_id: "an-older-send".into(),
        ..code(&sends[1])
    };
    let stored = app
        .store
        .store_minted_codes(&[code(&sends[0]), stale])
        .await
        .expect("store");
    assert_eq!(stored, HashSet::from([sends[0].1.clone()]));
    let hashes: i64 = email2fa_db::with_db!(app.store.db(), pool => sqlx::query_scalar(
        "select count(*) from challenges where code_hash is not null").fetch_one(pool).await.expect("count"));
    assert_eq!(hashes, 1, "only the current send's code is stored");
}

async fn enroll(app: &TestApp, users: std::ops::Range<usize>) {
    for n in users {
        let answer = app
            .post_signed(
                "enrollment.started",
                json!({"user": {"id": format!("u{n}"), "role": "customer"}, "email": format!("u{n}@shop.example")}),
            )
            .await;
        assert_eq!(answer.status, 200, "{:?}", answer.json());
    }
}

/// Many emails at once go through the claim, mint and record batches: each
/// arrives once and every row ends `sent`.
async fn a_burst_of_emails_is_sent_once_each(app: TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    enroll(&app, 0..60).await;
    let mail = app.sink.wait_for(60, Duration::from_secs(30)).await;
    assert_eq!(mail.len(), 60);
    let recipients: HashSet<String> = mail.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    assert_eq!(recipients.len(), 60, "one email per user");
    wait_all_sent(&app, 60).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sink.count(), 60, "nothing sent twice");
}

/// The sweep (or a retry) pushed a delivery's job again while the first
/// was still waiting: both jobs run, the email goes out once.
async fn a_job_pushed_twice_sends_its_email_once(app: TestApp) {
    app.configure_mail(json!({"customer_2fa_allowed": true}))
        .await;
    let answer = app
        .post_signed(
            "enrollment.started",
            json!({"user": {"id": "u1", "role": "customer"}, "email": "u1@shop.example"}),
        )
        .await;
    assert_eq!(answer.status, 200);
    let delivery = answer.json()["delivery_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let job = EmailJob {
        delivery_id: delivery.clone(),
    };
    app.queue
        .push_many(vec![job.clone(), job])
        .await
        .expect("push");
    assert_eq!(app.wait_delivery(&delivery, "sent").await, "sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sink.count(), 1, "sent once");
}

async fn wait_all_sent(app: &TestApp, count: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent: i64 = email2fa_db::with_db!(app.store.db(), pool => sqlx::query_scalar(
            "select count(*) from deliveries where status = 'sent'").fetch_one(pool).await.expect("count"));
        if sent == count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{sent} of {count} sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On SQLite the batch claim finds each delivery by its id: with the
/// status index instead, every claim read the whole due backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claims_a_batch_by_the_deliveries_ids() {
    let app = ingress_only(TestApp::sqlite()).await;
    queued_deliveries(&app, 50).await;
    let email2fa_db::Db::Sqlite(pool, _) = app.store.db() else {
        unreachable!("an SQLite app");
    };
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "explain query plan {}",
        deliveries::SQLITE_CLAIM_BATCH
    )))
    .bind("[]")
    .bind(Timestamp::now())
    .bind(Timestamp::now())
    .bind(Timestamp::now())
    .fetch_all(pool)
    .await
    .expect("explain");
    let steps: Vec<&str> = plan.iter().map(|step| step.3.as_str()).collect();
    assert!(
        steps.iter().any(|step| step
            .contains("SEARCH deliveries USING INDEX sqlite_autoindex_deliveries_1 (id=?)")),
        "{steps:?}"
    );
    assert!(
        !steps
            .iter()
            .any(|step| step.contains("deliveries_by_status")),
        "{steps:?}"
    );
}

/// On PostgreSQL the batch claim finds each delivery by its id even
/// before the table's first analysis: with `deliveries_by_status` as well,
/// every claim read the whole due backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_a_batch_by_the_deliveries_ids_without_statistics() {
    let Some(app) = ingress_only(TestApp::postgres()).await else {
        return;
    };
    queued_deliveries(&app, 2000).await;
    let email2fa_db::Db::Postgres(pool) = app.store.db() else {
        unreachable!("a PostgreSQL app");
    };
    let mut conn = pool.acquire().await.expect("connection");
    let prepare = format!(
        "prepare batch_claim(text[], timestamptz, timestamptz, timestamptz) as {}",
        batch_claim().postgres_statement()
    );
    for statement in ["set plan_cache_mode = force_generic_plan", prepare.as_str()] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut *conn)
            .await
            .expect("prepare");
    }
    let plan: Vec<(String,)> =
        sqlx::query_as("explain execute batch_claim(array['x'], now(), now(), now())")
            .fetch_all(&mut *conn)
            .await
            .expect("explain");
    let plan: Vec<&str> = plan.iter().map(|(line,)| line.as_str()).collect();
    assert!(
        plan.iter().any(|line| line.contains("deliveries_pkey")),
        "{plan:#?}"
    );
    assert!(
        !plan
            .iter()
            .any(|line| line.contains("deliveries_by_status")),
        "{plan:#?}"
    );
}
