//! Socket.IO packets: the text a client sends, parsed by the same socketioxide parser the
//! hub runs, then, on the subscribers' namespace, the handshake `auth` or the event
//! argument, and on `/publisher`, the publish events, decoded and checked by the hub's
//! own functions.
#![no_main]

use belfry_protocol::PublishRequest;
use belfry_protocol::events::{self, AckRequest, ReadRequest, SyncRequest, TopicRequest};
use belfry_server::auth::TokenSigner;
use belfry_server::socket::first_arg;
use belfry_server::socket::publisher::{LegacyArgs, legacy_form};
use belfry_server::socket::subscriber::check_handshake;
use belfry_server::membership::check_topic;
use libfuzzer_sys::fuzz_target;
use socketioxide_core::Str;
use socketioxide_core::packet::PacketData;
use socketioxide_core::parser::{Parse, ParseConfig, ParserState};
use socketioxide_parser_common::CommonParser;

#[path = "checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // Engine.IO hands the parser text frames only
    };
    let parser = CommonParser;
    let state = ParserState::default();
    let Ok(packet) = parser.decode_str(&ParseConfig::default(), &state, Str::from(text.to_owned()))
    else {
        return;
    };
    let signer = TokenSigner::new(b"fuzz-secret-0123456789abcdef0123".to_vec());
    match packet.inner {
        PacketData::Connect(auth) => {
            let auth = parser.decode_default::<serde_json::Value>(auth.as_ref());
            if let Ok((claims, _auth)) = check_handshake(&signer, auth) {
                // Only a token signed with the secret gets here.
                assert!(belfry_protocol::validate_user_id(&claims.sub).is_ok());
            }
        }
        PacketData::Event(mut value, _) | PacketData::BinaryEvent(mut value, _)
            if &*packet.ns == events::PUBLISHER_NAMESPACE =>
        {
            let Ok(event) = parser.read_event(&value).map(str::to_owned) else {
                return;
            };
            let request = match event.as_str() {
                events::NOTIFY => first_arg::<PublishRequest>(
                    parser.decode_value::<serde_json::Value>(&mut value, true),
                    "publish",
                ),
                events::NOTIFY_USER | events::NOTIFY_USERS => legacy_form(
                    parser.decode_value::<LegacyArgs>(&mut value, true),
                    event == events::NOTIFY_USERS,
                ),
                _ => return,
            };
            if let Ok(request) = request {
                checks::validate(request);
            }
        }
        PacketData::Event(mut value, _) | PacketData::BinaryEvent(mut value, _) => {
            let Ok(event) = parser.read_event(&value).map(str::to_owned) else {
                return;
            };
            let arg = parser.decode_value::<serde_json::Value>(&mut value, true);
            let claims = signer
                .verify(&signer.mint("fuzzer", Some(vec!["ops.*".into()]), 60))
                .expect("minted");
            match event.as_str() {
                events::ACK => {
                    let _ = first_arg::<AckRequest>(arg, "ack");
                }
                events::SYNC => {
                    let _ = first_arg::<SyncRequest>(arg, "sync");
                }
                events::READ => {
                    if let Ok(read) = first_arg::<ReadRequest>(arg, "read")
                        && read.validate().is_ok()
                        && let ReadRequest::Ids { ids } = &read
                    {
                        assert!(ids.len() <= belfry_protocol::limits::MAX_READ_IDS);
                    }
                }
                events::SUBSCRIBE | events::UNSUBSCRIBE => {
                    if let Ok(TopicRequest { topic }) = first_arg::<TopicRequest>(arg, "topic")
                        && check_topic(&claims, &topic).is_ok()
                    {
                        assert!(topic.starts_with("ops."), "token allows ops.* only");
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
});
