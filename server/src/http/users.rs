//! Per-user endpoints: subscriptions (user token) and presence (publish key).

use super::extract::{Publisher, User, WritingUser};
use crate::error::HubError;
use crate::state::SharedState;
use axum::Json;
use axum::extract::{Path, State};
use belfry_protocol::api::{Presence, Subscriptions};
use belfry_protocol::{ErrorCode, validate_user_id};
use socketioxide::adapter::Adapter;

/// `GET /api/v1/subscriptions`.
pub async fn list<A: Adapter>(
    State(state): State<SharedState<A>>,
    User(claims): User,
) -> Result<Json<Subscriptions>, HubError> {
    let topics = state.store.subscriptions(&claims.sub).await?;
    Ok(Json(Subscriptions { topics }))
}

/// `PUT /api/v1/subscriptions/{topic}`: subscribes every device of the user.
pub async fn subscribe<A: Adapter>(
    State(state): State<SharedState<A>>,
    WritingUser(claims): WritingUser,
    Path(topic): Path<String>,
) -> Result<Json<Subscriptions>, HubError> {
    state.membership.subscribe(&claims, &topic, None).await?;
    list(State(state), User(claims)).await
}

/// `DELETE /api/v1/subscriptions/{topic}`.
pub async fn unsubscribe<A: Adapter>(
    State(state): State<SharedState<A>>,
    WritingUser(claims): WritingUser,
    Path(topic): Path<String>,
) -> Result<Json<Subscriptions>, HubError> {
    state
        .membership
        .unsubscribe(&claims.sub, &topic, None)
        .await?;
    list(State(state), User(claims)).await
}

/// `GET /api/v1/presence/{user}` (publish key).
pub async fn presence<A: Adapter>(
    State(state): State<SharedState<A>>,
    Publisher(_): Publisher,
    Path(user): Path<String>,
) -> Result<Json<Presence>, HubError> {
    validate_user_id(&user).map_err(|e| HubError::new(ErrorCode::InvalidField, e))?;
    let devices = state.devices.count(&user).await as u64;
    Ok(Json(Presence {
        online: devices > 0,
        devices,
    }))
}
