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

/// The address of the client behind a socket's handshake (see `rate_limit.rs`).
pub(crate) fn client_address<A: socketioxide::adapter::Adapter>(
    state: &crate::state::AppState<A>,
    socket: &socketioxide::extract::SocketRef<A>,
) -> Option<crate::rate_limit::Client> {
    let parts = socket.req_parts();
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    state.limits.client_address(peer, &parts.headers)
}

/// Where Socket.IO connections come in (socketioxide's default path).
const SOCKET_IO_PATH: &str = "/socket.io/";

/// Copies the URI and headers of a Socket.IO request out of hyper's read buffer.
///
/// socketioxide keeps each connection's handshake request (URI and headers) for the
/// connection's whole life, and hyper parses those as slices of its 16 KiB read buffer,
/// so every idle socket kept that whole buffer alive (heaptrack: 16 KB per connection,
/// the largest single cost of an idle socket). Owned copies hold only the bytes of the
/// request line and headers. Other requests pass untouched.
pub fn detach_handshake<B>(req: axum::http::Request<B>) -> axum::http::Request<B> {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
    if !req.uri().path().starts_with(SOCKET_IO_PATH) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    parts.headers = headers;
    axum::http::Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_handshake_keeps_its_uri_and_headers() {
        let req = axum::http::Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(())
            .expect("request");
        let before = req.headers().clone();
        let after = detach_handshake(req);
        assert_eq!(after.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(after.headers(), &before);
        assert_eq!(after.headers().get_all("x-custom").iter().count(), 2);
    }
}
