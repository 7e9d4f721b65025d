//! The Socket.IO edge: the subscribers' namespace `/` and the publishers' `/publisher`.

pub mod publisher;
pub mod subscriber;

use belfry_protocol::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;
use socketioxide::ParserError;

/// The first argument of an event (socketioxide hands a non-tuple `Data` the first
/// argument), decoded as `T`, or an error that says what was expected.
pub fn first_arg<T: DeserializeOwned>(
    arg: Result<serde_json::Value, ParserError>,
    expected: &str,
) -> Result<T, ErrorBody> {
    let first = arg.map_err(|e| {
        ErrorBody::new(
            ErrorCode::InvalidJson,
            format!("cannot decode the event (expected {expected}): {e}"),
        )
    })?;
    serde_json::from_value(first)
        .map_err(|e| ErrorBody::new(ErrorCode::InvalidField, format!("expected {expected}: {e}")))
}

/// The message a refused Socket.IO connection carries in `connect_error`: the stable code,
/// a colon, and why in plain words (`"token_expired: token expired at ..."`).
#[derive(Debug)]
pub(crate) struct ConnectRefused(pub ErrorBody);

impl std::fmt::Display for ConnectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)
    }
}
