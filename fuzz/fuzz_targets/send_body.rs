//! `POST /send` (the socket.io-notify form): the first byte picks JSON or a URL-encoded
//! form, the rest is the body.
#![no_main]

use belfry_server::http::compat::decode_send;
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    if body.len() > belfry_protocol::limits::MAX_BODY_BYTES {
        return;
    }
    if let Ok(request) = decode_send(body, kind & 1 == 1) {
        checks::validate(request);
    }
});
