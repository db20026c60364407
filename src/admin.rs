//! Admin HTTP server (default 127.0.0.1:7401): `GET /status` (JSON), `GET /metrics`
//! (Prometheus text format), `GET /stream?from=N|earliest[&follow=1]` (the committed merged
//! stream as NDJSON; `410 Gone` with `{"first_offset": F, ...}` when stream retention has
//! deleted offset N, `from=earliest` starts at F); on a pair also `POST /switchover` and
//! `POST /resync` (JSON answers; 409 with `{"error": ...}` when refused).
//!
//! Read-only endpoints (status, metrics, and the stream unless `[admin] stream_token`) answer
//! anyone who reaches the port. Control endpoints (`/switchover`, `/resync`, and `/fault` in
//! builds with the `fault-injection` feature — it is not routed elsewhere: 404) need
//! `Authorization: Bearer <token>` with the token of `[admin] token_file`: a missing or wrong
//! token is 401, and a node without `token_file` refuses control with 403.

use crate::node::Node;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use twinrx_types::Seq;

pub async fn serve(listener: tokio::net::TcpListener, node: Arc<Node>) {
    let app = router(node.clone());
    let mut shutdown = node.shutdown.clone();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let tls = node
        .cfg
        .admin_tls
        .as_ref()
        .map(|(cert, key)| receiver::listen::tls_acceptor(cert, key, None, false));
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(Ok(acceptor)) => {
            axum::serve(TlsListener::start(listener, acceptor), app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "admin server: cannot load its TLS certificate");
            return;
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// HTTPS connections whose handshake finished; each handshake runs in its own task, at most
/// [`TLS_PENDING_MAX`] at once and for [`TLS_HANDSHAKE_TIMEOUT`], so that a slow or silent
/// client never holds up the others.
struct TlsListener {
    local: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

const TLS_PENDING_MAX: usize = 64;
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl TlsListener {
    fn start(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        let pending = Arc::new(tokio::sync::Semaphore::new(TLS_PENDING_MAX));
        tokio::spawn(async move {
            loop {
                let (tcp, from) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::debug!(%from, "admin: too many TLS handshakes; connection closed");
                    continue;
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, from)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%from, error = %e, "admin TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%from, "admin TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accepting task ended: no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The admin routes (see the module doc).
fn router(node: Arc<Node>) -> Router {
    let control = Router::new()
        .route("/switchover", post(switchover))
        .route("/resync", post(resync));
    #[cfg(feature = "fault-injection")]
    let control = control.route("/fault", post(fault));
    let control = control.route_layer(middleware::from_fn_with_state(node.clone(), control_auth));
    let mut stream_route = Router::new().route("/stream", get(stream));
    if node.cfg.admin_stream_token {
        stream_route =
            stream_route.route_layer(middleware::from_fn_with_state(node.clone(), control_auth));
    }
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .merge(stream_route)
        .merge(control)
        .with_state(node)
}

/// Lets a request through only with the node's admin token (see the module doc).
async fn control_auth(
    State(node): State<Arc<Node>>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let Some(token) = node.cfg.admin_token.as_deref() else {
        return json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "control is off on this node: no [admin] token_file \
                is configured (docs/config.md [admin])"}),
        );
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if crate::secret::equal(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => {
            node.stats
                .admin_unauthorized
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "this needs the node's admin token: \
                    Authorization: Bearer <token of [admin] token_file> (the CLI takes \
                    --token-file, TWINRX_ADMIN_TOKEN_FILE or --config)"}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"twinrx\""),
            );
            r
        }
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

/// A JSON answer with `code`.
fn json(code: StatusCode, v: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// Sends an operator command to the HA driver and answers with its verdict.
async fn ha_command(
    node: &Node,
    make: impl FnOnce(
        tokio::sync::oneshot::Sender<Result<String, String>>,
    ) -> crate::pair::driver::Event,
    ok_status: StatusCode,
    ok_key: &str,
) -> Response {
    let Some(ha) = &node.ha else {
        return json(
            StatusCode::CONFLICT,
            serde_json::json!({"error": "this node is not part of a pair (no [pair] section)"}),
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if ha.events.send(make(tx)).is_err() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the HA core is not running (node stopping?)"}),
        );
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(msg))) => {
            let epoch = ha
                .view
                .lock()
                .ok()
                .and_then(|v| v.as_ref().map(|v| v.status.epoch.0));
            json(
                ok_status,
                serde_json::json!({ok_key: true, "message": msg, "from": node.cfg.name.to_string(), "epoch": epoch}),
            )
        }
        Ok(Ok(Err(e))) => json(StatusCode::CONFLICT, serde_json::json!({"error": e})),
        _ => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the HA core did not answer in 5 s"}),
        ),
    }
}

async fn switchover(State(node): State<Arc<Node>>) -> Response {
    ha_command(
        &node,
        crate::pair::driver::Event::Switchover,
        StatusCode::OK,
        "accepted",
    )
    .await
}

async fn resync(State(node): State<Arc<Node>>) -> Response {
    ha_command(
        &node,
        crate::pair::driver::Event::Resync,
        StatusCode::ACCEPTED,
        "started",
    )
    .await
}

#[cfg(feature = "fault-injection")]
#[derive(serde::Deserialize)]
struct FaultQuery {
    freeze: String,
}

/// `POST /fault?freeze=journal|merger|none` (routed in builds with the `fault-injection`
/// feature only).
#[cfg(feature = "fault-injection")]
async fn fault(Query(q): Query<FaultQuery>) -> Response {
    match crate::fault::parse(&q.freeze) {
        Some(part) => {
            crate::fault::set(part);
            (StatusCode::OK, format!("frozen: {}\n", q.freeze)).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            "freeze must be journal, merger or none\n",
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct StreamQuery {
    /// An offset, or `earliest`: the first one retention has kept (default 0).
    #[serde(default)]
    from: Option<String>,
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
    let first_offset = handle.first_seq().0.saturating_sub(1);
    let from = match q.from.as_deref() {
        None => 0,
        Some("earliest") => first_offset,
        Some(n) => match n.parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({
                        "error": format!("from = {n:?}: must be an offset (0, 1, ...) or \"earliest\"")
                    }),
                )
            }
        },
    };
    if from < first_offset {
        // The stream's retention deleted it: say where the stream starts now, so that a
        // consumer can decide (resume there, or alarm the gap).
        return json(
            StatusCode::GONE,
            serde_json::json!({
                "error": format!(
                    "offset {from} was deleted by stream retention; the oldest offset held \
                     is {first_offset} (read from there, or ask for from=earliest)"
                ),
                "from": from,
                "first_offset": first_offset,
                "next_offset": handle.durable_seq().map_or(0, |s| s.0),
            }),
        );
    }
    let end = q.limit.map(|l| from.saturating_add(l));
    let shutdown = node.shutdown.clone();
    let commits = node.gate.committed.subscribe();
    let state = (handle, Seq(from + 1), (node.stream.subscribe(), commits));
    let body = futures_util::stream::unfold(state, move |(handle, next, mut sub)| {
        let mut shutdown = shutdown.clone();
        async move {
            loop {
                if end.is_some_and(|e| next.0 > e) {
                    return None;
                }
                let durable = handle.durable_seq().map(|s| s.0).unwrap_or(0);
                // Only committed entries (a pair's standby may hold uncommitted ones).
                let durable = durable.min(*sub.1.borrow_and_update());
                if next.0 <= durable {
                    let h = handle.clone();
                    // Never past the committed end: a read returns up to `max` records
                    // from `next`, as far as the journal is durable (issue #26: the sink had
                    // the same defect and delivered uncommitted entries).
                    let committed_left =
                        usize::try_from(durable + 1 - next.0).unwrap_or(READ_RECORDS);
                    let max = end
                        .map(|e| (e + 1 - next.0) as usize)
                        .unwrap_or(READ_RECORDS)
                        .min(READ_RECORDS)
                        .min(committed_left);
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
                        out.extend_from_slice(&crate::stream::for_consumers(&line));
                        out.push(b'\n');
                    }
                    return Some((Ok::<_, std::io::Error>(out), (handle, next, sub)));
                }
                if !follow {
                    return None;
                }
                tokio::select! {
                    r = sub.0.changed() => if r.is_err() { return None },
                    r = sub.1.changed() => if r.is_err() { return None },
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
