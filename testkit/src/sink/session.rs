//! One SMTP connection: the command dialogue (RFC 5321 with PIPELINING,
//! 8BITMIME, SMTPUTF8 and SIZE) and the `DATA` reader.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::{Fault, MAX_MESSAGE_SIZE, ReceivedMessage, Shared};

/// The longest command line read. RFC 5321 allows 512 octets, extensions
/// and AUTH responses more; anything longer closes the connection.
const MAX_LINE: u64 = 4096;

const GREETING: &str = "220 email2fa-sink ESMTP ready\r\n";
const HELO: &str = "250 email2fa-sink\r\n";
// The SIZE value is MAX_MESSAGE_SIZE; a unit test keeps the two in step.
const EHLO: &str = "250-email2fa-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                    250-SMTPUTF8\r\n250 SIZE 10485760\r\n";
const EHLO_AUTH: &str = "250-email2fa-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n\
                         250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 10485760\r\n";
pub(super) const OK: &str = "250 2.0.0 OK\r\n";
const SENDER_OK: &str = "250 2.1.0 Sender OK\r\n";
const RECIPIENT_OK: &str = "250 2.1.5 Recipient OK\r\n";
const QUEUED: &str = "250 2.0.0 OK: queued\r\n";
const START_DATA: &str = "354 Start mail input; end with <CRLF>.<CRLF>\r\n";
const BYE: &str = "221 2.0.0 Bye\r\n";
const TEMP_FAIL: &str = "451 4.3.0 Temporary failure, try again later\r\n";
const REJECTED_RECIPIENT: &str = "550 5.1.1 Mailbox unavailable\r\n";
const REJECTED_MESSAGE: &str = "550 5.7.1 Message rejected\r\n";
pub(super) const AUTH_FAILED: &str = "535 5.7.8 Authentication credentials invalid\r\n";
const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
const SYNTAX: &str = "500 5.5.2 Syntax error\r\n";
const LINE_TOO_LONG: &str = "500 5.5.2 Line too long\r\n";
const BAD_ARGUMENT: &str = "501 5.5.4 Syntax error in parameters or arguments\r\n";
pub(super) const NOT_IMPLEMENTED: &str = "502 5.5.2 Command not implemented\r\n";
pub(super) const NEED_EHLO: &str = "503 5.5.1 Send EHLO or HELO first\r\n";
pub(super) const NESTED_MAIL: &str = "503 5.5.1 A mail transaction is in progress\r\n";
const NEED_MAIL: &str = "503 5.5.1 Send MAIL first\r\n";
const NEED_RCPT: &str = "503 5.5.1 Send RCPT first\r\n";

/// Serves one connection until the client quits or goes away.
pub(super) async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    // Replies are already batched by hand (see `Conn::reply`); Nagle would
    // only add a delayed-ACK stall to every round trip.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "the SMTP sink cannot set TCP_NODELAY");
    }
    let (read, write) = stream.split();
    let mut conn = Conn {
        reader: BufReader::new(read),
        writer: BufWriter::new(write),
        shared: &shared,
        state: State::default(),
    };
    if let Err(error) = conn.run().await {
        tracing::debug!(%error, "an SMTP sink connection ended on an error");
    }
}

/// The connection's halves, the shared sink and the dialogue state.
pub(super) struct Conn<'a> {
    reader: BufReader<ReadHalf<'a>>,
    writer: BufWriter<WriteHalf<'a>>,
    pub(super) shared: &'a Shared,
    pub(super) state: State,
}

/// Where the dialogue is.
#[derive(Default)]
pub(super) struct State {
    pub(super) greeted: bool,
    pub(super) authenticated: bool,
    pub(super) mail_from: Option<String>,
    rcpt_to: Vec<String>,
    /// The size of the last message, as the starting capacity of the next
    /// one: a run of similar messages then costs one allocation each.
    last_size: usize,
}

impl State {
    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }
}

/// What reading one line gave.
pub(super) enum Line {
    Complete,
    TooLong,
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Ehlo,
    Helo,
    Auth,
    Mail,
    Rcpt,
    Data,
    Rset,
    Noop,
    Quit,
    Unknown,
}

const VERBS: [(&str, Verb); 9] = [
    ("EHLO", Verb::Ehlo),
    ("HELO", Verb::Helo),
    ("AUTH", Verb::Auth),
    ("MAIL", Verb::Mail),
    ("RCPT", Verb::Rcpt),
    ("DATA", Verb::Data),
    ("RSET", Verb::Rset),
    ("NOOP", Verb::Noop),
    ("QUIT", Verb::Quit),
];

impl Verb {
    fn parse(word: &str) -> Self {
        VERBS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(word))
            .map_or(Self::Unknown, |&(_, verb)| verb)
    }
}

impl Conn<'_> {
    async fn run(&mut self) -> io::Result<()> {
        self.reply(GREETING).await?;
        let mut line = Vec::with_capacity(256);
        loop {
            match self.read_line(&mut line).await? {
                Line::Complete => {}
                Line::Closed => return Ok(()),
                Line::TooLong => {
                    // The rest of the line would be read as commands.
                    self.reply(LINE_TOO_LONG).await?;
                    break;
                }
            }
            if !self.command(&line).await? {
                break;
            }
        }
        self.writer.flush().await
    }

    /// Answers one command line; false when the client quit.
    async fn command(&mut self, line: &[u8]) -> io::Result<bool> {
        let Ok(text) = std::str::from_utf8(trim_crlf(line)) else {
            self.reply(SYNTAX).await?;
            return Ok(true);
        };
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let arg = arg.trim();
        match Verb::parse(verb) {
            Verb::Ehlo => self.hello(arg, true).await?,
            Verb::Helo => self.hello(arg, false).await?,
            Verb::Auth => self.auth(arg).await?,
            Verb::Mail => self.mail(arg).await?,
            Verb::Rcpt => self.rcpt(arg).await?,
            Verb::Data => self.data().await?,
            Verb::Rset => {
                self.state.reset_transaction();
                self.reply(OK).await?;
            }
            Verb::Noop => self.reply(OK).await?,
            Verb::Quit => {
                self.reply(BYE).await?;
                return Ok(false);
            }
            Verb::Unknown => self.reply(NOT_IMPLEMENTED).await?,
        }
        Ok(true)
    }

    async fn hello(&mut self, domain: &str, extended: bool) -> io::Result<()> {
        if domain.is_empty() {
            return self.reply(BAD_ARGUMENT).await;
        }
        self.state.greeted = true;
        self.state.reset_transaction();
        let reply = match (extended, self.shared.auth_required()) {
            (false, _) => HELO,
            (true, false) => EHLO,
            (true, true) => EHLO_AUTH,
        };
        self.reply(reply).await
    }

    async fn mail(&mut self, arg: &str) -> io::Result<()> {
        if !self.state.greeted {
            return self.reply(NEED_EHLO).await;
        }
        if self.state.mail_from.is_some() {
            return self.reply(NESTED_MAIL).await;
        }
        if self.shared.auth_required() && !self.state.authenticated {
            return self.reply(AUTH_REQUIRED).await;
        }
        let Some((address, params)) = path(arg, "FROM:") else {
            return self.reply(BAD_ARGUMENT).await;
        };
        if declared_size(params).is_some_and(|size| size > MAX_MESSAGE_SIZE) {
            return self.reply(TOO_BIG).await;
        }
        self.state.mail_from = Some(address.to_owned());
        self.reply(SENDER_OK).await
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<()> {
        if self.state.mail_from.is_none() {
            return self.reply(NEED_MAIL).await;
        }
        let Some((address, _)) = path(arg, "TO:").filter(|(address, _)| !address.is_empty()) else {
            return self.reply(BAD_ARGUMENT).await;
        };
        if self.shared.is_rejected(address) {
            let counter = &self.shared.counters.rejected_recipients;
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return self.reply(REJECTED_RECIPIENT).await;
        }
        self.state.rcpt_to.push(address.to_owned());
        self.reply(RECIPIENT_OK).await
    }

    async fn data(&mut self) -> io::Result<()> {
        if self.state.mail_from.is_none() {
            return self.reply(NEED_MAIL).await;
        }
        if self.state.rcpt_to.is_empty() {
            return self.reply(NEED_RCPT).await;
        }
        self.reply(START_DATA).await?;
        let mut data = Vec::with_capacity(self.state.last_size);
        let fits = self.read_body(&mut data).await?;
        let mail_from = self.state.mail_from.take().unwrap_or_default();
        let rcpt_to = std::mem::take(&mut self.state.rcpt_to);
        if !fits {
            return self.reply(TOO_BIG).await;
        }
        if let Some(fault) = self.shared.take_fault() {
            return self.fault(&fault).await;
        }
        self.state.last_size = data.len();
        self.shared.record(ReceivedMessage {
            received_at: SystemTime::now(),
            mail_from,
            rcpt_to,
            data,
        });
        self.reply(QUEUED).await
    }

    /// Reads the message up to the `.` line into `data`, undoing the
    /// dot-stuffing; false when it was over the size limit (and discarded).
    async fn read_body(&mut self, data: &mut Vec<u8>) -> io::Result<bool> {
        // Each read stops at the size limit, so one endless line cannot grow
        // the buffer past twice the limit.
        let chunk = u64::try_from(MAX_MESSAGE_SIZE + 1).unwrap_or(u64::MAX);
        let mut at_line_start = true;
        let mut fits = true;
        loop {
            let start = data.len();
            let reader = &mut self.reader;
            if reader.take(chunk).read_until(b'\n', data).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = &data[start..];
            if at_line_start && (line == b".\r\n" || line == b".\n") {
                data.truncate(start);
                return Ok(fits);
            }
            let ends_line = line.ends_with(b"\n");
            if at_line_start && line.starts_with(b".") {
                data.remove(start);
            }
            at_line_start = ends_line;
            if data.len() > MAX_MESSAGE_SIZE {
                fits = false;
                data.clear();
            }
        }
    }

    async fn fault(&mut self, fault: &Fault) -> io::Result<()> {
        match fault {
            Fault::TempFail => self.reply(TEMP_FAIL).await,
            Fault::Reject => self.reply(REJECTED_MESSAGE).await,
            Fault::AuthFail => self.reply(AUTH_FAILED).await,
            Fault::Custom(code, text) => {
                let text = text.replace(['\r', '\n'], " ");
                self.reply(&format!("{code} {text}\r\n")).await
            }
            // Ending the session drops the stream: the client sees the
            // connection close where it waits for the reply to its message.
            Fault::Disconnect => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "Fault::Disconnect closed the connection mid-DATA",
            )),
        }
    }

    /// Reads one line (with its line ending) into `line`.
    pub(super) async fn read_line(&mut self, line: &mut Vec<u8>) -> io::Result<Line> {
        line.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', line)
            .await?;
        Ok(if line.ends_with(b"\n") {
            Line::Complete
        } else if n as u64 == MAX_LINE {
            Line::TooLong
        } else {
            Line::Closed
        })
    }

    /// Writes a reply, after the configured delay.
    ///
    /// The reply is flushed only when no further complete command is
    /// buffered: with PIPELINING the client sends a group of commands at
    /// once, and their replies then leave in one write.
    pub(super) async fn reply(&mut self, text: &str) -> io::Result<()> {
        if let Some(delay) = self.shared.delay() {
            tokio::time::sleep(delay).await;
        }
        self.writer.write_all(text.as_bytes()).await?;
        if !self.reader.buffer().contains(&b'\n') {
            self.writer.flush().await?;
        }
        Ok(())
    }
}

pub(super) fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `FROM:<address> PARAMS` (or `TO:…`) into the address, without its
/// angle brackets, and the parameters.
fn path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    match rest.strip_prefix('<') {
        Some(bracketed) => {
            let (address, params) = bracketed.split_once('>')?;
            Some((address, params.trim()))
        }
        None => {
            let (address, params) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((address, params.trim())).filter(|(address, _)| !address.is_empty())
        }
    }
}

/// The `SIZE=` parameter of `MAIL FROM`, if present and a number.
fn declared_size(params: &str) -> Option<usize> {
    params.split_ascii_whitespace().find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())
            .flatten()
    })
}
