//! `POST /api/v1/notifications` and the publisher namespace's `publish`: a JSON body
//! decoded and validated exactly as the hub does.
#![no_main]

use belfry_protocol::PublishRequest;
use belfry_server::http::extract::decode_json;
use libfuzzer_sys::fuzz_target;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    if data.len() > belfry_protocol::limits::MAX_BODY_BYTES {
        return; // the router refuses larger bodies before decoding
    }
    if let Ok(request) = decode_json::<PublishRequest>(data) {
        checks::validate(request);
    }
});
