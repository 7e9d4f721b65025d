//! Namespace `/publisher`: backends publishing over Socket.IO. Authenticates with a
//! publish key; `notify` takes the HTTP publish body, and `notify-user` /
//! `notify-users` take the `[user(s), event, payload]` forms many backends already emit.

use super::{ConnectRefused, first_arg};
use crate::cluster::HubAdapter;
use crate::error::HubError;
use crate::state::SharedState;
use belfry_protocol::events::{self, PublishReply, PublisherAuth};
use belfry_protocol::{ErrorBody, ErrorCode, PublishRequest, PublishResponse};
use socketioxide::ParserError;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use std::time::Instant;

/// The index of the publish key a publisher socket authenticated with.
#[derive(Debug, Clone, Copy)]
struct KeyIndex(usize);

/// Registers the namespace; returns the adapter's answer (see [`crate::cluster::HubAdapter`]).
pub fn register<A: HubAdapter>(state: &SharedState<A>) -> A::InitRes {
    let on_connect = {
        let state = state.clone();
        move |socket: SocketRef<A>| {
            register_events(&state, &socket);
            async {}
        }
    };
    let authenticate = {
        let state = state.clone();
        move |socket: SocketRef<A>, TryData(auth): TryData<serde_json::Value>| {
            let state = state.clone();
            async move {
                let address = super::client_address(&state, &socket);
                let index = state
                    .limits
                    .authenticate(address, || {
                        let auth: PublisherAuth = auth
                            .ok()
                            .and_then(|v| serde_json::from_value(v).ok())
                            .ok_or_else(|| {
                                HubError::new(
                                    ErrorCode::Unauthorized,
                                    "send auth {\"key\": \"<publish key>\"}",
                                )
                            })?;
                        state.keys.check(&auth.key).ok_or_else(|| {
                            HubError::new(
                                ErrorCode::InvalidPublishKey,
                                "this publish key is not accepted",
                            )
                        })
                    })
                    .map_err(|e| ConnectRefused(e.answer()))?;
                socket.extensions.insert(KeyIndex(index));
                Ok::<(), ConnectRefused>(())
            }
        }
    };
    state
        .io
        .ns(events::PUBLISHER_NAMESPACE, on_connect.with(authenticate))
}

fn register_events<A: Adapter>(state: &SharedState<A>, socket: &SocketRef<A>) {
    let notify = state.clone();
    socket.on(
        events::NOTIFY,
        move |socket: SocketRef<A>, TryData(arg): TryData<serde_json::Value>, ack: AckSender<A>| {
            let state = notify.clone();
            async move {
                let request = first_arg(arg, "a publish request object");
                reply(&state, &socket, ack, request).await;
            }
        },
    );
    for (event, many) in [(events::NOTIFY_USER, false), (events::NOTIFY_USERS, true)] {
        let state = state.clone();
        socket.on(
            event,
            move |socket: SocketRef<A>, TryData(args): TryData<LegacyArgs>, ack: AckSender<A>| {
                let state = state.clone();
                async move {
                    let request = legacy_form(args, many);
                    reply(&state, &socket, ack, request).await;
                }
            },
        );
    }
}

async fn reply<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    ack: AckSender<A>,
    request: Result<PublishRequest, ErrorBody>,
) {
    let received = Instant::now();
    let Some(_in_flight) = state.drain.begin() else {
        let error = ErrorBody::new(ErrorCode::Unavailable, "the hub is shutting down");
        let _ = ack.send(&PublishReply::Error { error });
        return;
    };
    let reply = match (socket.extensions.get::<KeyIndex>(), request) {
        (None, _) => PublishReply::Error {
            error: ErrorBody::new(ErrorCode::Unauthorized, "not authenticated"),
        },
        (Some(_), Err(error)) => PublishReply::Error { error },
        (Some(KeyIndex(key)), Ok(req)) => {
            match state.publishing.publish(key, req, received).await {
                Ok(p) => PublishReply::Published(PublishResponse {
                    id: p.id,
                    created_at: p.created_at,
                    duplicate: p.duplicate,
                }),
                Err(e) => e.publish_reply(),
            }
        }
    };
    let _ = ack.send(&reply);
}

/// The three arguments of `notify-user` / `notify-users`.
pub type LegacyArgs = (serde_json::Value, serde_json::Value, serde_json::Value);

/// Decodes `notify-user` (`many: false`) or `notify-users` (`many: true`) into the
/// publish request it stands for (still to be validated).
pub fn legacy_form(
    args: Result<LegacyArgs, ParserError>,
    many: bool,
) -> Result<PublishRequest, ErrorBody> {
    let shape = if many {
        "three arguments: [user_id, ..], event, payload"
    } else {
        "three arguments: user_id, event, payload"
    };
    let (who, event, payload) =
        args.map_err(|e| ErrorBody::new(ErrorCode::InvalidJson, format!("expected {shape}: {e}")))?;
    let user = |v: serde_json::Value| match v {
        serde_json::Value::String(u) => Some(u),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let bad_users = || {
        ErrorBody::field(
            ErrorCode::InvalidField,
            "users",
            format!("expected {shape}"),
        )
    };
    let users: Vec<String> = match (many, who) {
        (false, v) => vec![user(v).ok_or_else(bad_users)?],
        (true, serde_json::Value::Array(list)) => list
            .into_iter()
            .map(user)
            .collect::<Option<_>>()
            .ok_or_else(bad_users)?,
        (true, _) => return Err(bad_users()),
    };
    let serde_json::Value::String(event) = event else {
        return Err(ErrorBody::field(
            ErrorCode::InvalidField,
            "event",
            format!("expected {shape} with a string event"),
        ));
    };
    let targets = users.into_iter().map(|u| format!("user:{u}")).collect();
    Ok(legacy_request(targets, event, payload))
}

/// Maps a free-form `(event, payload)` onto a publish request: `title`, `body` (or
/// `message`), `url` and `priority` are taken from the payload when they are there, the
/// title falls back to the event name, and the whole payload travels as `data`.
pub(crate) fn legacy_request(
    targets: Vec<String>,
    event: String,
    payload: serde_json::Value,
) -> PublishRequest {
    let text = |key: &str| payload.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let title = text("title").unwrap_or_else(|| event.clone());
    let body = text("body").or_else(|| text("message"));
    let url = text("url");
    let priority = payload
        .get("priority")
        .and_then(|p| serde_json::from_value(p.clone()).ok());
    PublishRequest {
        to: Some(targets),
        title: Some(title),
        event: Some(event),
        body,
        priority,
        url,
        data: (!payload.is_null()).then_some(payload),
        ..Default::default()
    }
}
