//! Operations endpoints: `GET /healthz` and `GET /metrics`.

use crate::state::SharedState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use belfry_protocol::api::Health;
use socketioxide::adapter::Adapter;

/// `GET /healthz`: 200 when the store answers, 503 otherwise.
pub async fn healthz<A: Adapter>(State(state): State<SharedState<A>>) -> impl IntoResponse {
    // Both the read pool and the writer (a stuck or dead writer means no publish can
    // succeed).
    let writer = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        state.store.writer().ping(),
    );
    let ok = state.store.ping().await && writer.await.unwrap_or(false);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: if ok { "ok" } else { "unavailable" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }),
    )
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics<A: Adapter>(State(state): State<SharedState<A>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
