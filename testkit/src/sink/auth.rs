//! `AUTH PLAIN` (RFC 4616) and `AUTH LOGIN` over the plain connection, and
//! the little base64 decoding they need.

use std::io;
use std::sync::atomic::Ordering;

use super::session::{AUTH_FAILED, Conn, Line, NEED_EHLO, NESTED_MAIL, NOT_IMPLEMENTED, trim_crlf};

const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
const ALREADY_AUTHENTICATED: &str = "503 5.5.1 Already authenticated\r\n";
const UNKNOWN_MECHANISM: &str = "504 5.5.4 Unrecognized authentication type\r\n";
const CANCELLED: &str = "501 5.0.0 Authentication cancelled\r\n";
const UNDECODABLE: &str = "501 5.5.2 Cannot decode the response\r\n";
/// `AUTH PLAIN` without an initial response: an empty challenge.
const PLAIN_CHALLENGE: &str = "334 \r\n";
/// "Username:" and "Password:" in base64, the prompts LOGIN clients expect.
const USERNAME_CHALLENGE: &str = "334 VXNlcm5hbWU6\r\n";
const PASSWORD_CHALLENGE: &str = "334 UGFzc3dvcmQ6\r\n";

/// How an exchange ended, short of the connection failing.
enum Outcome {
    Success,
    Failure,
    Cancelled,
    Undecodable,
}

impl Conn<'_> {
    /// Answers `AUTH <mechanism> [initial-response]`.
    pub(super) async fn auth(&mut self, arg: &str) -> io::Result<()> {
        if !self.shared.auth_required() {
            return self.reply(NOT_IMPLEMENTED).await;
        }
        if !self.state.greeted {
            return self.reply(NEED_EHLO).await;
        }
        if self.state.authenticated {
            return self.reply(ALREADY_AUTHENTICATED).await;
        }
        if self.state.mail_from.is_some() {
            return self.reply(NESTED_MAIL).await;
        }
        let (mechanism, initial) = match arg.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim().as_bytes())),
            None => (arg, None),
        };
        let outcome = if mechanism.eq_ignore_ascii_case("PLAIN") {
            self.plain(initial).await?
        } else if mechanism.eq_ignore_ascii_case("LOGIN") {
            self.login(initial).await?
        } else {
            return self.reply(UNKNOWN_MECHANISM).await;
        };
        match outcome {
            Outcome::Success => {
                self.state.authenticated = true;
                self.reply(AUTH_OK).await
            }
            Outcome::Failure => {
                let counter = &self.shared.counters.auth_fails;
                counter.fetch_add(1, Ordering::SeqCst);
                self.reply(AUTH_FAILED).await
            }
            Outcome::Cancelled => self.reply(CANCELLED).await,
            Outcome::Undecodable => self.reply(UNDECODABLE).await,
        }
    }

    /// `\0user\0password` (an authorization identity before the first NUL is
    /// allowed and ignored).
    async fn plain(&mut self, initial: Option<&[u8]>) -> io::Result<Outcome> {
        let decoded = match initial {
            Some(response) => decode_response(response),
            None => decode_response(&self.challenge(PLAIN_CHALLENGE).await?),
        };
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(outcome) => return Ok(outcome),
        };
        let mut parts = decoded.split(|&byte| byte == 0);
        let (Some(_), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(Outcome::Undecodable);
        };
        Ok(self.verify(user, password))
    }

    /// The user name (possibly as the initial response), then the password,
    /// each in answer to its prompt.
    async fn login(&mut self, initial: Option<&[u8]>) -> io::Result<Outcome> {
        let user = match initial {
            Some(response) => decode_response(response),
            None => decode_response(&self.challenge(USERNAME_CHALLENGE).await?),
        };
        let user = match user {
            Ok(user) => user,
            Err(outcome) => return Ok(outcome),
        };
        match decode_response(&self.challenge(PASSWORD_CHALLENGE).await?) {
            Ok(password) => Ok(self.verify(&user, &password)),
            Err(outcome) => Ok(outcome),
        }
    }

    fn verify(&self, user: &[u8], password: &[u8]) -> Outcome {
        if self.shared.credentials_match(user, password) {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    /// Sends a `334` prompt and reads the client's answer line.
    async fn challenge(&mut self, prompt: &str) -> io::Result<Vec<u8>> {
        self.reply(prompt).await?;
        let mut line = Vec::new();
        match self.read_line(&mut line).await? {
            Line::Complete => Ok(trim_crlf(&line).to_vec()),
            Line::TooLong => Err(io::ErrorKind::InvalidData.into()),
            Line::Closed => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// A SASL response: `*` cancels, `=` is the empty response, anything else
/// is base64.
fn decode_response(response: &[u8]) -> Result<Vec<u8>, Outcome> {
    match response {
        b"*" => Err(Outcome::Cancelled),
        b"=" => Ok(Vec::new()),
        encoded => decode_base64(encoded).ok_or(Outcome::Undecodable),
    }
}

/// Decodes standard base64, padded or not.
pub(super) fn decode_base64(encoded: &[u8]) -> Option<Vec<u8>> {
    let digits = encoded
        .strip_suffix(b"==")
        .or_else(|| encoded.strip_suffix(b"="));
    let digits = digits.unwrap_or(encoded);
    if digits.len() % 4 == 1 {
        return None;
    }
    let mut decoded = Vec::with_capacity(digits.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut count = 0;
    for &digit in digits {
        let value = match digit {
            b'A'..=b'Z' => digit - b'A',
            b'a'..=b'z' => digit - b'a' + 26,
            b'0'..=b'9' => digit - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            decoded.push(u8::try_from(bits >> count).ok()?);
            bits &= (1 << count) - 1;
        }
    }
    Some(decoded)
}
