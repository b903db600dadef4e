//! Starting a code send: the send limits, then a queued delivery that the
//! engine turns into an email with a freshly minted code.
//!
//! Limits (all settings): the user's lockout after consecutive failures, at
//! most N codes per user per window and M per recipient per window. Every
//! requested send counts (sent, queued, or replaced by a newer one before
//! going out), so hammering "Send New Code" cannot get around them. They
//! hold across processes because a batch reads the counts under its users'
//! and addresses' locks (PostgreSQL advisory locks; SQLite's single
//! writer), and within a batch because each send is counted as it is
//! decided ([`Overlay::count_send`]).

use email2fa_workers::deliveries::NewDelivery;

use super::EventError;
use super::batch::{Overlay, Security, Window};
use crate::settings::LimitSettings;
use crate::store::{Challenge, Timestamp};

/// Seconds from `now` until `at` (at least 1), for `Retry-After`.
pub fn seconds_until(at: Timestamp, now: Timestamp) -> u64 {
    u64::try_from((at.unix_seconds() - now.unix_seconds()).max(1)).unwrap_or(1)
}

/// Whether one more code may go to this user and address: the lockout
/// first, then the user's window, then the address's.
pub fn send_verdict(
    limits: &LimitSettings,
    security: Security,
    user: Window,
    recipient: Window,
    now: Timestamp,
) -> Result<(), EventError> {
    let failures = security.failures;
    if failures >= limits.lockout_failures
        && let Some(last) = security.last_failure_at
    {
        let until = last.plus_seconds(limits.lockout_seconds);
        if until > now {
            return Err(EventError::RateLimited {
                retry_after: seconds_until(until, now),
                detail: format!(
                    "{failures} wrong codes in a row: new codes are paused for this user"
                ),
            });
        }
    }
    if user.count >= limits.codes_per_user {
        let free = user
            .oldest
            .unwrap_or(now)
            .plus_seconds(limits.user_window_seconds);
        return Err(EventError::RateLimited {
            retry_after: seconds_until(free, now),
            detail: format!(
                "at most {} codes per user per {} minutes",
                limits.codes_per_user,
                limits.user_window_seconds / 60
            ),
        });
    }
    if recipient.count >= limits.codes_per_recipient {
        let free = recipient
            .oldest
            .unwrap_or(now)
            .plus_seconds(limits.recipient_window_seconds);
        return Err(EventError::RateLimited {
            retry_after: seconds_until(free, now),
            detail: format!(
                "at most {} codes per address per {} minutes",
                limits.codes_per_recipient,
                limits.recipient_window_seconds / 60
            ),
        });
    }
    Ok(())
}

/// Checks the limits for a code to `challenge`'s user and address.
pub fn check_limits(overlay: &Overlay<'_>, challenge: &Challenge) -> Result<(), EventError> {
    let tenant = challenge.tenant_id.as_str();
    let security = overlay.security(tenant, &challenge.user_id);
    let (user, recipient) = overlay.windows(tenant, &challenge.user_id, &challenge.email);
    send_verdict(
        &overlay.config.limits,
        security,
        user,
        recipient,
        overlay.now,
    )
}

/// Queues a code email for `challenge` (the limits were checked) and counts
/// it; returns the delivery id.
pub fn queue_code(overlay: &mut Overlay<'_>, challenge: &Challenge) -> String {
    let now = overlay.now;
    let delivery = NewDelivery {
        id: email2fa_workers::deliveries::new_delivery_id(),
        tenant_id: challenge.tenant_id.clone(),
        kind: if challenge.purpose == "enrollment" {
            "enrollment_code"
        } else {
            "login_code"
        },
        user_id: challenge.user_id.clone(),
        recipient: challenge.email.clone(),
        user_name: challenge.user_name.clone(),
        locale: challenge.locale.clone(),
        role: challenge.role.clone(),
        challenge_id: Some(challenge.id.clone()),
        secondary_auth_provider_id: challenge.secondary_auth_provider_id.clone(),
        max_attempts: overlay.config.delivery_max_attempts,
        not_after: Some(now.plus_seconds(i64::from(challenge.code_ttl_seconds))),
        resent_from: None,
    };
    let id = delivery.id.clone();
    overlay.count_send(&challenge.tenant_id, &challenge.user_id, &challenge.email);
    overlay.writes().deliveries.push(delivery);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 5 codes per user per 15 min, 10 per address per hour, a lockout
    /// after 20 wrong codes for 15 min: the defaults.
    fn limits() -> LimitSettings {
        crate::settings::Settings::default().limits
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from(
            chrono::DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid"),
        )
    }

    fn window(count: i64, oldest: i64) -> Window {
        Window {
            count,
            oldest: Some(at(oldest)),
        }
    }

    fn retry_after(result: Result<(), EventError>) -> Option<u64> {
        match result {
            Err(EventError::RateLimited { retry_after, .. }) => Some(retry_after),
            _ => None,
        }
    }

    #[test]
    fn a_send_below_every_limit_is_allowed() {
        let verdict = send_verdict(
            &limits(),
            Security::default(),
            window(4, 0),
            window(9, 0),
            at(10),
        );
        assert!(verdict.is_ok());
    }

    #[test]
    fn the_user_window_frees_a_slot_when_its_oldest_send_leaves_it() {
        let verdict = send_verdict(
            &limits(),
            Security::default(),
            window(5, 100),
            Window::default(),
            at(400),
        );
        assert_eq!(retry_after(verdict), Some(600));
    }

    #[test]
    fn the_address_window_is_checked_after_the_users() {
        let verdict = send_verdict(
            &limits(),
            Security::default(),
            window(1, 0),
            window(10, 0),
            at(3000),
        );
        assert_eq!(retry_after(verdict), Some(600));
    }

    #[test]
    fn a_streak_of_wrong_codes_pauses_sends_until_the_lockout_ends() {
        let locked = Security {
            failures: 20,
            last_failure_at: Some(at(0)),
            stored: true,
        };
        let verdict = send_verdict(
            &limits(),
            locked,
            Window::default(),
            Window::default(),
            at(100),
        );
        assert_eq!(retry_after(verdict), Some(800));
        let later = send_verdict(
            &limits(),
            locked,
            Window::default(),
            Window::default(),
            at(900),
        );
        assert!(later.is_ok(), "the lockout ends after lockout_seconds");
        let short = Security {
            failures: 19,
            ..locked
        };
        assert!(
            send_verdict(
                &limits(),
                short,
                Window::default(),
                Window::default(),
                at(1)
            )
            .is_ok()
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let verdict = send_verdict(
            &limits(),
            Security::default(),
            window(5, -900),
            Window::default(),
            at(0),
        );
        assert_eq!(retry_after(verdict), Some(1));
    }
}
