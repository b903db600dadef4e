//! One HTTP/1.1 keep-alive connection, driven by one task: the cheapest
//! client hyper offers, so that the load generator is not the bottleneck.

use std::net::SocketAddr;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::webhooks::{Prepared, TENANT};

/// A connection to one server.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    path: String,
}

impl Connection {
    /// Opens a connection to `addr`, posting webhooks for the bench tenant.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("failed to connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("failed to start an HTTP/1.1 connection")?;
        tokio::spawn(conn);
        Ok(Self {
            sender,
            host: addr.to_string(),
            path: format!("/v1/webhooks/{TENANT}"),
        })
    }

    /// Posts one prepared webhook; returns the status and the body.
    pub async fn post(&mut self, prepared: &Prepared) -> anyhow::Result<(u16, Bytes)> {
        let answer = self.post_answer(prepared).await?;
        Ok((answer.status, answer.body))
    }

    /// Posts one prepared webhook; returns the whole [`Answer`].
    pub async fn post_answer(&mut self, prepared: &Prepared) -> anyhow::Result<Answer> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(&self.path)
            .header(HOST, &self.host)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &prepared.id)
            .header("webhook-timestamp", &prepared.timestamp)
            .header("webhook-signature", &prepared.signature)
            .body(Full::new(prepared.body.clone()))
            .context("failed to build a request")?;
        self.sender.ready().await.context("connection closed")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            content_type,
            replayed,
            body,
        })
    }
}

/// What the server answered to a webhook.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The `content-type` header (empty without one).
    pub content_type: String,
    /// True with `idempotent-replayed: true` (a remembered `webhook-id`).
    pub replayed: bool,
    pub body: Bytes,
}

/// A GET on a fresh connection (health checks); the status.
pub async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    Ok(response.status().as_u16())
}
