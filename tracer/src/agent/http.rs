//! The agent's HTTP/1.1 endpoint: `/metrics` (Prometheus), `/stats` (the `tracer stats` JSON
//! view), `/healthz`. Handlers never touch the aggregates: they send a [`Query`] to the task
//! that owns them and wait (bounded) for its answer.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use clap::ValueEnum;

use super::exposition::Format;
use crate::aggregate::view::{ProcSort, Stats};

/// Concurrent connections served; more are closed at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a handler waits for the aggregating task (busy with a large reconciliation).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest `top` a /stats caller may ask for.
pub const MAX_TOP: usize = 10_000;

/// A question for the task that owns the aggregates.
pub enum Query {
    Metrics {
        format: Format,
        reply: oneshot::Sender<String>,
    },
    Stats {
        top: usize,
        sort: ProcSort,
        reply: oneshot::Sender<Stats>,
    },
    Health {
        reply: oneshot::Sender<()>,
    },
    /// Write the flight recorder out: the dump's description, or why it failed.
    FlightDump {
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// Accepts connections until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    queries: mpsc::Sender<Query>,
    cancel: CancellationToken,
    default_top: usize,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = cancel.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many metrics connections; closing this one");
            continue;
        };
        let queries = queries.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, queries.clone(), default_top));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "metrics connection ended");
            }
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

async fn ask<T>(
    queries: &mpsc::Sender<Query>,
    query: impl FnOnce(oneshot::Sender<T>) -> Query,
) -> Result<T, Response<Full<Bytes>>> {
    let unavailable = |why: &str| text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    let (tx, rx) = oneshot::channel();
    queries
        .send(query(tx))
        .await
        .map_err(|_| unavailable("the agent is stopping"))?;
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(unavailable("the agent is stopping")),
        Err(_) => Err(unavailable("the agent did not answer in time")),
    }
}

async fn handle(
    req: Request<Incoming>,
    queries: mpsc::Sender<Query>,
    default_top: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == Method::POST && req.uri().path() == "/flight/dump" {
        let resp = match ask(&queries, |reply| Query::FlightDump { reply }).await {
            Ok(Ok(done)) => text(StatusCode::OK, format!("{done}\n")),
            Ok(Err(why)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
            Err(r) => r,
        };
        return Ok(resp);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    let resp = match req.uri().path() {
        "/metrics" => {
            let format = Format::negotiate(
                req.headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok()),
            );
            match ask(&queries, |reply| Query::Metrics { format, reply }).await {
                Ok(body) => reply(StatusCode::OK, format.content_type(), body),
                Err(r) => r,
            }
        }
        "/stats" => match parse_stats_query(req.uri().query().unwrap_or(""), default_top) {
            Err(msg) => text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
            Ok((top, sort)) => match ask(&queries, |reply| Query::Stats { top, sort, reply }).await
            {
                Ok(stats) => match serde_json::to_string(&stats) {
                    Ok(json) => reply(StatusCode::OK, "application/json", json),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                },
                Err(r) => r,
            },
        },
        "/healthz" => match ask(&queries, |reply| Query::Health { reply }).await {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(r) => r,
        },
        "/" => text(
            StatusCode::OK,
            "tracer agent\n/metrics  Prometheus metrics\n\
             /stats?top=N&sort=bytes|connections  the `tracer stats` view as JSON\n\
             /healthz  200 while the agent is serving\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics or /stats\n"),
    };
    Ok(resp)
}

/// The spellings `sort` accepts, from the CLI's value parser.
fn sort_choices() -> Vec<String> {
    ProcSort::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_owned())
        .collect()
}

/// `top=N&sort=bytes|connections`, both optional.
pub fn parse_stats_query(query: &str, default_top: usize) -> Result<(usize, ProcSort), String> {
    let mut top = default_top;
    let mut sort = ProcSort::Bytes;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "top" => {
                top = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_TOP).contains(n))
                    .ok_or_else(|| {
                        format!("top must be a number from 1 to {MAX_TOP}, not `{value}`")
                    })?;
            }
            "sort" => {
                // The same parser and spellings as `tracer stats --sort`.
                sort = ProcSort::from_str(value, false).map_err(|_| {
                    format!(
                        "sort must be {}, not `{value}`",
                        sort_choices().join(" or ")
                    )
                })?;
            }
            _ => return Err(format!("unknown parameter `{key}`; expected top or sort")),
        }
    }
    Ok((top, sort))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_query() {
        assert_eq!(parse_stats_query("", 20), Ok((20, ProcSort::Bytes)));
        assert_eq!(
            parse_stats_query("top=5&sort=connections", 20),
            Ok((5, ProcSort::Connections))
        );
        for bad in ["top=0", "top=x", "top=10001", "sort=pid", "limit=3"] {
            assert!(parse_stats_query(bad, 20).is_err(), "{bad}");
        }
    }

    #[test]
    fn sort_accepts_exactly_the_cli_spellings() {
        for &v in ProcSort::value_variants() {
            assert_eq!(
                parse_stats_query(&format!("sort={}", v.name()), 20),
                Ok((20, v))
            );
        }
        // As on the command line: exact spelling only.
        for bad in ["sort=Bytes", "sort=", "sort", "sort=bytes%20"] {
            assert_eq!(
                parse_stats_query(bad, 20),
                Err(format!(
                    "sort must be bytes or connections, not `{}`",
                    bad.split_once('=').map_or("", |(_, v)| v)
                )),
                "{bad}"
            );
        }
    }
}
