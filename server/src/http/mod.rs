//! The HTTP edge: routes, body limit, CORS, and JSON errors for everything (including
//! unknown paths and wrong methods).

pub mod compat;
pub mod extract;
mod notifications;
mod ops;
mod users;

use crate::error::HubError;
use crate::state::SharedState;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{get, post, put};
use belfry_protocol::{ErrorCode, limits};
use socketioxide::adapter::Adapter;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The HTTP routes (without the Socket.IO layer).
pub fn routes<A: Adapter>() -> Router<SharedState<A>> {
    let api = Router::new()
        .route(
            "/notifications",
            post(notifications::publish::<A>).get(notifications::list::<A>),
        )
        .route("/notifications/read", post(notifications::mark_read::<A>))
        .route(
            "/notifications/{id}/receipts",
            get(notifications::receipts::<A>),
        )
        .route("/presence/{user}", get(users::presence::<A>))
        .route("/subscriptions", get(users::list::<A>))
        .route(
            "/subscriptions/{topic}",
            put(users::subscribe::<A>).delete(users::unsubscribe::<A>),
        );
    Router::new()
        .nest("/api/v1", api)
        .route("/send", post(compat::send::<A>))
        .route("/healthz", get(ops::healthz::<A>))
        .route("/metrics", get(ops::metrics::<A>))
        .fallback(|| async { HubError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            HubError::new(
                ErrorCode::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
}

/// CORS for the configured origins (`*`: any); `None` when none are configured.
pub fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
    )
}
