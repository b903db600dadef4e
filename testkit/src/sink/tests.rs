//! The sink driven by lettre, the client the workers use, and by a raw
//! socket where the exact bytes on the wire matter.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::auth::decode_base64;
use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn builder(sink: &SmtpSink) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port())
        .timeout(Some(Duration::from_secs(5)))
}

fn transport(sink: &SmtpSink) -> AsyncSmtpTransport<Tokio1Executor> {
    builder(sink).build()
}

fn authenticating(
    sink: &SmtpSink,
    password: &str,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    builder(sink)
        .credentials(Credentials::new("relay".to_owned(), password.to_owned()))
        .authentication(vec![mechanism])
        .build()
}

fn email(to: &str, body: &str) -> Message {
    Message::builder()
        .from(
            "Sender <sender@example.com>"
                .parse()
                .expect("a valid mailbox"),
        )
        .to(to.parse().expect("a valid mailbox"))
        .subject("Your sign-in code")
        .body(body.to_owned())
        .expect("a valid message")
}

fn text(message: &ReceivedMessage) -> String {
    String::from_utf8(message.data.clone()).expect("the test messages are UTF-8")
}

/// The reply code of a failed send.
fn code(error: &lettre::transport::smtp::Error) -> Option<String> {
    error.status().map(|code| code.to_string())
}

/// A client that writes exactly what the test says.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(sink: &SmtpSink) -> Self {
        let stream = TcpStream::connect(sink.addr())
            .await
            .expect("the sink listens");
        let (read, writer) = stream.into_split();
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.writer
            .write_all(bytes.as_bytes())
            .await
            .expect("the sink reads");
    }

    /// One whole reply, continuation lines included.
    async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let start = reply.len();
            let read = self.reader.read_line(&mut reply).await.expect("a reply");
            assert!(read > 0, "the sink closed the connection after {reply:?}");
            if reply.as_bytes().get(start + 3) != Some(&b'-') {
                return reply;
            }
        }
    }

    async fn expect(&mut self, code: &str) -> String {
        let reply = self.reply().await;
        assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
        reply
    }
}

#[tokio::test]
async fn a_message_sent_through_lettre_arrives_with_its_envelope_and_body() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let body = "Your code is 123456\n.x\n..y\nBye";
    transport(&sink)
        .send(email("Alice <alice@example.com>", body))
        .await
        .expect("the sink accepts the message");

    let messages = sink.wait_for(1, WAIT).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.mail_from, "sender@example.com");
    assert_eq!(message.rcpt_to, ["alice@example.com"]);
    let data = text(message);
    assert!(data.contains("Subject: Your sign-in code\r\n"), "{data}");
    // lettre dot-stuffs `.x` to `..x` and `..y` to `...y`; the sink undoes it.
    assert!(
        data.contains("\r\nYour code is 123456\r\n.x\r\n..y\r\nBye"),
        "{data}"
    );
    assert!(!data.ends_with(".\r\n"), "{data}");
}

#[tokio::test]
async fn several_messages_over_one_pooled_connection_all_arrive() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let mailer = transport(&sink);
    for i in 0..5 {
        let to = format!("user{i}@example.com");
        mailer.send(email(&to, "hello")).await.expect("accepted");
        // lettre returns the connection to its pool in a spawned task: let it
        // run, so that the next send finds the connection there.
        tokio::task::yield_now().await;
    }

    let messages = sink.wait_for(5, WAIT).await;
    let recipients: Vec<_> = messages.iter().map(|m| m.rcpt_to[0].clone()).collect();
    let expected: Vec<_> = (0..5).map(|i| format!("user{i}@example.com")).collect();
    assert_eq!(recipients, expected);
    assert_eq!(sink.stats().connections, 1);
}

#[tokio::test]
async fn fail_next_two_temp_fails_make_two_transient_errors_then_service_resumes() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    sink.fail_next(2, Fault::TempFail);
    let mailer = transport(&sink);

    for _ in 0..2 {
        let error = mailer
            .send(email("alice@example.com", "hello"))
            .await
            .expect_err("the sink fails this one");
        assert!(error.is_transient(), "{error}");
        assert_eq!(code(&error).as_deref(), Some("451"));
    }
    mailer
        .send(email("alice@example.com", "hello"))
        .await
        .expect("the third one is accepted");

    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    assert_eq!(sink.stats().temp_fails, 2);
}

#[tokio::test]
async fn queued_faults_are_given_in_order_with_their_reply_codes() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    sink.fail_next(1, Fault::Reject);
    sink.fail_next(1, Fault::AuthFail);
    sink.fail_next(
        1,
        Fault::Custom(452, "4.3.1 Insufficient system storage".into()),
    );
    let mailer = transport(&sink);

    let mut codes = Vec::new();
    for _ in 0..3 {
        let error = mailer
            .send(email("alice@example.com", "hello"))
            .await
            .expect_err("the sink fails this one");
        codes.push((code(&error), error.is_permanent()));
    }

    let expected = [("550", true), ("535", true), ("452", false)];
    let expected: Vec<_> = expected.map(|(c, p)| (Some(c.to_owned()), p)).into();
    assert_eq!(codes, expected);
    let stats = sink.stats();
    assert_eq!(
        (stats.rejects, stats.auth_fails, stats.custom_faults),
        (1, 1, 1)
    );
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn a_rejected_recipient_gets_a_permanent_error() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    sink.reject_recipient("bounce");
    let mailer = transport(&sink);

    let error = mailer
        .send(email("will.bounce@example.com", "hello"))
        .await
        .expect_err("the recipient is refused");
    assert!(error.is_permanent(), "{error}");
    assert_eq!(code(&error).as_deref(), Some("550"));
    mailer
        .send(email("alice@example.com", "hello"))
        .await
        .expect("other recipients are accepted");

    let messages = sink.wait_for(1, WAIT).await;
    assert_eq!(messages[0].rcpt_to, ["alice@example.com"]);
    assert_eq!(sink.stats().rejected_recipients, 1);
}

#[tokio::test]
async fn require_auth_refuses_bad_credentials_with_535_and_accepts_good_ones() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    sink.require_auth("relay", "s3cret");

    let error = authenticating(&sink, "wrong", Mechanism::Plain)
        .send(email("alice@example.com", "hello"))
        .await
        .expect_err("wrong credentials are refused");
    assert_eq!(code(&error).as_deref(), Some("535"));
    let error = transport(&sink)
        .send(email("alice@example.com", "hello"))
        .await
        .expect_err("no credentials are refused");
    assert_eq!(code(&error).as_deref(), Some("530"));

    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        authenticating(&sink, "s3cret", mechanism)
            .send(email("alice@example.com", "hello"))
            .await
            .expect("good credentials are accepted");
    }
    assert_eq!(sink.wait_for(2, WAIT).await.len(), 2);
    assert_eq!(sink.stats().auth_fails, 1);
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_restores_service_on_the_same_port() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let port = sink.port();
    let mailer = transport(&sink);
    mailer
        .send(email("alice@example.com", "one"))
        .await
        .expect("accepted");
    let mut open = Raw::connect(&sink).await;
    open.expect("220").await;

    sink.stop().await;
    let mut rest = Vec::new();
    let read = open.reader.read_to_end(&mut rest).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the open connection is dropped"
    );
    let refused = TcpStream::connect(sink.addr())
        .await
        .expect_err("nothing listens");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    mailer
        .send(email("alice@example.com", "two"))
        .await
        .expect_err("the server is down");

    sink.restart().await.expect("the port is free again");
    assert_eq!(sink.port(), port);
    mailer
        .send(email("alice@example.com", "three"))
        .await
        .expect("accepted");
    assert_eq!(sink.wait_for(2, WAIT).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sends_all_arrive() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let mailer = transport(&sink);
    let sends: Vec<_> = (0..200)
        .map(|i| {
            let mailer = mailer.clone();
            tokio::spawn(async move {
                let to = format!("user{i}@example.com");
                mailer.send(email(&to, "hello")).await
            })
        })
        .collect();
    for send in sends {
        send.await.expect("the send task ran").expect("accepted");
    }

    let messages = sink.wait_for(200, WAIT).await;
    let recipients: HashSet<_> = messages.iter().map(|m| m.rcpt_to[0].clone()).collect();
    assert_eq!(recipients.len(), 200);
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order_and_dots_are_unstuffed() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let mut client = Raw::connect(&sink).await;
    client.expect("220").await;

    client
        .send("EHLO client\r\nMAIL FROM:<a@x.test> SIZE=100\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n")
        .await;
    for code in ["250", "250", "250", "250", "354"] {
        client.expect(code).await;
    }
    client
        .send("Subject: hi\r\n\r\n..x\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n")
        .await;
    for code in ["250", "250", "250", "221"] {
        client.expect(code).await;
    }

    let messages = sink.wait_for(1, WAIT).await;
    assert_eq!(messages[0].mail_from, "a@x.test");
    assert_eq!(messages[0].rcpt_to, ["b@x.test", "c@x.test"]);
    assert_eq!(messages[0].data, b"Subject: hi\r\n\r\n.x\r\n");
}

#[tokio::test]
async fn commands_out_of_order_get_503_and_unknown_ones_502() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let mut client = Raw::connect(&sink).await;
    client.expect("220").await;

    let script = [
        ("MAIL FROM:<a@x.test>", "503"),
        ("HELO client", "250"),
        ("RCPT TO:<b@x.test>", "503"),
        ("DATA", "503"),
        ("MAIL FROM:<a@x.test>", "250"),
        ("MAIL FROM:<a@x.test>", "503"),
        ("DATA", "503"),
        ("RCPT TO:<>", "501"),
        ("VRFY b@x.test", "502"),
        ("STARTTLS", "502"),
        ("AUTH PLAIN AHJlbGF5AHMzY3JldA==", "502"),
        ("QUIT", "221"),
    ];
    for (command, code) in script {
        client.send(&format!("{command}\r\n")).await;
        let reply = client.reply().await;
        assert!(reply.starts_with(code), "{command} got {reply:?}");
    }
}

#[tokio::test]
async fn ehlo_advertises_the_extensions_and_auth_only_when_required() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let mut client = Raw::connect(&sink).await;
    client.expect("220").await;
    client.send("EHLO client\r\n").await;
    let plain = client.expect("250").await;
    for extension in ["PIPELINING", "8BITMIME", "SMTPUTF8"] {
        assert!(plain.contains(&format!("250-{extension}\r\n")), "{plain}");
    }
    assert!(
        plain.ends_with(&format!("250 SIZE {MAX_MESSAGE_SIZE}\r\n")),
        "{plain}"
    );
    assert!(!plain.contains("AUTH"), "{plain}");

    sink.require_auth("relay", "s3cret");
    client.send("EHLO client\r\n").await;
    let with_auth = client.expect("250").await;
    assert!(
        with_auth.contains("250-AUTH PLAIN LOGIN\r\n"),
        "{with_auth}"
    );
    assert!(with_auth.ends_with(&format!("250 SIZE {MAX_MESSAGE_SIZE}\r\n")));
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_with_552() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    let mut client = Raw::connect(&sink).await;
    client.expect("220").await;
    client
        .send("EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        .await;
    for code in ["250", "250", "250", "354"] {
        client.expect(code).await;
    }

    let line = format!("{}\r\n", "x".repeat(998));
    let body = line.repeat(MAX_MESSAGE_SIZE / line.len() + 1);
    client.send(&body).await;
    client.send(".\r\nNOOP\r\n").await;
    client.expect("552").await;
    client.expect("250").await;
    assert_eq!(sink.count(), 0);
}

#[tokio::test]
async fn a_delay_slows_the_greeting_and_every_reply() {
    let sink = SmtpSink::start().await.expect("the sink starts");
    sink.set_delay(Duration::from_millis(200));
    let started = Instant::now();
    let mut client = Raw::connect(&sink).await;
    client.expect("220").await;
    client.send("NOOP\r\n").await;
    client.expect("250").await;
    assert!(started.elapsed() >= Duration::from_millis(400));

    sink.set_delay(Duration::ZERO);
    let started = Instant::now();
    client.send("NOOP\r\n").await;
    client.expect("250").await;
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[test]
fn base64_decodes_padded_and_unpadded_input_and_refuses_garbage() {
    assert_eq!(
        decode_base64(b"AHJlbGF5AHMzY3JldA==").as_deref(),
        Some(&b"\0relay\0s3cret"[..])
    );
    assert_eq!(decode_base64(b"cmVsYXk").as_deref(), Some(&b"relay"[..]));
    assert_eq!(
        decode_base64(b"VXNlcm5hbWU6").as_deref(),
        Some(&b"Username:"[..])
    );
    assert_eq!(decode_base64(b"").as_deref(), Some(&b""[..]));
    assert_eq!(decode_base64(b"cm!s"), None);
    assert_eq!(decode_base64(b"cmVsY"), None);
}
