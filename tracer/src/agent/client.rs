//! Asking a running agent for its `/stats` view: one HTTP/1.1 GET per report, so `tracer stats
//! --agent` answers at once without loading programs or dumping sockets.

use std::{io, net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Bytes, client::conn::http1, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::aggregate::view::{ProcSort, Stats};

/// Bound of one whole exchange: connect, request, response.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {addr}: {error} (is `tracer agent` running there?)")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("talking to the agent at {addr}: {error}")]
    Http {
        addr: SocketAddr,
        error: hyper::Error,
    },
    #[error("the agent at {addr} did not answer within {} s", TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr },
    #[error("the agent at {addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: StatusCode,
        body: String,
    },
    #[error("the agent at {addr} sent stats this version cannot read: {error}")]
    Decode {
        addr: SocketAddr,
        error: serde_json::Error,
    },
}

/// The agent's current view with at most `top` rows per ranking.
pub async fn stats(addr: SocketAddr, top: usize, sort: ProcSort) -> Result<Stats, ClientError> {
    let path = format!("/stats?top={top}&sort={}", sort.name());
    let body = tokio::time::timeout(TIMEOUT, get(addr, &path))
        .await
        .map_err(|_| ClientError::Timeout { addr })??;
    serde_json::from_slice(&body).map_err(|error| ClientError::Decode { addr, error })
}

async fn get(addr: SocketAddr, path: &str) -> Result<Bytes, ClientError> {
    let http = |error| ClientError::Http { addr, error };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| ClientError::Connect { addr, error })?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    // Drives the connection; it ends when the response is read and `sender` is dropped.
    let driver = tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::Status {
            addr,
            status: StatusCode::BAD_REQUEST,
            body: e.to_string(),
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    drop(sender);
    // Without a sender the connection closes once the exchange is done.
    let _ = driver.await;
    if status != StatusCode::OK {
        return Err(ClientError::Status {
            addr,
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    Ok(body)
}
