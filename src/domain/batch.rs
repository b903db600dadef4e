//! The hot events, decided a batch at a time without I/O.
//!
//! `enrollment.started`, `login.started`, the two verifies and
//! `challenge.resend` make up nearly all of the traffic. The ingress groups
//! concurrent ones into one transaction ([`crate::ingest`]): the store reads
//! everything the batch needs into a [`Snapshot`] (a few set-based
//! statements), [`plan`] decides every webhook in arrival order in plain
//! code, and the store writes the resulting [`Writes`] with one set-based
//! statement per table. Each decision sees the effects of the ones before
//! it in the same batch (a second login of the same user supersedes the
//! first's challenge and counts its send against the limits), because
//! [`Overlay`] applies them to the snapshot as it goes.
//!
//! A refused webhook changes nothing: each event checks everything that can
//! refuse it before it applies its first change.

use std::collections::{HashMap, HashSet};

#[cfg(test)]
mod tests;

use email2fa_workers::address::limit_key;
use email2fa_workers::deliveries::NewDelivery;
use serde::Serialize;

use super::{DomainConfig, EventError};
use crate::crypto::KeyedHasher;
use crate::events::{ChallengeResend, EnrollmentStarted, EventType, LoginStarted, Verify};
use crate::store::{
    Challenge, Factor, SecondaryAuthProviderRow, TenantSettings, Timestamp, TrustedDevice,
};

/// A `(tenant, id)` pair: challenges, users, receipts, addresses.
pub type Key = (String, String);

/// One hot event, parsed and validated.
#[derive(Debug)]
pub enum HotEvent {
    /// "Add" → "Send Code".
    EnrollmentStarted(EnrollmentStarted),
    /// A login reached the 2FA step; `token_hash` is the keyed hash of the
    /// trust cookie, if one was sent.
    LoginStarted {
        /// The event.
        event: LoginStarted,
        /// Keyed hash of `event.trust_token`.
        token_hash: Option<Vec<u8>>,
    },
    /// "Verify" on the enrollment (`login: false`) or login screen.
    Verify {
        /// The event.
        event: Verify,
        /// Which screen.
        login: bool,
    },
    /// "Send New Code".
    Resend(ChallengeResend),
}

impl HotEvent {
    /// The event type it came as.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::EnrollmentStarted(_) => EventType::EnrollmentStarted,
            Self::LoginStarted { .. } => EventType::LoginStarted,
            Self::Verify { login: false, .. } => EventType::EnrollmentVerify,
            Self::Verify { login: true, .. } => EventType::LoginVerify,
            Self::Resend(_) => EventType::ChallengeResend,
        }
    }

    /// The user it names (the two started events).
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Self::EnrollmentStarted(e) => Some(&e.user.id),
            Self::LoginStarted { event, .. } => Some(&event.user.id),
            _ => None,
        }
    }

    /// The challenge it names (verifies and resends).
    pub fn challenge_id(&self) -> Option<&str> {
        match self {
            Self::Verify { event, .. } => Some(&event.challenge_id),
            Self::Resend(e) => Some(&e.challenge_id),
            _ => None,
        }
    }
}

/// One webhook of a batch.
#[derive(Debug)]
pub struct HotItem {
    /// The tenant it was signed for.
    pub tenant_id: String,
    /// Its `webhook-id`.
    pub webhook_id: String,
    /// SHA-256 of its body (idempotency).
    pub body_sha256: Vec<u8>,
    /// The event.
    pub event: HotEvent,
}

/// A tenant's settings and secondary auth providers (oldest first: the
/// first is the default).
#[derive(Debug, Clone)]
pub struct TenantState {
    /// The Services Manager's settings.
    pub settings: TenantSettings,
    /// Secondary auth providers, in `created_at, id` order.
    pub providers: Vec<SecondaryAuthProviderRow>,
}

/// Code sends in a limit window: how many, and the oldest one's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Sends in the window.
    pub count: i64,
    /// The oldest of them (when the window frees a slot).
    pub oldest: Option<Timestamp>,
}

impl Window {
    fn add(&mut self, at: Timestamp) {
        self.count += 1;
        self.oldest = Some(self.oldest.map_or(at, |oldest| oldest.min(at)));
    }
}

/// A user's streak of wrong codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Security {
    /// Wrong codes in a row.
    pub failures: i32,
    /// The last one's time.
    pub last_failure_at: Option<Timestamp>,
    /// Whether the row exists (a reset only updates an existing row).
    pub stored: bool,
}

/// A webhook id seen before, with its first answer.
#[derive(Debug, Clone)]
pub struct SeenReceipt {
    /// SHA-256 of the body it answered.
    pub body_sha256: Vec<u8>,
    /// The answer's status.
    pub status: u16,
    /// The answer (opened).
    pub answer: Vec<u8>,
}

/// Everything a batch reads, keyed for lookup.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Settings and providers per tenant.
    pub tenants: HashMap<String, TenantState>,
    /// Challenges named by the batch, and the pending ones of its users.
    pub challenges: HashMap<Key, Challenge>,
    /// Factors per user, oldest first.
    pub factors: HashMap<Key, Vec<Factor>>,
    /// Wrong-code streaks per user (absent: none).
    pub security: HashMap<Key, Security>,
    /// Trusted devices by `(tenant, token hash)`.
    pub devices: HashMap<(String, Vec<u8>), TrustedDevice>,
    /// Webhook ids answered before.
    pub receipts: HashMap<Key, SeenReceipt>,
    /// Code sends per user in the user window.
    pub user_sends: HashMap<Key, Window>,
    /// Code sends per address in the address window.
    pub recipient_sends: HashMap<Key, Window>,
}

/// Ids and secrets a batch draws. A trait so that tests can draw them
/// deterministically.
pub trait Mint: Send {
    /// A new ULID for a row.
    fn id(&mut self) -> String;
    /// A new challenge id carrying the user's key ([`super::keys`]).
    fn challenge_id(&mut self, tenant_id: &str, user_id: &str) -> String;
    /// A new trust token (shown once).
    fn trust_token(&mut self) -> String;
}

/// The real [`Mint`]: ULIDs and the CSPRNG.
#[derive(Debug, Default)]
pub struct RandomMint;

impl Mint for RandomMint {
    fn id(&mut self) -> String {
        ulid::Ulid::generate().to_string()
    }
    fn challenge_id(&mut self, tenant_id: &str, user_id: &str) -> String {
        super::keys::challenge_id(super::keys::user_key(tenant_id, user_id))
    }
    fn trust_token(&mut self) -> String {
        crate::crypto::new_trust_token()
    }
}

/// What a batch decides for one webhook.
#[derive(Debug)]
pub enum Verdict {
    /// Done: answer 200 with these bytes (its writes are in [`Writes`]).
    Answer(Vec<u8>),
    /// Seen before: answer this again (`idempotent-replayed: true`).
    Replay {
        /// The first answer's status.
        status: u16,
        /// The first answer.
        answer: Vec<u8>,
    },
    /// Refused; nothing of it is written.
    Refused(EventError),
    /// Its challenge carries another user's key: decide it again, under
    /// the lock of this user key.
    Retry(u32),
}

/// A login decision row.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionRow {
    /// Owner.
    pub tenant_id: String,
    /// ULID.
    pub id: String,
    /// The host's user id.
    pub user_id: String,
    /// `admin` or `customer`.
    pub role: &'static str,
    /// `allow`, `challenge` or `enroll_required`.
    pub decision: &'static str,
    /// Why.
    pub reason: &'static str,
    /// The challenge it opened.
    pub challenge_id: Option<String>,
    /// The browser's address.
    pub ip: Option<String>,
    /// The browser's user agent.
    pub user_agent: Option<String>,
    /// When.
    pub created_at: Timestamp,
}

/// An audit event row (never a code or a token).
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Owner.
    pub tenant_id: String,
    /// ULID.
    pub id: String,
    /// The user it concerns.
    pub user_id: Option<String>,
    /// What happened.
    pub event: &'static str,
    /// JSON detail.
    pub detail: String,
    /// When.
    pub created_at: Timestamp,
}

/// A webhook's receipt with its answer.
#[derive(Debug, Clone)]
pub struct ReceiptRow {
    /// Owner.
    pub tenant_id: String,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// SHA-256 of the body.
    pub body_sha256: Vec<u8>,
    /// Its event type.
    pub event_type: &'static str,
    /// The answer (sealed by the store).
    pub answer: Vec<u8>,
    /// When it arrived.
    pub received_at: Timestamp,
}

/// The final state of a challenge that existed before the batch, and what
/// it was read as (the write checks it is still so).
#[derive(Debug, Clone)]
pub struct ChallengeUpdate {
    /// The final row.
    pub row: Challenge,
    /// The status it was read with.
    pub expected_status: String,
    /// The wrong tries it was read with.
    pub expected_attempts: i32,
    /// Whether the code hashes are dropped (the current and the previous).
    pub clear_hash: bool,
    /// Whether the current code's expiry and delivery are dropped too (a
    /// new send replaced it).
    pub clear_send: bool,
}

/// A user's wrong-code streak to store.
#[derive(Debug, Clone)]
pub struct SecurityRow {
    /// Owner.
    pub tenant_id: String,
    /// The user.
    pub user_id: String,
    /// Wrong codes in a row.
    pub failures: i32,
    /// The last one's time.
    pub last_failure_at: Option<Timestamp>,
}

/// Everything a batch writes, one list per table.
#[derive(Debug, Default)]
pub struct Writes {
    /// Receipts of the answered webhooks.
    pub receipts: Vec<ReceiptRow>,
    /// New challenges, in their final state.
    pub challenges: Vec<Challenge>,
    /// Changed challenges that existed before.
    pub challenge_updates: Vec<ChallengeUpdate>,
    /// New deliveries (their jobs are pushed with the batch).
    pub deliveries: Vec<NewDelivery>,
    /// Login decisions.
    pub decisions: Vec<DecisionRow>,
    /// Audit events.
    pub audits: Vec<AuditRow>,
    /// New factors.
    pub factors: Vec<Factor>,
    /// New trusted devices.
    pub devices: Vec<TrustedDevice>,
    /// Trusted devices used for a login: `(tenant, id)`.
    pub devices_used: Vec<(String, String)>,
    /// Changed wrong-code streaks.
    pub security: Vec<SecurityRow>,
}

impl Writes {
    /// The email jobs to push: one per new delivery.
    pub fn job_ids(&self) -> Vec<String> {
        self.deliveries.iter().map(|d| d.id.clone()).collect()
    }
}

/// The batch's view while it decides: the snapshot with the effects of the
/// webhooks decided so far, and what they will write.
pub struct Overlay<'a> {
    pub(super) snap: Snapshot,
    pub(super) config: &'a DomainConfig,
    pub(super) hasher: &'a KeyedHasher,
    pub(super) mint: &'a mut dyn Mint,
    /// The batch's time.
    pub now: Timestamp,
    writes: Writes,
    new_challenges: Vec<Key>,
    read_as: HashMap<Key, (String, i32)>,
    cleared: HashMap<Key, (bool, bool)>,
    security_changed: HashSet<Key>,
}

impl<'a> Overlay<'a> {
    /// A view over `snap` at `now`.
    pub fn new(
        snap: Snapshot,
        config: &'a DomainConfig,
        hasher: &'a KeyedHasher,
        mint: &'a mut dyn Mint,
        now: Timestamp,
    ) -> Self {
        Self {
            snap,
            config,
            hasher,
            mint,
            now,
            writes: Writes::default(),
            new_challenges: Vec::new(),
            read_as: HashMap::new(),
            cleared: HashMap::new(),
            security_changed: HashSet::new(),
        }
    }

    /// A tenant's settings and providers.
    pub(super) fn tenant(&self, tenant_id: &str) -> Result<&TenantState, EventError> {
        self.snap
            .tenants
            .get(tenant_id)
            .ok_or(EventError::Store(crate::store::StoreError::NotFound))
    }

    /// A user's factors, oldest first.
    pub(super) fn factors(&self, tenant_id: &str, user_id: &str) -> &[Factor] {
        self.snap
            .factors
            .get(&key(tenant_id, user_id))
            .map_or(&[], Vec::as_slice)
    }

    /// A challenge as the batch sees it now.
    pub(super) fn challenge(&self, tenant_id: &str, id: &str) -> Option<&Challenge> {
        self.snap.challenges.get(&key(tenant_id, id))
    }

    /// A user's wrong-code streak.
    pub(super) fn security(&self, tenant_id: &str, user_id: &str) -> Security {
        self.snap
            .security
            .get(&key(tenant_id, user_id))
            .copied()
            .unwrap_or_default()
    }

    /// Code sends of a user and to an address in their windows.
    pub(super) fn windows(
        &self,
        tenant_id: &str,
        user_id: &str,
        recipient: &str,
    ) -> (Window, Window) {
        let user = self.snap.user_sends.get(&key(tenant_id, user_id));
        let to = self
            .snap
            .recipient_sends
            .get(&key(tenant_id, &limit_key(recipient)));
        (
            user.copied().unwrap_or_default(),
            to.copied().unwrap_or_default(),
        )
    }

    /// A live trusted device of this user with this token hash.
    pub(super) fn trusted_device(
        &self,
        tenant_id: &str,
        user_id: &str,
        hash: &[u8],
    ) -> Option<&TrustedDevice> {
        self.snap
            .devices
            .get(&(tenant_id.to_string(), hash.to_vec()))
            .filter(|d| d.user_id == user_id && d.revoked_at.is_none() && d.expires_at > self.now)
    }

    /// Changes a challenge (new or read), remembering what it was read as.
    pub(super) fn update_challenge(
        &mut self,
        tenant_id: &str,
        id: &str,
        change: impl FnOnce(&mut Challenge),
    ) {
        let k = key(tenant_id, id);
        let Some(challenge) = self.snap.challenges.get_mut(&k) else {
            return;
        };
        self.read_as
            .entry(k)
            .or_insert_with(|| (challenge.status.clone(), challenge.attempts));
        change(challenge);
        challenge.updated_at = self.now;
    }

    /// Drops a challenge's code hashes, the previous code's too (`send`:
    /// and the current code's expiry and delivery).
    pub(super) fn clear_code(&mut self, tenant_id: &str, id: &str, send: bool) {
        let k = key(tenant_id, id);
        if let Some(challenge) = self.snap.challenges.get_mut(&k) {
            challenge.code_hash = None;
            challenge.previous_code_hash = None;
            challenge.previous_code_expires_at = None;
            if send {
                challenge.code_expires_at = None;
                challenge.code_delivery_id = None;
            }
        }
        let entry = self.cleared.entry(k).or_default();
        entry.0 = true;
        entry.1 |= send;
    }

    /// Adds a new challenge.
    pub(super) fn insert_challenge(&mut self, challenge: Challenge) {
        let k = key(&challenge.tenant_id, &challenge.id);
        self.new_challenges.push(k.clone());
        self.snap.challenges.insert(k, challenge);
    }

    /// Ids of a user's pending challenges of one purpose.
    pub(super) fn pending_of(&self, tenant_id: &str, user_id: &str, purpose: &str) -> Vec<String> {
        self.snap
            .challenges
            .values()
            .filter(|c| {
                c.tenant_id == tenant_id
                    && c.user_id == user_id
                    && c.purpose == purpose
                    && c.status == "pending"
            })
            .map(|c| c.id.clone())
            .collect()
    }

    /// Counts a code send against both windows.
    pub(super) fn count_send(&mut self, tenant_id: &str, user_id: &str, recipient: &str) {
        let now = self.now;
        self.snap
            .user_sends
            .entry(key(tenant_id, user_id))
            .or_default()
            .add(now);
        self.snap
            .recipient_sends
            .entry(key(tenant_id, &limit_key(recipient)))
            .or_default()
            .add(now);
    }

    /// Sets a user's wrong-code streak.
    pub(super) fn set_security(
        &mut self,
        tenant_id: &str,
        user_id: &str,
        failures: i32,
        last: Option<Timestamp>,
    ) {
        let k = key(tenant_id, user_id);
        let entry = self.snap.security.entry(k.clone()).or_default();
        if !entry.stored && failures == 0 && !self.security_changed.contains(&k) {
            return; // a reset of a streak that was never stored
        }
        entry.failures = failures;
        entry.last_failure_at = last;
        self.security_changed.insert(k);
    }

    /// Adds a factor.
    pub(super) fn insert_factor(&mut self, factor: Factor) {
        self.snap
            .factors
            .entry(key(&factor.tenant_id, &factor.user_id))
            .or_default()
            .push(factor.clone());
        self.writes.factors.push(factor);
    }

    /// The writes being collected.
    pub(super) fn writes(&mut self) -> &mut Writes {
        &mut self.writes
    }

    /// Records an audit event.
    pub(super) fn audit(
        &mut self,
        tenant_id: &str,
        user_id: &str,
        event: crate::store::AuditEvent,
        detail: serde_json::Value,
    ) {
        let id = self.mint.id();
        self.writes.audits.push(AuditRow {
            tenant_id: tenant_id.to_string(),
            id,
            user_id: Some(user_id.to_string()),
            event: event.as_str(),
            detail: detail.to_string(),
            created_at: self.now,
        });
    }

    /// Finishes the batch: the writes, with the final state of every
    /// challenge and streak it touched.
    pub fn finish(mut self) -> Writes {
        let new: HashSet<Key> = self.new_challenges.iter().cloned().collect();
        for k in &self.new_challenges {
            if let Some(challenge) = self.snap.challenges.get(k) {
                self.writes.challenges.push(challenge.clone());
            }
        }
        let mut touched: Vec<&Key> = self
            .read_as
            .keys()
            .chain(self.cleared.keys())
            .filter(|k| !new.contains(*k))
            .collect();
        touched.sort();
        touched.dedup();
        for k in touched {
            let Some(row) = self.snap.challenges.get(k) else {
                continue;
            };
            let (expected_status, expected_attempts) = self
                .read_as
                .get(k)
                .cloned()
                .unwrap_or_else(|| (row.status.clone(), row.attempts));
            let (clear_hash, clear_send) = self.cleared.get(k).copied().unwrap_or_default();
            self.writes.challenge_updates.push(ChallengeUpdate {
                row: row.clone(),
                expected_status,
                expected_attempts,
                clear_hash,
                clear_send,
            });
        }
        let mut changed: Vec<&Key> = self.security_changed.iter().collect();
        changed.sort();
        for k in changed {
            let security = self.snap.security.get(k).copied().unwrap_or_default();
            self.writes.security.push(SecurityRow {
                tenant_id: k.0.clone(),
                user_id: k.1.clone(),
                failures: security.failures,
                last_failure_at: security.last_failure_at,
            });
        }
        self.writes
    }
}

/// A `(tenant, id)` key.
pub fn key(tenant_id: &str, id: &str) -> Key {
    (tenant_id.to_string(), id.to_string())
}

/// The users and addresses whose code sends a batch must count (under
/// their locks): those of the started events, and of the resends' challenges.
/// Logins count their user's first factor's address. Addresses are given
/// as the limit compares them ([`limit_key`]), as are the keys of
/// [`Snapshot::recipient_sends`].
pub fn send_targets(items: &[&HotItem], snap: &Snapshot) -> (Vec<Key>, Vec<Key>) {
    let mut users = Vec::new();
    let mut recipients = Vec::new();
    for item in items {
        let tenant = item.tenant_id.as_str();
        let target = match &item.event {
            HotEvent::EnrollmentStarted(e) => Some((e.user.id.clone(), e.address().to_string())),
            HotEvent::LoginStarted { event, .. } => Some((
                event.user.id.clone(),
                snap.factors
                    .get(&key(tenant, &event.user.id))
                    .and_then(|f| f.first())
                    .map(|f| f.email.clone())
                    .unwrap_or_default(),
            )),
            HotEvent::Resend(e) => snap
                .challenges
                .get(&key(tenant, &e.challenge_id))
                .map(|c| (c.user_id.clone(), c.email.clone())),
            HotEvent::Verify { .. } => None,
        };
        if let Some((user, to)) = target {
            users.push(key(tenant, &user));
            if !to.is_empty() {
                recipients.push(key(tenant, &limit_key(&to)));
            }
        }
    }
    users.sort();
    users.dedup();
    recipients.sort();
    recipients.dedup();
    (users, recipients)
}

/// Decides a batch in arrival order. Returns each webhook's verdict and
/// what the batch writes. `lock_keys[i]` is the user key item `i` was
/// locked and routed under: a verify or resend whose challenge belongs to
/// a user of another key gets [`Verdict::Retry`] (only when `check_keys`,
/// i.e. where locks exist).
pub fn plan(
    items: &[&HotItem],
    lock_keys: &[u32],
    check_keys: bool,
    overlay: &mut Overlay<'_>,
) -> Vec<Verdict> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            if let Some(seen) = overlay
                .snap
                .receipts
                .get(&key(&item.tenant_id, &item.webhook_id))
            {
                return if seen.body_sha256 == item.body_sha256 {
                    Verdict::Replay {
                        status: seen.status,
                        answer: seen.answer.clone(),
                    }
                } else {
                    Verdict::Refused(EventError::WebhookIdConflict)
                };
            }
            if check_keys
                && let Some(id) = item.event.challenge_id()
                && let Some(c) = overlay.challenge(&item.tenant_id, id)
            {
                let owner = super::keys::user_key(&c.tenant_id, &c.user_id);
                if lock_keys.get(i) != Some(&owner) {
                    return Verdict::Retry(owner);
                }
            }
            match decide(item, overlay) {
                Ok(answer) => {
                    let receipt = ReceiptRow {
                        tenant_id: item.tenant_id.clone(),
                        webhook_id: item.webhook_id.clone(),
                        body_sha256: item.body_sha256.clone(),
                        event_type: item.event.event_type().as_str(),
                        answer: answer.clone(),
                        received_at: overlay.now,
                    };
                    overlay.writes().receipts.push(receipt);
                    Verdict::Answer(answer)
                }
                Err(error) => Verdict::Refused(error),
            }
        })
        .collect()
}

fn decide(item: &HotItem, overlay: &mut Overlay<'_>) -> Result<Vec<u8>, EventError> {
    let tenant = item.tenant_id.as_str();
    match &item.event {
        HotEvent::EnrollmentStarted(e) => json(super::enrollment::started(overlay, tenant, e)?),
        HotEvent::LoginStarted { event, token_hash } => json(super::login::started(
            overlay,
            tenant,
            event,
            token_hash.as_deref(),
        )?),
        HotEvent::Verify { event, login } => {
            json(super::verify::verify(overlay, tenant, event, *login)?)
        }
        HotEvent::Resend(e) => json(super::enrollment::resend(overlay, tenant, e)?),
    }
}

fn json<T: Serialize>(value: T) -> Result<Vec<u8>, EventError> {
    Ok(serde_json::to_vec(&value).expect("answers are plain structs with string keys"))
}
