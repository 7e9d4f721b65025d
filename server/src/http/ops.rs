//! Operations endpoints: `GET /healthz` and `GET /metrics`.

use crate::state::SharedState;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use belfry_protocol::api::Health;
use socketioxide::adapter::Adapter;

/// `GET /healthz`: 200 when the store answers and its writer is not stuck, 503
/// otherwise (checked at most once a second; see `health.rs`).
pub async fn healthz<A: Adapter>(State(state): State<SharedState<A>>) -> impl IntoResponse {
    let ok = state.health.check().await;
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
        {
            state
                .metrics
                .store_commits_total
                .absolute(state.store.writer().batches());
            state
                .metrics
                .store_joined_writes_total
                .absolute(state.store.writer().joined());
            state.metrics.render()
        },
    )
}
