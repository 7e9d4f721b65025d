//! The hub's one error type, and how each edge answers it: an HTTP response
//! (`{"error": {"code", "message"}}` with the status of its code, `Retry-After` when rate
//! limited, `WWW-Authenticate` when unauthorized), a subscriber event's ack and a
//! publisher's ack (the same body). Store failures are logged once, at the edge.

use crate::auth::TokenError;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use belfry_protocol::events::{PublishReply, Reply};
use belfry_protocol::{ErrorBody, ErrorCode, ErrorResponse};
use std::time::Duration;

/// Why the hub refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Refused, with a stable code: bad input, credentials, permissions, limits.
    #[error("{0}")]
    Refused(ErrorBody),
    /// A rate limit: `retry_after` until the next attempt may succeed.
    #[error("{message}")]
    RateLimited {
        /// What was limited, in words.
        message: String,
        /// How long to wait.
        retry_after: Duration,
    },
    /// The store could not do it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl HubError {
    /// Refused with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HubError::Refused(ErrorBody::new(code, message))
    }

    /// `not_found` for a path or resource.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, what)
    }

    /// A rate limit on `what` (`"publishes with this key"`): retry after `retry_after`.
    pub fn rate_limited(what: &str, retry_after: Duration) -> Self {
        HubError::RateLimited {
            message: format!(
                "too many {what}; retry in {} s",
                retry_after.as_secs_f64().ceil().max(1.0)
            ),
            retry_after,
        }
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            HubError::Refused(body) => body.code,
            HubError::RateLimited { .. } => ErrorCode::RateLimited,
            HubError::Store(StoreError::TooManySubscriptions(_)) => ErrorCode::TooManySubscriptions,
            HubError::Store(_) => ErrorCode::Unavailable,
        }
    }

    /// The body every edge answers with.
    pub fn body(&self) -> ErrorBody {
        match self {
            HubError::Refused(body) => body.clone(),
            HubError::RateLimited { message, .. } => {
                ErrorBody::new(ErrorCode::RateLimited, message.clone())
            }
            HubError::Store(e @ StoreError::TooManySubscriptions(_)) => {
                ErrorBody::new(ErrorCode::TooManySubscriptions, e.to_string())
            }
            HubError::Store(e @ StoreError::Closed) => {
                ErrorBody::new(ErrorCode::Unavailable, e.to_string())
            }
            HubError::Store(_) => ErrorBody::new(
                ErrorCode::Unavailable,
                "the store could not complete the operation; nothing was changed",
            ),
        }
    }

    /// Logs what the hub must hear of (a store failure) and gives the body to answer.
    pub fn answer(&self) -> ErrorBody {
        if let HubError::Store(e) = self
            && !matches!(e, StoreError::Closed | StoreError::TooManySubscriptions(_))
        {
            tracing::error!(error = %e, "store failure");
        }
        self.body()
    }

    /// The ack of a subscriber event that failed.
    pub fn reply(&self) -> Reply {
        Reply::Error {
            error: self.answer(),
        }
    }

    /// The ack of a publisher event that failed.
    pub fn publish_reply(&self) -> PublishReply {
        PublishReply::Error {
            error: self.answer(),
        }
    }
}

impl From<ErrorBody> for HubError {
    fn from(body: ErrorBody) -> Self {
        HubError::Refused(body)
    }
}

impl From<TokenError> for HubError {
    fn from(e: TokenError) -> Self {
        HubError::Refused(e.into())
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let body = self.answer();
        let status = StatusCode::from_u16(body.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(ErrorResponse { error: body })).into_response();
        if let HubError::RateLimited { retry_after, .. } = self {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_edge_answers_the_same_body() {
        let limited =
            HubError::rate_limited("publishes with this key", Duration::from_millis(1500));
        let response = limited.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");

        let store = HubError::Store(StoreError::Commit("disk I/O error".into()));
        let body = store.body();
        assert_eq!(body.code, ErrorCode::Unavailable);
        assert!(
            !body.message.contains("disk"),
            "internals stay inside: {}",
            body.message
        );
        match store.reply() {
            Reply::Error { error } => assert_eq!(error, body),
            Reply::Ok { .. } => panic!("an error reply"),
        }
        match store.publish_reply() {
            PublishReply::Error { error } => assert_eq!(error, body),
            PublishReply::Published(_) => panic!("an error reply"),
        }
        let full = HubError::Store(StoreError::TooManySubscriptions(2));
        assert_eq!(full.code(), ErrorCode::TooManySubscriptions);
        let unauthorized = HubError::new(ErrorCode::Unauthorized, "send a token").into_response();
        assert_eq!(unauthorized.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
