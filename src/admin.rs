//! Admin HTTP server (default 127.0.0.1:7401): `GET /status` (JSON), `GET /metrics`
//! (Prometheus text format), `GET /stream?from=N[&follow=1]` (the merged stream as NDJSON).

use crate::node::Node;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use twinrx_types::Seq;

pub async fn serve(listener: tokio::net::TcpListener, node: Arc<Node>) {
    let mut shutdown = node.shutdown.clone();
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/stream", get(stream))
        .with_state(node);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    let body = crate::status::status_json(&node);
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
        .into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    match crate::metrics::render(&node) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    follow: Option<String>,
    /// Entries to return at most without `follow` (default: all that are committed).
    #[serde(default)]
    limit: Option<u64>,
}

/// Entries per read from the stream journal.
const READ_RECORDS: usize = 1024;
const READ_BYTES: usize = 1 << 20;

async fn stream(State(node): State<Arc<Node>>, Query(q): Query<StreamQuery>) -> Response {
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    let handle = node.stream.clone();
    let first = handle.first_seq();
    if q.from + 1 < first.0 {
        return (
            StatusCode::GONE,
            format!(
                "offset {} was removed by retention; the oldest offset held is {}\n",
                q.from,
                first.0 - 1
            ),
        )
            .into_response();
    }
    let end = q.limit.map(|l| q.from.saturating_add(l));
    let shutdown = node.shutdown.clone();
    let state = (handle, Seq(q.from + 1), node.stream.subscribe());
    let body = futures_util::stream::unfold(state, move |(handle, next, mut sub)| {
        let mut shutdown = shutdown.clone();
        async move {
            loop {
                if end.is_some_and(|e| next.0 > e) {
                    return None;
                }
                let durable = handle.durable_seq().map(|s| s.0).unwrap_or(0);
                if next.0 <= durable {
                    let h = handle.clone();
                    let max = end
                        .map(|e| (e + 1 - next.0) as usize)
                        .unwrap_or(READ_RECORDS)
                        .min(READ_RECORDS);
                    let read =
                        tokio::task::spawn_blocking(move || h.read(next, max, READ_BYTES)).await;
                    let recs = match read {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (handle, next, sub),
                            ))
                        }
                        Err(e) => {
                            return Some((
                                Err(std::io::Error::other(e.to_string())),
                                (handle, next, sub),
                            ))
                        }
                    };
                    let next = recs.last()?.0.next();
                    let mut out = Vec::with_capacity(recs.iter().map(|(_, b)| b.len() + 1).sum());
                    for (_, line) in recs {
                        out.extend_from_slice(&line);
                        out.push(b'\n');
                    }
                    return Some((Ok::<_, std::io::Error>(out), (handle, next, sub)));
                }
                if !follow {
                    return None;
                }
                tokio::select! {
                    r = sub.changed() => if r.is_err() { return None },
                    _ = shutdown.wait_for(|s| *s) => return None,
                }
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}
