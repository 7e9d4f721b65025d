//! `/api/v1/notifications`: publish, list, mark read, receipts.

use super::extract::{JsonBody, Publisher, User, WritingUser};
use crate::error::HubError;
use crate::state::SharedState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use belfry_protocol::api::{NotificationPage, ReadResult, Receipt, Receipts};
use belfry_protocol::events::ReadRequest;
use belfry_protocol::{ErrorCode, PublishRequest, PublishResponse};
use serde::Deserialize;
use socketioxide::adapter::Adapter;
use std::time::Instant;

/// `POST /api/v1/notifications` (publish key): `201 {"id", "created_at"}` once stored.
pub async fn publish<A: Adapter>(
    State(state): State<SharedState<A>>,
    Publisher(key): Publisher,
    JsonBody(req): JsonBody<PublishRequest>,
) -> Result<(StatusCode, Json<PublishResponse>), HubError> {
    let received = Instant::now();
    let p = state.publishing.publish(key, req, received).await?;
    let status = if p.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(PublishResponse {
            id: p.id,
            created_at: p.created_at,
            duplicate: p.duplicate,
        }),
    ))
}

/// Query of `GET /api/v1/notifications`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Only ids greater than this.
    #[serde(default)]
    after: Option<u64>,
    /// Page size (1 to 500, default 100).
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/v1/notifications?after=&limit=` (user token).
pub async fn list<A: Adapter>(
    State(state): State<SharedState<A>>,
    User(claims): User,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<NotificationPage>, HubError> {
    let Query(query) = query.map_err(|e| {
        HubError::new(
            ErrorCode::InvalidField,
            format!(
                "after and limit must be non-negative integers: {}",
                e.body_text()
            ),
        )
    })?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=crate::store::MAX_PAGE).contains(&limit) {
        return Err(HubError::new(
            ErrorCode::InvalidField,
            format!("limit must be 1 to {}", crate::store::MAX_PAGE),
        ));
    }
    let viewer = state
        .store
        .viewer(&claims.sub, &claims.allowed_topics())
        .await?;
    let page = state
        .store
        .page(&viewer, query.after.unwrap_or(0), limit)
        .await?;
    Ok(Json(NotificationPage {
        notifications: page.notifications,
        next: if page.more { page.last_id } else { None },
        epoch: Some(state.store.epoch().to_string()),
    }))
}

/// `POST /api/v1/notifications/read` (user token): `{"ids": [..]}` or `{"up_to": id}`.
pub async fn mark_read<A: Adapter>(
    State(state): State<SharedState<A>>,
    WritingUser(claims): WritingUser,
    JsonBody(req): JsonBody<ReadRequest>,
) -> Result<Json<ReadResult>, HubError> {
    let marked = crate::reads::mark_read(&state, &claims, req, None).await?;
    Ok(Json(ReadResult { marked }))
}

/// `GET /api/v1/notifications/{id}/receipts` (publish key).
pub async fn receipts<A: Adapter>(
    State(state): State<SharedState<A>>,
    Publisher(_): Publisher,
    Path(id): Path<String>,
) -> Result<Json<Receipts>, HubError> {
    let id: u64 = id
        .parse()
        .map_err(|_| HubError::new(ErrorCode::InvalidField, "the id must be a positive integer"))?;
    let rows = state
        .store
        .receipts(id)
        .await?
        .ok_or_else(|| HubError::not_found(format!("no notification {id}")))?;
    Ok(Json(Receipts {
        id,
        receipts: rows
            .into_iter()
            .map(|(user, delivered_at, read_at)| Receipt {
                user,
                delivered_at,
                read_at,
            })
            .collect(),
    }))
}
