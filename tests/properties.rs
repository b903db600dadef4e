//! Property tests of everything the ingress parses from a host: the
//! Standard Webhooks headers and signature check, the envelope, every
//! event's data, and the ingress's answer to garbage (the real service on
//! SQLite, and PostgreSQL when configured, as in `tests/webhooks.rs`).
//!
//! Each property runs a bounded number of cases in `cargo test` (see
//! [`cases::config`]); `PROPTEST_CASES=100000 cargo test --test properties` runs
//! every property that many times.

#[path = "../workers/tests/support/cases.rs"]
mod cases;

mod common;

use common::{TENANT, TestApp, TestResponse};
use email2fa::events::{
    ChallengeResend, EnrollmentStarted, Envelope, EnvelopeError, EventType, FieldError,
    LoginStarted, ProviderDeleted, SecondaryAuthProviderUpserted, ServiceProviderUpserted,
    SettingsUpdated, UserScoped, Verify, parse_data,
};
use email2fa::signature::{SignatureError, SignatureHeaders, sign, verify};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------- signatures

fn headers<'a>(id: &'a str, timestamp: &'a str, signature: &'a str) -> SignatureHeaders<'a> {
    SignatureHeaders {
        id: Some(id),
        timestamp: Some(timestamp),
        signature: Some(signature),
    }
}

/// A webhook id as a host might send one: 1–255 bytes.
fn webhook_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[!-~]{1,64}",
        1 => "[!-~]{255}",
        1 => "\\PC{1,40}".prop_filter("1-255 bytes", |id| id.len() <= 255),
    ]
}

/// A signed call within the tolerance: (key, id, body, now, tolerance, timestamp).
fn signed_call() -> impl Strategy<Value = (Vec<u8>, String, Vec<u8>, i64, i64, i64)> {
    (
        vec(any::<u8>(), 0..64),
        webhook_id(),
        vec(any::<u8>(), 0..2048),
        0i64..=4_102_444_800,
        1i64..=3600,
    )
        .prop_flat_map(|(key, id, body, now, tolerance)| {
            (-tolerance..=tolerance).prop_map(move |skew| {
                (
                    key.clone(),
                    id.clone(),
                    body.clone(),
                    now,
                    tolerance,
                    now + skew,
                )
            })
        })
}

/// A timestamp outside the tolerance around `now`: near its edges, far
/// away, or at the extremes of i64.
fn out_of_tolerance() -> impl Strategy<Value = (i64, i64, i64)> {
    (
        any::<i64>(),
        1i64..=3600,
        0usize..6,
        any::<i64>(),
        1i64..100_000,
    )
        .prop_filter_map(
            "inside the tolerance",
            |(now, tolerance, mode, anything, beyond)| {
                let near = tolerance + beyond;
                let timestamp = match mode {
                    0 => now.checked_add(near)?,
                    1 => now.checked_sub(near)?,
                    2 => i64::MIN,
                    3 => i64::MAX,
                    4 => -now.checked_abs()?,
                    _ => anything,
                };
                let distance = (i128::from(timestamp) - i128::from(now)).abs();
                (distance > i128::from(tolerance)).then_some((now, tolerance, timestamp))
            },
        )
}

/// Header text a sender, a proxy or an attacker might send.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        2 => "[ -~]{0,300}",
        1 => "-?[0-9]{1,30}",
        1 => vec("v[0-9],[A-Za-z0-9+/=!-]{0,60}", 0..200).prop_map(|parts| parts.join(" ")),
        1 => (1usize..5000).prop_map(|n| "v1,".repeat(n)),
        1 => (1usize..20_000).prop_map(|n| format!("v1,{}", "A".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(cases::config(500))]

    /// A correctly signed call within the tolerance verifies, also when its
    /// signature is one of many in the header.
    #[test]
    fn a_correctly_signed_call_within_the_tolerance_verifies(
        (key, id, body, now, tolerance, timestamp) in signed_call(),
        others in vec("v1,[A-Za-z0-9+/]{43}=", 0..5),
        position in any::<usize>(),
    ) {
        let mut signatures = others;
        let at = position % (signatures.len() + 1);
        signatures.insert(at, sign(&key, &id, timestamp, &body));
        let header = signatures.join(" ");
        let text = timestamp.to_string();
        let verdict = verify(headers(&id, &text, &header), &body, &[key], now, tolerance);
        prop_assert_eq!(verdict, Ok((id.as_str(), timestamp)));
    }

    /// Changing any one byte of the body, the id, the timestamp or the
    /// signature, or verifying with another key (one byte changed: HMAC
    /// pads short keys with zeros, so an appended zero byte would be the
    /// same key), refuses the call.
    #[test]
    fn any_single_byte_change_refuses_the_call(
        (key, id, body, now, tolerance, timestamp) in signed_call(),
        field in 0usize..5,
        position in any::<usize>(),
        replacement in any::<u8>(),
        printable in 0x21u8..0x7f,
    ) {
        let id = if id.is_ascii() { id } else { "msg_1".to_owned() };
        let mut body = body;
        let mut id = id.into_bytes();
        let mut text = timestamp.to_string().into_bytes();
        let mut signature = sign(&key, std::str::from_utf8(&id).unwrap_or_default(), timestamp, &body)
            .into_bytes();
        let mut key = key;
        // Text headers stay text: a printable ASCII byte for a printable one.
        let (part, new) = match field {
            0 => (&mut body, replacement),
            1 => (&mut id, printable),
            2 => (&mut text, printable),
            3 => (&mut signature, printable),
            _ => (&mut key, replacement),
        };
        prop_assume!(!part.is_empty());
        let at = position % part.len();
        prop_assume!(part[at] != new);
        part[at] = new;
        let text_of = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).expect("ASCII stays UTF-8");
        let (id, text, signature) = (text_of(&id), text_of(&text), text_of(&signature));
        let verdict = verify(headers(&id, &text, &signature), &body, &[key], now, tolerance);
        prop_assert!(verdict.is_err(), "field {field} changed, still {verdict:?}");
    }
}

proptest! {
    #![proptest_config(cases::config(500))]

    /// A correctly signed call outside the tolerance, however far and in
    /// whichever direction (i64::MIN and i64::MAX included), is refused as
    /// out of tolerance.
    #[test]
    fn any_timestamp_outside_the_tolerance_is_refused_as_such(
        (now, tolerance, timestamp) in out_of_tolerance(),
        key in vec(any::<u8>(), 1..40),
        body in vec(any::<u8>(), 0..64),
    ) {
        let signature = sign(&key, "msg_1", timestamp, &body);
        let text = timestamp.to_string();
        let verdict = verify(headers("msg_1", &text, &signature), &body, &[key], now, tolerance);
        prop_assert!(
            matches!(verdict, Err(SignatureError::OutOfTolerance { .. })),
            "timestamp {timestamp} at {now} ± {tolerance}: {verdict:?}"
        );
    }

    /// Arbitrary header values never panic and never verify; a missing
    /// header is named, and only a correctly signed call learns that its
    /// clock is off.
    #[test]
    fn arbitrary_signature_headers_are_refused_with_the_documented_error(
        id in proptest::option::of(header_text()),
        timestamp in proptest::option::of(header_text()),
        signature in proptest::option::of(header_text()),
        body in vec(any::<u8>(), 0..256),
        now in any::<i64>(),
    ) {
        let signed = SignatureHeaders {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
        };
        let verdict = verify(signed, &body, &[b"key".to_vec()], now, 300);
        let id_ok = id.as_ref().is_some_and(|id| (1..=255).contains(&id.len()));
        let timestamp_ok = timestamp.as_ref().is_some_and(|t| t.parse::<i64>().is_ok());
        let expected_header = match () {
            _ if !id_ok => Some("webhook-id"),
            _ if !timestamp_ok => Some("webhook-timestamp"),
            _ if signature.is_none() => Some("webhook-signature"),
            _ => None,
        };
        match (verdict, expected_header) {
            (Err(SignatureError::BadHeader(named)), Some(header)) => prop_assert_eq!(named, header),
            (Err(SignatureError::BadHeader("webhook-signature") | SignatureError::NoMatch), None) => {}
            (verdict, _) => prop_assert!(false, "{verdict:?}, expected {expected_header:?}"),
        }
    }

    /// A `whsec_` secret of any text decodes or is refused, never panics;
    /// a generated one decodes to its 32 bytes.
    #[test]
    fn signing_secrets_of_any_text_decode_or_are_refused(text in any::<String>()) {
        let _ = email2fa::crypto::decode_signing_secret(&text);
        let fresh = email2fa::crypto::new_signing_secret();
        prop_assert_eq!(email2fa::crypto::decode_signing_secret(&fresh).map(|k| k.len()), Some(32));
    }
}

// ------------------------------------------------------------------ envelope

/// Field names of the contract, so that arbitrary objects often look like
/// (parts of) real events.
const FIELDS: [&str; 30] = [
    "type",
    "timestamp",
    "data",
    "user",
    "id",
    "role",
    "email",
    "name",
    "locale",
    "challenge_id",
    "code",
    "trust_device",
    "device_label",
    "trust_token",
    "ip",
    "user_agent",
    "user_id",
    "factor_id",
    "device_id",
    "title",
    "kind",
    "smtp",
    "host",
    "port",
    "security",
    "from_address",
    "from_name",
    "service_provider_id",
    "code_length",
    "secondary_auth_provider_id",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Words that mean something somewhere in the contract.
fn word() -> impl Strategy<Value = String> {
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    prop_oneof![
        proptest::sample::select(types).prop_map(str::to_owned),
        proptest::sample::select(vec![
            "admin",
            "customer",
            "smtp",
            "starttls",
            "tls",
            "none",
            "jane@example.com",
            "x@EXAMPLE.COM",
            "\"x<a@b>\"@example.com",
            "de-CH",
            "2026-11-28T07:00:00Z",
            "a\u{0}b",
            "a\r\nBcc: x@evil.test",
            "",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Any JSON value, biased towards the contract's names and values.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0i64..4000).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::String),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(key(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What the contract says of an envelope: 400 `malformed_payload` unless
/// it is an object of only `type` (a string), `data` (an object) and an
/// optional RFC 3339 `timestamp`; then 400 `unknown_event_type` unless
/// `type` names an event.
fn expected_envelope(value: &Value) -> Result<EventType, &'static str> {
    let object = value.as_object().ok_or("malformed")?;
    if object
        .keys()
        .any(|k| !["type", "timestamp", "data"].contains(&k.as_str()))
    {
        return Err("malformed");
    }
    let name = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or("malformed")?;
    object
        .get("data")
        .and_then(Value::as_object)
        .ok_or("malformed")?;
    match object.get("timestamp") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {}
        Some(_) => return Err("malformed"),
    }
    EventType::parse(name).ok_or("unknown")
}

fn envelope_verdict(body: &[u8]) -> Result<EventType, &'static str> {
    match Envelope::parse(body) {
        Ok(envelope) => Ok(envelope.event_type),
        Err(EnvelopeError::Malformed(_)) => Err("malformed"),
        Err(EnvelopeError::UnknownType(_)) => Err("unknown"),
    }
}

/// An envelope-shaped value: mostly the three fields, sometimes more.
fn envelope_value() -> impl Strategy<Value = Value> {
    (
        prop_oneof![word().prop_map(Value::String), json_value()],
        proptest::option::of(prop_oneof![
            Just(json!("2026-11-28T07:00:00Z")),
            Just(json!("2026-11-28T07:00:00+25:00")),
            json_value()
        ]),
        prop_oneof![3 => data_value(), 1 => json_value()],
        proptest::option::of((key(), json_value())),
    )
        .prop_map(|(event_type, timestamp, data, extra)| {
            let mut object = Map::new();
            object.insert("type".into(), event_type);
            if let Some(timestamp) = timestamp {
                object.insert("timestamp".into(), timestamp);
            }
            object.insert("data".into(), data);
            if let Some((key, value)) = extra {
                object.insert(key, value);
            }
            Value::Object(object)
        })
}

/// A `data` object made of the contract's field names.
fn data_value() -> impl Strategy<Value = Value> {
    btree_map(key(), json_value(), 0..8).prop_map(|m| Value::Object(m.into_iter().collect()))
}

proptest! {
    #![proptest_config(cases::config(1000))]

    /// Arbitrary bytes never panic the envelope parser, and what is not
    /// JSON is malformed.
    #[test]
    fn arbitrary_bytes_are_a_malformed_envelope(body in vec(any::<u8>(), 0..512)) {
        let verdict = envelope_verdict(&body);
        if serde_json::from_slice::<Value>(&body).is_err() {
            prop_assert_eq!(verdict, Err("malformed"));
        }
    }

    /// Any JSON value is judged as the contract says: the three fields
    /// only (an unknown one is malformed), `data` an object, a known type.
    #[test]
    fn arbitrary_json_envelopes_are_judged_as_the_contract_says(
        value in prop_oneof![envelope_value(), json_value()],
    ) {
        let body = serde_json::to_vec(&value).expect("a value serialises");
        prop_assert_eq!(envelope_verdict(&body), expected_envelope(&value), "{}", value);
    }
}

// ------------------------------------------------------------- event data

/// Parses and validates `data` as the ingress does for `event_type`.
fn check_data(event_type: EventType, data: &RawValue) -> Result<(), Vec<FieldError>> {
    use EventType as T;
    match event_type {
        T::SettingsUpdated => parse_data::<SettingsUpdated>(data)?.validate(),
        T::ServiceProviderUpserted => parse_data::<ServiceProviderUpserted>(data)?.validate(),
        T::ServiceProviderDeleted | T::SecondaryAuthProviderDeleted => {
            parse_data::<ProviderDeleted>(data)?.validate()
        }
        T::SecondaryAuthProviderUpserted => {
            parse_data::<SecondaryAuthProviderUpserted>(data)?.validate()
        }
        T::EnrollmentStarted => parse_data::<EnrollmentStarted>(data)?.validate(),
        T::EnrollmentVerify => parse_data::<Verify>(data)?.validate(false),
        T::LoginVerify => parse_data::<Verify>(data)?.validate(true),
        T::LoginStarted => parse_data::<LoginStarted>(data)?.validate(),
        T::ChallengeResend => parse_data::<ChallengeResend>(data)?.validate(),
        T::FactorRemoved => parse_data::<UserScoped>(data)?.validate(Some("factor_id")),
        T::TrustedDevicesRevoked => parse_data::<UserScoped>(data)?.validate(Some("device_id")),
        T::UserStatus => parse_data::<UserScoped>(data)?.validate(None),
    }
}

fn raw(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("a value serialises")
}

/// Strings of accepted data that are only hashed or sealed, never stored
/// as text.
const NEVER_STORED_AS_TEXT: [&str; 3] = ["code", "trust_token", "password"];

/// Every string in `value` that may be stored as text, with its key.
fn stored_strings<'a>(key: &str, value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(text) if !NEVER_STORED_AS_TEXT.contains(&key) => out.push(text),
        Value::Array(items) => items.iter().for_each(|v| stored_strings(key, v, out)),
        Value::Object(fields) => fields.iter().for_each(|(k, v)| stored_strings(k, v, out)),
        _ => {}
    }
}

fn has_empty_key(value: &Value) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(k, v)| k.is_empty() || has_empty_key(v)),
        Value::Array(items) => items.iter().any(has_empty_key),
        _ => false,
    }
}

fn event_type() -> impl Strategy<Value = EventType> {
    proptest::sample::select(EventType::ALL.to_vec())
}

proptest! {
    #![proptest_config(cases::config(1000))]

    /// Any `data` for any event never panics; a refusal names each field
    /// and says what is wrong; what is accepted carries no NUL or other
    /// control character in any text that is stored.
    #[test]
    fn arbitrary_data_is_accepted_or_refused_field_by_field(
        event_type in event_type(),
        data in prop_oneof![data_value(), json_value()],
    ) {
        match check_data(event_type, &raw(&data)) {
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for error in errors {
                    prop_assert!(!error.message.is_empty(), "{error:?}");
                    // An unknown field is named by its own name, which may be "".
                    prop_assert!(!error.field.is_empty() || has_empty_key(&data), "{error:?}");
                }
            }
            Ok(()) => {
                let mut strings = Vec::new();
                stored_strings("", &data, &mut strings);
                for text in strings {
                    prop_assert!(
                        !text.chars().any(char::is_control),
                        "{} accepted {text:?} in {data}", event_type.as_str()
                    );
                }
            }
        }
    }
}

// ------------------------------------------------ valid events round-trip

/// Text a host might send for a name or title: no control characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\p{{Cc}}]{{1,{max}}}")).expect("a regex")
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[A-Za-z0-9_-]{1,40}", 1 => text(128)]
}

fn email() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._%+-]{0,10}[a-zA-Z0-9]@[a-zA-Z0-9]{1,10}\\.(example|EXAMPLE|test)"
        .prop_filter("dot-atom", |e| !e.contains("..") && !e.starts_with('.'))
}

fn user() -> impl Strategy<Value = Value> {
    (
        id(),
        proptest::sample::select(vec!["admin", "customer"]),
        proptest::option::of(email()),
        proptest::option::of(text(200)),
        proptest::option::of("[a-z]{2}([-_][A-Za-z]{2})?"),
    )
        .prop_map(|(id, role, email, name, locale)| {
            let mut user = json!({"id": id, "role": role});
            for (key, value) in [("email", email), ("name", name), ("locale", locale)] {
                if let Some(value) = value {
                    user[key] = json!(value);
                }
            }
            user
        })
}

/// A valid `data` object for an event type (what a well-behaved host sends).
fn valid_data() -> impl Strategy<Value = (EventType, Value)> {
    use EventType as T;
    let range = |min: i64, max: i64| proptest::option::of(min..=max);
    prop_oneof![
        (range(6, 10), range(60, 3600), range(1, 10), range(0, 600), range(0, 365), any::<bool>())
            .prop_map(|(length, ttl, attempts, cooldown, days, customers)| {
                (T::SettingsUpdated, json!({"code_length": length, "code_ttl_seconds": ttl,
                    "max_attempts": attempts, "resend_cooldown_seconds": cooldown,
                    "trust_device_days": days, "customer_2fa_allowed": customers}))
            }),
        (id(), text(200), "[a-z0-9.-]{1,30}", 1u16.., proptest::sample::select(vec!["starttls", "tls", "none"]),
            email(), proptest::option::of(text(100)))
            .prop_map(|(id, title, host, port, security, from, name)| {
                (T::ServiceProviderUpserted, json!({"id": id, "title": title, "kind": "smtp",
                    "smtp": {"host": host, "port": port, "security": security,
                             "from_address": from, "from_name": name}}))
            }),
        (id(), text(200), id()).prop_map(|(id, title, sp)| {
            (T::SecondaryAuthProviderUpserted, json!({"id": id, "title": title, "service_provider_id": sp}))
        }),
        (id(), any::<bool>()).prop_map(|(id, service)| {
            let t = if service { T::ServiceProviderDeleted } else { T::SecondaryAuthProviderDeleted };
            (t, json!({"id": id}))
        }),
        (user(), email()).prop_map(|(user, email)| (T::EnrollmentStarted, json!({"user": user, "email": email}))),
        (id(), "[0-9 -]{0,64}", any::<bool>(), proptest::option::of(text(200))).prop_map(|(challenge, code, login, label)| {
            if login {
                (T::LoginVerify, json!({"challenge_id": challenge, "code": code, "trust_device": label.is_some(), "device_label": label}))
            } else {
                (T::EnrollmentVerify, json!({"challenge_id": challenge, "code": code}))
            }
        }),
        (user(), proptest::option::of("[A-Za-z0-9_-]{1,64}"), proptest::option::of("[0-9a-f:.]{1,39}"), proptest::option::of(text(300)))
            .prop_map(|(user, token, ip, agent)| {
                (T::LoginStarted, json!({"user": user, "trust_token": token, "ip": ip, "user_agent": agent}))
            }),
        id().prop_map(|challenge| (T::ChallengeResend, json!({"challenge_id": challenge}))),
        (id(), proptest::option::of(id()), 0usize..3).prop_map(|(user, other, which)| {
            let (t, key) = [
                (T::FactorRemoved, "factor_id"),
                (T::TrustedDevicesRevoked, "device_id"),
                (T::UserStatus, "none"),
            ][which];
            let mut data = json!({"user_id": user});
            if let Some(other) = other.filter(|_| key != "none") {
                data[key] = json!(other);
            }
            (t, data)
        }),
    ]
}

/// Where in `data` an unknown field can go, as the dotted path of its
/// parent object ("" for `data` itself).
fn objects_in(value: &Value, path: &str, out: &mut Vec<String>) {
    if let Value::Object(fields) = value {
        out.push(path.to_owned());
        for (key, child) in fields {
            let child_path = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            objects_in(child, &child_path, out);
        }
    }
}

proptest! {
    #![proptest_config(cases::config(1000))]

    /// A valid event, enveloped and serialised, comes back as the same
    /// type and the same data, and its data is accepted.
    #[test]
    fn valid_events_round_trip_through_the_envelope(
        (event_type, data) in valid_data(),
        timestamp in proptest::option::of(Just("2026-11-28T07:00:00Z")),
    ) {
        let mut envelope = json!({"type": event_type.as_str(), "data": data});
        if let Some(timestamp) = timestamp {
            envelope["timestamp"] = json!(timestamp);
        }
        let body = serde_json::to_vec(&envelope).expect("serialises");
        let parsed = Envelope::parse(&body);
        prop_assert!(parsed.is_ok(), "{envelope}: {parsed:?}");
        let parsed = parsed.expect("checked");
        prop_assert_eq!(parsed.event_type, event_type);
        let back: Value = serde_json::from_str(parsed.data.get()).expect("data is JSON");
        prop_assert_eq!(&back, &data);
        prop_assert_eq!(check_data(event_type, parsed.data), Ok(()), "{}", data);
    }

    /// An unknown field anywhere in valid data is refused, naming it by its
    /// dotted path; one beside the envelope's fields is malformed.
    #[test]
    fn unknown_fields_are_refused_and_named(
        (event_type, data) in valid_data(),
        name in "[a-z][a-z_]{0,15}",
        which in any::<usize>(),
    ) {
        prop_assume!(!FIELDS.contains(&name.as_str()) && !name.starts_with("require_"));
        let mut places = Vec::new();
        objects_in(&data, "", &mut places);
        let parent = places[which % places.len()].clone();
        let mut data = data;
        let target = parent
            .split('.')
            .filter(|p| !p.is_empty())
            .fold(&mut data, |value, key| &mut value[key]);
        target[&name] = json!(1);
        let field = if parent.is_empty() { name.clone() } else { format!("{parent}.{name}") };
        let errors = check_data(event_type, &raw(&data)).expect_err("an unknown field");
        prop_assert!(errors.iter().any(|e| e.field == field), "{errors:?} for {field}");

        let envelope = json!({"type": event_type.as_str(), "data": data, name: 1});
        prop_assert_eq!(envelope_verdict(&serde_json::to_vec(&envelope).expect("json")), Err("malformed"));
    }
}

// ----------------------------------------------------- the ingress, in full

/// The ingress's answer, as the contract shapes it: 200 JSON, or a 4xx
/// problem+json whose `status` is the answer's and whose `code` is one of
/// the contract's; never a 5xx.
fn assert_contract_answer(answer: &TestResponse) -> Result<(), TestCaseError> {
    let content_type = answer.header("content-type").unwrap_or_default();
    let text = String::from_utf8_lossy(&answer.bytes).into_owned();
    if answer.status == 200 {
        prop_assert_eq!(content_type, "application/json", "{}", text);
        return Ok(());
    }
    prop_assert!(
        (400..500).contains(&answer.status),
        "{} {}",
        answer.status,
        text
    );
    prop_assert_eq!(content_type, "application/problem+json", "{}", text);
    let body: Value =
        serde_json::from_slice(&answer.bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(body["status"].as_u64(), Some(u64::from(answer.status)));
    prop_assert!(
        body["title"].is_string() && body["detail"].is_string(),
        "{}",
        text
    );
    prop_assert!(
        body["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{}",
        text
    );
    if answer.status == 422 {
        prop_assert!(
            body["errors"].as_array().is_some_and(|e| !e.is_empty()),
            "{}",
            text
        );
    }
    Ok(())
}

/// Runs `check` against the real service for each case of `strategy`: on
/// SQLite, and on PostgreSQL too when `EMAIL2FA_TEST_DATABASE_URL` is set
/// (PostgreSQL refuses NUL in text, so what reaches it unchecked shows).
fn against_the_service<S: Strategy>(
    cases: u32,
    strategy: S,
    check: impl Fn(&tokio::runtime::Runtime, &TestApp, S::Value) -> Result<(), TestCaseError>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let apps = runtime.block_on(async {
        let mut apps = vec![TestApp::sqlite().await];
        apps.extend(TestApp::postgres().await);
        for app in &apps {
            app.configure_mail(json!({"customer_2fa_allowed": true, "admin_2fa_allowed": true}))
                .await;
        }
        apps
    });
    for app in &apps {
        let mut runner = TestRunner::new(cases::config(cases));
        if let Err(error) = runner.run(&strategy, |value| check(&runtime, app, value)) {
            panic!("on {}: {error}", app.settings.database_url);
        }
    }
}

/// Signed garbage, envelopes with arbitrary data, and arbitrary signature
/// headers all get a contract answer from the running service: never a
/// 5xx, a panic or a non-problem error.
#[test]
fn the_ingress_answers_signed_garbage_with_a_4xx_problem() {
    let body = prop_oneof![
        vec(any::<u8>(), 0..256),
        envelope_value().prop_map(|v| serde_json::to_vec(&v).expect("json")),
        (event_type(), prop_oneof![data_value(), json_value()]).prop_map(|(t, data)| {
            serde_json::to_vec(&json!({"type": t.as_str(), "data": data})).expect("json")
        }),
    ];
    against_the_service(96, body, |runtime, app, body| {
        let id = format!("msg_{}", ulid::Ulid::generate());
        let answer = runtime.block_on(app.post_body(&id, &body));
        assert_contract_answer(&answer)?;
        if serde_json::from_slice::<Value>(&body).is_err() {
            prop_assert_eq!(answer.status, 400);
            prop_assert_eq!(&answer.json()["code"], "malformed_payload");
        }
        Ok(())
    });
}

/// Arbitrary (header-safe) signature headers on a valid event are 401
/// `invalid_signature`.
#[test]
fn the_ingress_refuses_arbitrary_signature_headers() {
    let header = proptest::option::of(prop_oneof![
        "[ -~]{0,300}",
        vec("v1,[A-Za-z0-9+/=]{0,60}", 0..100).prop_map(|parts| parts.join(" ")),
    ]);
    let headers = (header.clone(), header.clone(), header);
    against_the_service(48, headers, |runtime, app, (id, timestamp, signature)| {
        let named = [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        ];
        let headers: Vec<(&str, String)> = named
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
        let body = TestApp::envelope("user.status", json!({"user_id": "u1"}));
        let answer = runtime.block_on(app.post_raw(TENANT, &headers, body));
        assert_contract_answer(&answer)?;
        prop_assert_eq!(answer.status, 401);
        prop_assert_eq!(&answer.json()["code"], "invalid_signature");
        Ok(())
    });
}
