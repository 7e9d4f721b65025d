//! Request extractors: bearer credentials (user token or publish key) and a JSON body
//! reader whose every failure is a stable error code.

use crate::auth::UserClaims;
use crate::error::HubError;
use crate::rate_limit::Client;
use crate::state::SharedState;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use belfry_protocol::ErrorCode;
use serde::de::DeserializeOwned;
use socketioxide::adapter::Adapter;
use std::net::SocketAddr;

/// The `Authorization: Bearer <credential>` value, if any.
fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credential.trim())
}

/// A request authenticated with a user token.
#[derive(Debug, Clone)]
pub struct User(pub UserClaims);

/// The address of the client that made a request (see `rate_limit.rs`).
pub fn client_address<A: Adapter>(parts: &Parts, state: &SharedState<A>) -> Option<Client> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    state.limits.client_address(peer, &parts.headers)
}

impl<A: Adapter> FromRequestParts<SharedState<A>> for User {
    type Rejection = HubError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState<A>,
    ) -> Result<Self, HubError> {
        let address = client_address(parts, state);
        let token = bearer(parts);
        state.limits.authenticate(address, || {
            let token = token.ok_or_else(|| {
                HubError::new(
                    ErrorCode::Unauthorized,
                    "send a user token: Authorization: Bearer <token>",
                )
            })?;
            if state.keys.check(token).is_some() {
                return Err(HubError::new(
                    ErrorCode::Unauthorized,
                    "this is a publish key; this endpoint needs a user token",
                ));
            }
            Ok(User(state.tokens.verify(token)?))
        })
    }
}

/// A request authenticated with a user token that writes (marks read, subscribes): the
/// user's write rate limit applies.
#[derive(Debug, Clone)]
pub struct WritingUser(pub UserClaims);

impl<A: Adapter> FromRequestParts<SharedState<A>> for WritingUser {
    type Rejection = HubError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState<A>,
    ) -> Result<Self, HubError> {
        let User(claims) = User::from_request_parts(parts, state).await?;
        state.limits.user_write(&claims.sub)?;
        Ok(WritingUser(claims))
    }
}

/// A request authenticated with a publish key (the key's index).
#[derive(Debug, Clone, Copy)]
pub struct Publisher(pub usize);

impl Publisher {
    /// Checks a publish key taken from any header of a request from `address`.
    pub fn check<A: Adapter>(
        state: &SharedState<A>,
        address: Option<Client>,
        key: Option<&str>,
    ) -> Result<Self, HubError> {
        state
            .limits
            .authenticate(address, || Self::check_key(state, key))
    }

    fn check_key<A: Adapter>(state: &SharedState<A>, key: Option<&str>) -> Result<Self, HubError> {
        let key = key.ok_or_else(|| {
            HubError::new(
                ErrorCode::Unauthorized,
                "send a publish key: Authorization: Bearer <publish key>",
            )
        })?;
        match state.keys.check(key) {
            Some(index) => Ok(Publisher(index)),
            None if state.tokens.verify(key).is_ok() => Err(HubError::new(
                ErrorCode::InvalidPublishKey,
                "this is a user token; publishing needs a publish key",
            )),
            None => Err(HubError::new(
                ErrorCode::InvalidPublishKey,
                "this publish key is not accepted",
            )),
        }
    }
}

impl<A: Adapter> FromRequestParts<SharedState<A>> for Publisher {
    type Rejection = HubError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState<A>,
    ) -> Result<Self, HubError> {
        Publisher::check(state, client_address(parts, state), bearer(parts))
    }
}

/// Reads the whole body (within the router's body limit), mapping an oversize body to
/// `payload_too_large`.
pub async fn body_bytes<A: Adapter>(
    req: Request,
    state: &SharedState<A>,
) -> Result<Bytes, HubError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HubError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the body is larger than {} bytes",
                    belfry_protocol::limits::MAX_BODY_BYTES
                ),
            )
        } else {
            HubError::new(ErrorCode::InvalidJson, rejection.body_text())
        }
    })
}

/// Whether the request says its body is JSON.
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
}

/// Decodes JSON, telling a syntax error (`invalid_json`) from a shape error
/// (`invalid_field`).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, HubError> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let code = match e.classify() {
            Category::Data => ErrorCode::InvalidField,
            Category::Syntax | Category::Eof | Category::Io => ErrorCode::InvalidJson,
        };
        HubError::new(code, format!("cannot decode the body: {e}"))
    })
}

/// A JSON body: `415` unless the request says `application/json`, `413` over the limit,
/// `400` when it does not decode.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<A: Adapter, T: DeserializeOwned> FromRequest<SharedState<A>> for JsonBody<T> {
    type Rejection = HubError;

    async fn from_request(req: Request, state: &SharedState<A>) -> Result<Self, HubError> {
        if !is_json(req.headers()) {
            return Err(HubError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = body_bytes(req, state).await?;
        decode_json(&bytes).map(JsonBody)
    }
}
