//! The batch rules, case by case, without a database.

use serde_json::json;

use super::*;
use crate::crypto::{KeyedHasher, MasterKey};

/// Ids `id-1`, `id-2`, …; challenge ids carry the user's key as real
/// ones do.
#[derive(Default)]
struct CountingMint(usize);

impl Mint for CountingMint {
    fn id(&mut self) -> String {
        self.0 += 1;
        format!("id-{}", self.0)
    }
    fn challenge_id(&mut self, tenant_id: &str, user_id: &str) -> String {
        crate::domain::keys::challenge_id(crate::domain::keys::user_key(tenant_id, user_id))
    }
    fn trust_token(&mut self) -> String {
        self.0 += 1;
        format!("e2fa_td_token-{}", self.0)
    }
}

/// The default limits: 5 codes per user per 15 min, 10 per address per
/// hour, a lockout after 20 wrong codes.
fn config() -> DomainConfig {
    DomainConfig::from_settings(&crate::settings::Settings::default())
}

fn hasher() -> KeyedHasher {
    let key = MasterKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    KeyedHasher::new(&key.expect("32 zero bytes"))
}

fn now() -> Timestamp {
    Timestamp::from(chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("valid"))
}

fn snapshot() -> Snapshot {
    let mut settings = TenantSettings::defaults_for("acme");
    settings.customer_2fa_allowed = true;
    settings.admin_2fa_allowed = true;
    settings.resend_cooldown_seconds = 0;
    let provider = SecondaryAuthProviderRow {
        tenant_id: "acme".into(),
        id: "s1".into(),
        title: "Codes".into(),
        service_provider_id: "p1".into(),
        created_at: now(),
        updated_at: now(),
    };
    let mut snap = Snapshot::default();
    snap.tenants.insert(
        "acme".into(),
        TenantState {
            settings,
            providers: vec![provider],
        },
    );
    snap
}

fn enroll(snap: &mut Snapshot, user: &str, email: &str) {
    snap.factors.insert(
        key("acme", user),
        vec![Factor {
            tenant_id: "acme".into(),
            id: format!("f-{user}"),
            user_id: user.into(),
            role: "customer".into(),
            email: email.into(),
            secondary_auth_provider_id: "s1".into(),
            created_at: now(),
        }],
    );
}

fn item(n: usize, event: HotEvent) -> HotItem {
    HotItem {
        tenant_id: "acme".into(),
        webhook_id: format!("msg_{n}"),
        body_sha256: vec![u8::try_from(n).unwrap_or(0)],
        event,
    }
}

fn login(user: &str) -> HotEvent {
    HotEvent::LoginStarted {
        event: serde_json::from_value(json!({"user": {"id": user, "role": "customer"}}))
            .expect("valid"),
        token_hash: None,
    }
}

fn enrollment(user: &str, email: &str) -> HotEvent {
    HotEvent::EnrollmentStarted(
        serde_json::from_value(json!({"user": {"id": user, "role": "customer"}, "email": email}))
            .expect("valid"),
    )
}

fn verify(challenge_id: &str, code: &str, login: bool) -> HotEvent {
    HotEvent::Verify {
        event: serde_json::from_value(json!({"challenge_id": challenge_id, "code": code}))
            .expect("valid"),
        login,
    }
}

/// Runs `events` as one batch over `snap`.
fn run(snap: Snapshot, events: Vec<HotEvent>) -> (Vec<Verdict>, Writes) {
    let items: Vec<HotItem> = events
        .into_iter()
        .enumerate()
        .map(|(n, event)| item(n, event))
        .collect();
    let refs: Vec<&HotItem> = items.iter().collect();
    let keys: Vec<u32> = items
        .iter()
        .map(|i| match i.event.user_id() {
            Some(user) => crate::domain::keys::user_key("acme", user),
            None => {
                crate::domain::keys::key_of_challenge(i.event.challenge_id().unwrap_or_default())
                    .unwrap_or(0)
            }
        })
        .collect();
    let (config, hasher) = (config(), hasher());
    let mut mint = CountingMint::default();
    let mut overlay = Overlay::new(snap, &config, &hasher, &mut mint, now());
    let verdicts = plan(&refs, &keys, true, &mut overlay);
    (verdicts, overlay.finish())
}

fn answer(verdict: &Verdict) -> serde_json::Value {
    match verdict {
        Verdict::Answer(bytes) => serde_json::from_slice(bytes).expect("JSON"),
        other => panic!("expected an answer, got {other:?}"),
    }
}

fn rate_limited(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Refused(EventError::RateLimited { .. }))
}

/// A pending challenge of `user` with `code` as its current code.
fn pending(snap: &mut Snapshot, user: &str, purpose: &str, code: &str) -> String {
    let id = crate::domain::keys::challenge_id(crate::domain::keys::user_key("acme", user));
    let challenge = Challenge {
        tenant_id: "acme".into(),
        id: id.clone(),
        purpose: purpose.into(),
        user_id: user.into(),
        role: "customer".into(),
        email: format!("{user}@example.com"),
        user_name: None,
        locale: None,
        secondary_auth_provider_id: "s1".into(),
        status: "pending".into(),
        attempts: 0,
        max_attempts: 5,
        code_length: 6,
        code_ttl_seconds: 600,
        code_hash: Some(hasher().code_hash(&id, code)),
        code_expires_at: Some(now().plus_seconds(600)),
        code_delivery_id: Some("d0".into()),
        current_delivery_id: Some("d0".into()),
        resend_after: now(),
        factor_id: None,
        created_at: now(),
        updated_at: now(),
        closed_at: None,
        previous_code_hash: None,
        previous_code_expires_at: None,
    };
    snap.challenges.insert(key("acme", &id), challenge);
    id
}

#[test]
fn a_batch_of_logins_for_one_user_applies_the_limit_in_order() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "u1@example.com");
    let (verdicts, writes) = run(snap, (0..7).map(|_| login("u1")).collect());
    let sent: Vec<bool> = verdicts.iter().map(|v| !rate_limited(v)).collect();
    assert_eq!(sent, [true, true, true, true, true, false, false]);
    assert_eq!(writes.deliveries.len(), 5);
    assert_eq!(
        writes.receipts.len(),
        5,
        "refused webhooks leave no receipt"
    );
    assert_eq!(
        writes.decisions.len(),
        5,
        "refused logins record no decision"
    );
    // Each login superseded the one before it; only the last is pending.
    let statuses: Vec<&str> = writes
        .challenges
        .iter()
        .map(|c| c.status.as_str())
        .collect();
    assert_eq!(
        statuses,
        [
            "superseded",
            "superseded",
            "superseded",
            "superseded",
            "pending"
        ]
    );
    let last = answer(&verdicts[4]);
    assert_eq!(last["challenge_id"], json!(writes.challenges[4].id));
}

#[test]
fn sends_counted_before_the_batch_count_too() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "u1@example.com");
    snap.user_sends.insert(
        key("acme", "u1"),
        Window {
            count: 4,
            oldest: Some(now().plus_seconds(-100)),
        },
    );
    let (verdicts, _) = run(snap, vec![login("u1"), login("u1")]);
    assert!(!rate_limited(&verdicts[0]));
    match &verdicts[1] {
        Verdict::Refused(EventError::RateLimited { retry_after, .. }) => {
            assert_eq!(
                *retry_after, 800,
                "the oldest send leaves the window in 800 s"
            )
        }
        other => panic!("expected 429, got {other:?}"),
    }
}

#[test]
fn two_users_sharing_an_address_share_its_limit() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "shared@example.com");
    enroll(&mut snap, "u2", "shared@example.com");
    snap.recipient_sends.insert(
        key("acme", "shared@example.com"),
        Window {
            count: 9,
            oldest: Some(now()),
        },
    );
    let (verdicts, writes) = run(snap, vec![login("u1"), login("u2")]);
    assert!(!rate_limited(&verdicts[0]));
    assert!(rate_limited(&verdicts[1]));
    assert_eq!(writes.deliveries.len(), 1);
}

#[test]
fn a_refused_webhook_writes_nothing_and_the_others_commit() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "u1@example.com");
    let (verdicts, writes) = run(
        snap,
        vec![
            enrollment("u2", "u2@example.com"),
            enrollment("u1", "u1@example.com"), // already enrolled
            enrollment("u3", "u3@example.com"),
        ],
    );
    assert!(matches!(
        verdicts[1],
        Verdict::Refused(EventError::AlreadyEnrolled)
    ));
    assert_eq!(writes.receipts.len(), 2);
    assert_eq!(writes.challenges.len(), 2);
    assert!(writes.challenges.iter().all(|c| c.user_id != "u1"));
    assert_eq!(writes.audits.len(), 2);
}

#[test]
fn a_login_supersedes_the_pending_challenge_a_later_verify_of_the_batch_names() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "u1@example.com");
    let old = pending(&mut snap, "u1", "login", "123456");
    let (verdicts, writes) = run(snap, vec![login("u1"), verify(&old, "123456", true)]);
    assert_eq!(answer(&verdicts[0])["decision"], "challenge");
    assert_eq!(answer(&verdicts[1])["outcome"], "expired");
    let update = &writes.challenge_updates[0];
    assert_eq!(
        (update.row.status.as_str(), update.expected_status.as_str()),
        ("superseded", "pending")
    );
    assert!(update.clear_hash);
}

#[test]
fn a_verify_before_the_login_in_the_same_batch_still_succeeds() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "u1@example.com");
    let old = pending(&mut snap, "u1", "login", "123456");
    let (verdicts, writes) = run(snap, vec![verify(&old, "12-34 56", true), login("u1")]);
    assert_eq!(answer(&verdicts[0])["outcome"], "verified");
    assert_eq!(answer(&verdicts[1])["decision"], "challenge");
    assert_eq!(writes.challenge_updates.len(), 1);
    assert_eq!(writes.challenge_updates[0].row.status, "verified");
}

#[test]
fn a_right_code_succeeds_once_and_wrong_tries_count_and_lock() {
    let mut snap = snapshot();
    let id = pending(&mut snap, "u1", "enrollment", "123456");
    let (verdicts, writes) = run(
        snap,
        vec![
            verify(&id, "000000", false),
            verify(&id, "123456", false),
            verify(&id, "123456", false),
        ],
    );
    assert_eq!(answer(&verdicts[0])["outcome"], "invalid_code");
    assert_eq!(answer(&verdicts[0])["attempts_remaining"], 4);
    assert_eq!(answer(&verdicts[1])["outcome"], "verified");
    assert_eq!(answer(&verdicts[1])["factor"]["email"], "u1@example.com");
    assert_eq!(answer(&verdicts[2])["outcome"], "already_used");
    assert_eq!(
        writes.factors.len(),
        1,
        "one factor however often it is verified"
    );
    let update = &writes.challenge_updates[0];
    assert_eq!((update.row.attempts, update.expected_attempts), (1, 0));
    assert_eq!(
        update.row.factor_id.as_deref(),
        Some(writes.factors[0].id.as_str())
    );
    // The wrong try started a streak and the success ended it.
    assert_eq!(writes.security.len(), 1);
    assert_eq!(writes.security[0].failures, 0);

    let mut snap = snapshot();
    let id = pending(&mut snap, "u1", "login", "123456");
    let (verdicts, writes) = run(snap, (0..6).map(|_| verify(&id, "999999", true)).collect());
    let outcomes: Vec<serde_json::Value> = verdicts
        .iter()
        .map(|v| answer(v)["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        [
            "invalid_code",
            "invalid_code",
            "invalid_code",
            "invalid_code",
            "locked",
            "locked"
        ]
    );
    assert_eq!(writes.challenge_updates[0].row.status, "locked");
    assert_eq!(writes.security[0].failures, 5);
}

#[test]
fn seen_webhook_ids_replay_or_conflict_and_run_nothing() {
    let mut snap = snapshot();
    snap.receipts.insert(
        key("acme", "msg_0"),
        SeenReceipt {
            body_sha256: vec![0],
            status: 200,
            answer: b"{\"first\":true}".to_vec(),
        },
    );
    snap.receipts.insert(
        key("acme", "msg_1"),
        SeenReceipt {
            body_sha256: vec![42],
            status: 200,
            answer: Vec::new(),
        },
    );
    let (verdicts, writes) = run(
        snap,
        vec![
            enrollment("u1", "a@example.com"),
            enrollment("u2", "b@example.com"),
        ],
    );
    assert!(
        matches!(&verdicts[0], Verdict::Replay { status: 200, answer } if answer == b"{\"first\":true}")
    );
    assert!(matches!(
        verdicts[1],
        Verdict::Refused(EventError::WebhookIdConflict)
    ));
    assert!(writes.receipts.is_empty() && writes.challenges.is_empty());
}

#[test]
fn a_challenge_of_another_users_key_is_decided_again_under_that_key() {
    let mut snap = snapshot();
    let id = pending(&mut snap, "u1", "login", "123456");
    // A challenge id minted before ids carried keys: its row says u2.
    let legacy = "01ARZ3NDEKTSV4RRFFQ69G5FAV".to_string();
    let mut row = snap.challenges[&key("acme", &id)].clone();
    row.id = legacy.clone();
    row.user_id = "u2".into();
    snap.challenges.insert(key("acme", &legacy), row);
    let (verdicts, writes) = run(snap, vec![verify(&legacy, "123456", true)]);
    let owner = crate::domain::keys::user_key("acme", "u2");
    assert!(matches!(verdicts[0], Verdict::Retry(k) if k == owner));
    assert!(writes.receipts.is_empty());
}

#[test]
fn send_targets_are_the_users_and_addresses_that_may_get_a_code() {
    let mut snap = snapshot();
    enroll(&mut snap, "u1", "u1@example.com");
    let id = pending(&mut snap, "u3", "login", "1");
    let items = [
        item(0, login("u1")),
        item(1, enrollment("u2", "new@example.com")),
        item(
            2,
            HotEvent::Resend(serde_json::from_value(json!({"challenge_id": id})).expect("valid")),
        ),
        item(3, verify(&id, "1", true)),
        item(4, login("unenrolled")),
    ];
    let refs: Vec<&HotItem> = items.iter().collect();
    let (users, recipients) = send_targets(&refs, &snap);
    let names = |keys: &[Key]| keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>();
    assert_eq!(names(&users), ["u1", "u2", "u3", "unenrolled"]);
    assert_eq!(
        names(&recipients),
        ["new@example.com", "u1@example.com", "u3@example.com"]
    );
}

/// Gives the challenge `id` an earlier code of the same delivery (a retry
/// no user asked for) that expires `in_seconds` from now.
fn with_previous_code(snap: &mut Snapshot, id: &str, code: &str, in_seconds: i64) {
    let challenge = snap
        .challenges
        .get_mut(&key("acme", id))
        .expect("challenge");
    challenge.previous_code_hash = Some(hasher().code_hash(id, code));
    challenge.previous_code_expires_at = Some(now().plus_seconds(in_seconds));
}

#[test]
fn the_code_a_retry_replaced_works_until_its_own_expiry_and_tries_count_once() {
    let mut snap = snapshot();
    let id = pending(&mut snap, "u1", "login", "222222");
    with_previous_code(&mut snap, &id, "111111", 60);
    let (verdicts, writes) = run(
        snap,
        vec![verify(&id, "000000", true), verify(&id, "111111", true)],
    );
    assert_eq!(answer(&verdicts[0])["attempts_remaining"], 4, "one try");
    assert_eq!(answer(&verdicts[1])["outcome"], "verified");
    assert_eq!(writes.challenge_updates[0].row.attempts, 1);

    let mut snap = snapshot();
    let id = pending(&mut snap, "u1", "login", "222222");
    with_previous_code(&mut snap, &id, "111111", 0);
    let (verdicts, _) = run(snap, vec![verify(&id, "111111", true)]);
    assert_eq!(answer(&verdicts[0])["outcome"], "invalid_code", "expired");
}

#[test]
fn send_new_code_ends_the_code_a_retry_replaced_too() {
    let mut snap = snapshot();
    let id = pending(&mut snap, "u1", "login", "222222");
    with_previous_code(&mut snap, &id, "111111", 60);
    let resend =
        HotEvent::Resend(serde_json::from_value(json!({"challenge_id": id})).expect("valid"));
    let (verdicts, writes) = run(snap, vec![resend, verify(&id, "111111", true)]);
    assert_eq!(answer(&verdicts[1])["outcome"], "invalid_code");
    let update = &writes.challenge_updates[0];
    assert!(update.row.previous_code_hash.is_none() && update.clear_hash);
}
