//! The HTTP edge's error type: every failure becomes `{"error": {"code", "message"}}` with
//! the status that goes with its code (and `Retry-After` when rate limited).

use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use belfry_protocol::{ErrorBody, ErrorCode, ErrorResponse};
use std::time::Duration;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What went wrong.
    pub body: ErrorBody,
    /// For `rate_limited`: when to retry.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody::new(code, message).into()
    }

    /// A `rate_limited` error telling the client when to retry.
    pub fn rate_limited(retry_after: Duration) -> Self {
        Self {
            body: ErrorBody::new(
                ErrorCode::RateLimited,
                format!(
                    "rate limit exceeded; retry in {} s",
                    retry_after.as_secs_f64().ceil().max(1.0)
                ),
            ),
            retry_after: Some(retry_after),
        }
    }

    /// `not_found` for a path or resource.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        Self {
            body,
            retry_after: None,
        }
    }
}

impl From<StoreError> for ErrorBody {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooManySubscriptions(_) => {
                ErrorBody::new(ErrorCode::TooManySubscriptions, e.to_string())
            }
            StoreError::Closed => ErrorBody::new(ErrorCode::Unavailable, e.to_string()),
            other => {
                tracing::error!(error = %other, "store failure");
                ErrorBody::new(
                    ErrorCode::Unavailable,
                    "the store could not complete the operation; nothing was changed",
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ErrorBody::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.body.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, axum::Json(ErrorResponse { error: self.body })).into_response();
        if let Some(after) = retry_after {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
