//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the process serves) and
//! `/readyz` (the leader's controllers have synced their caches, or this replica is a
//! healthy standby).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

const STARTING: u8 = 0;
const STANDBY: u8 = 1;
const LEADER_SYNCING: u8 = 2;
const LEADER_READY: u8 = 3;

/// What `/readyz` reports.
#[derive(Clone, Default)]
pub struct Health(Arc<AtomicU8>);

impl Health {
    /// Waiting for the Lease: healthy and ready (a standby takes no traffic anyway).
    pub fn set_standby(&self) {
        self.0.store(STANDBY, Ordering::SeqCst);
    }

    /// Leading, caches not synced yet.
    pub fn set_leader_syncing(&self) {
        self.0.store(LEADER_SYNCING, Ordering::SeqCst);
    }

    /// Leading with synced caches.
    pub fn set_leader_ready(&self) {
        self.0.store(LEADER_READY, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200, and its text.
    pub fn readiness(&self) -> (bool, &'static str) {
        match self.0.load(Ordering::SeqCst) {
            STANDBY => (true, "standby: waiting for the leader Lease\n"),
            LEADER_READY => (true, "leader: controllers synced\n"),
            LEADER_SYNCING => (false, "leader: controllers syncing\n"),
            STARTING => (false, "starting\n"),
            _ => (false, "unknown state\n"),
        }
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match super::metrics::render(&state.registry) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (ready, text) = state.health.readiness();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, text)
}

/// The router (for tests and [`serve`]).
pub fn router(registry: Arc<Registry>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

/// Serve the endpoints on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%addr, %error, "cannot bind the metrics/health address; set --bind-address");
            return;
        }
    };
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    if let Err(error) = axum::serve(listener, router(registry, health))
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(%error, "metrics/health server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response[9..12].parse().unwrap();
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        (code, body)
    }

    #[tokio::test]
    async fn endpoints_report_health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let metrics = super::super::Metrics::default().register(&mut registry);
        metrics.reconciled("backuptarget");
        let health = Health::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Arc::new(registry), health.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });

        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(
            get(addr, "/readyz").await.0,
            503,
            "not ready while starting"
        );
        health.set_standby();
        assert_eq!(get(addr, "/readyz").await.0, 200, "a standby is ready");
        health.set_leader_syncing();
        assert_eq!(get(addr, "/readyz").await.0, 503);
        health.set_leader_ready();
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 200);
        assert!(body.contains("synced"), "{body}");
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(
            body.contains("stowage_reconcile_total{controller=\"backuptarget\"} 1"),
            "{body}"
        );

        let _ = stop_tx.send(());
        server.await.unwrap();
    }
}
