//! Namespace `/`: subscribers (user devices). Authenticates the handshake, joins the
//! user's rooms, runs the catch-up, and handles `ack`, `read`, `subscribe`,
//! `unsubscribe`, `sync` and `heartbeat`.

use super::{ConnectRefused, first_arg};
use crate::auth::{TokenSigner, UserClaims};
use crate::cluster::HubAdapter;
use crate::delivery::{self, CatchUpFrom, Session, rooms, session, session as session_of};
use crate::state::SharedState;
use belfry_protocol::events::{
    self, AckRequest, HandshakeAuth, ReadRequest, Reply, SyncRequest, TopicRequest,
};
use belfry_protocol::{ErrorBody, ErrorCode};
use socketioxide::ParserError;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

type Args = TryData<serde_json::Value>;

/// The cursor the client sent in its handshake.
#[derive(Debug, Clone, Copy)]
struct HandshakeCursor(Option<u64>);

/// Registers the namespace; returns the adapter's answer (see [`crate::cluster::HubAdapter`]).
pub fn register<A: HubAdapter>(state: &SharedState<A>) -> A::InitRes {
    let on_connect = {
        let state = state.clone();
        move |socket: SocketRef<A>| {
            let state = state.clone();
            async move { connected(state, socket).await }
        }
    };
    let authenticate = {
        let state = state.clone();
        move |socket: SocketRef<A>, TryData(auth): TryData<serde_json::Value>| {
            let state = state.clone();
            async move {
                let result = authenticate(&state, &socket, auth);
                if result.is_err() {
                    state.metrics.auth_failures_total.fetch_add(1, Relaxed);
                }
                result
            }
        }
    };
    state
        .io
        .ns(events::SUBSCRIBER_NAMESPACE, on_connect.with(authenticate))
}

fn authenticate<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    auth: Result<serde_json::Value, ParserError>,
) -> Result<(), ConnectRefused> {
    let (claims, cursor) = check_handshake(&state.tokens, auth).map_err(ConnectRefused)?;
    socket
        .extensions
        .insert(Arc::new(Session::new(claims, &state.config.limits)));
    socket.extensions.insert(HandshakeCursor(cursor));
    Ok(())
}

/// Decodes a subscriber's handshake `auth` and verifies its token: the claims and the
/// cursor the client holds, or why the connection is refused.
pub fn check_handshake(
    tokens: &TokenSigner,
    auth: Result<serde_json::Value, ParserError>,
) -> Result<(UserClaims, Option<u64>), ErrorBody> {
    let refuse = |code, msg: &str| ErrorBody::new(code, msg);
    let auth = auth.map_err(|_| refuse(ErrorCode::Unauthorized, "handshake auth is not JSON"))?;
    if auth.is_null() {
        return Err(refuse(
            ErrorCode::Unauthorized,
            "no token: send auth {\"token\": \"<user token>\", \"cursor\": <id or null>}",
        ));
    }
    let auth: HandshakeAuth = serde_json::from_value(auth).map_err(|e| {
        refuse(
            ErrorCode::Unauthorized,
            &format!("handshake auth must be {{\"token\": string, \"cursor\": id or null}}: {e}"),
        )
    })?;
    let claims = tokens.verify(&auth.token)?;
    Ok((claims, auth.cursor))
}

async fn connected<A: Adapter>(state: SharedState<A>, socket: SocketRef<A>) {
    let Some(session) = session(&socket) else {
        let _ = socket.disconnect();
        return;
    };
    // Nobody else holds the session yet. Holding its catch-up lock from here on keeps a
    // client `sync` from running before the rooms are joined.
    let Ok(catching_up) = session.catching_up().try_lock() else {
        let _ = socket.disconnect();
        return;
    };
    // Handlers first, before any await, so no early event is lost.
    register_events(&state, &socket);
    socket.on_disconnect({
        let (state, session) = (state.clone(), session.clone());
        move || {
            session.end();
            if session.uncount() {
                state.metrics.connections.fetch_sub(1, Relaxed);
            }
            async {}
        }
    });
    session.count();
    state.metrics.connections.fetch_add(1, Relaxed);
    state.metrics.connections_total.fetch_add(1, Relaxed);

    {
        // Serialised with subscribe / unsubscribe of the same user (see AppState).
        let _user = state.user_lock(&session.user).lock().await;
        socket.join([rooms::user(&session.user), rooms::ALL.to_owned()]);
        let viewer = match state.viewer(&session.user, &session.allowed).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot load subscriptions; dropping the socket");
                socket.leave_all();
                let _ = socket.disconnect();
                return;
            }
        };
        // Rooms before the catch-up reads the store: see delivery.rs.
        socket.join(
            viewer
                .topics
                .iter()
                .map(|t| rooms::topic(t))
                .collect::<Vec<_>>(),
        );
    }
    if !socket.connected() {
        // Closed while we were joining: a join after the close would stay forever. (It
        // may have closed before its disconnect handler was set: end the session here.)
        session.end();
        socket.leave_all();
        if session.uncount() {
            state.metrics.connections.fetch_sub(1, Relaxed);
        }
        return;
    }
    tracing::debug!(sid = %socket.id, user = %session.user, "subscriber connected");
    close_at_expiry(&socket, &session);

    let cursor = socket.extensions.get::<HandshakeCursor>().and_then(|c| c.0);
    delivery::catch_up_locked(
        &state,
        &socket,
        &session,
        CatchUpFrom::Cursor(cursor),
        catching_up,
    )
    .await;
}

/// Disconnects the socket when its token expires: a socket never outlives the token it
/// was opened with. The client's reconnect then meets the refusal (`token_expired`).
fn close_at_expiry<A: Adapter>(socket: &SocketRef<A>, session: &Arc<Session>) {
    let (socket, session) = (socket.clone(), session.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(session.claims.remaining()) => {
                tracing::info!(sid = %socket.id, user = %session.user, "token expired; disconnecting");
                let _ = socket.disconnect();
            }
            () = session.ended() => {}
        }
    });
}

/// Applies the socket's event rate limit.
fn within_rate(session: &Session) -> Result<(), ErrorBody> {
    let mut bucket = session.events.lock().unwrap_or_else(|p| p.into_inner());
    bucket.take(Instant::now()).map_err(|after| {
        ErrorBody::new(
            ErrorCode::RateLimited,
            format!(
                "too many events on this socket; retry in {} ms",
                after.as_millis().max(1)
            ),
        )
    })
}

fn reply<A: Adapter>(ack: AckSender<A>, result: Result<(), ErrorBody>) {
    let body = match result {
        Ok(()) => Reply::ok(),
        Err(e) => Reply::from(e),
    };
    // A client that did not ask for an ack gets nothing; a closed socket is no error.
    let _ = ack.send(&body);
}

fn register_events<A: Adapter>(state: &SharedState<A>, socket: &SocketRef<A>) {
    macro_rules! on {
        ($event:expr, $handler:ident) => {
            on!($event, $handler, true)
        };
        ($event:expr, $handler:ident, $rate_limited:expr) => {{
            let state = state.clone();
            socket.on(
                $event,
                move |socket: SocketRef<A>, TryData(args): Args, ack: AckSender<A>| {
                    let state = state.clone();
                    async move {
                        let result = match session(&socket) {
                            Some(session) => {
                                let allowed = if $rate_limited {
                                    within_rate(&session)
                                } else {
                                    Ok(())
                                };
                                match allowed {
                                    Ok(()) => $handler(&state, &socket, &session, args).await,
                                    Err(e) => Err(e),
                                }
                            }
                            None => {
                                Err(ErrorBody::new(ErrorCode::Unauthorized, "not authenticated"))
                            }
                        };
                        reply(ack, result);
                    }
                },
            );
        }};
    }
    // Acks and heartbeats are cheap (an ack at or below the last one is answered without
    // touching the store) and a client sends one per stored batch: no rate limit.
    on!(events::ACK, on_ack, false);
    on!(events::READ, on_read);
    on!(events::SUBSCRIBE, on_subscribe);
    on!(events::UNSUBSCRIBE, on_unsubscribe);
    on!(events::SYNC, on_sync);
    on!(events::HEARTBEAT, on_heartbeat, false);
}

async fn on_heartbeat<A: Adapter>(
    _state: &SharedState<A>,
    _socket: &SocketRef<A>,
    _session: &Session,
    _args: ArgsResult,
) -> Result<(), ErrorBody> {
    Ok(())
}

type ArgsResult = Result<serde_json::Value, ParserError>;

async fn on_ack<A: Adapter>(
    state: &SharedState<A>,
    _socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), ErrorBody> {
    let AckRequest { up_to } = first_arg(args, "{\"up_to\": id}")?;
    // An ack above anything published counts as the head (and cannot silence the
    // socket's later acks).
    let up_to = up_to.min(state.head());
    if session.acks_something(up_to) {
        // Written in the background, coalesced per user (see receipts.rs).
        state.acks.note(&session.user, &session.allowed, up_to);
        session.acked(up_to);
    }
    Ok(())
}

async fn on_read<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), ErrorBody> {
    let req: ReadRequest = first_arg(args, "{\"ids\": [id, ..]} or {\"up_to\": id}")?;
    state
        .mark_read(&session.claims, req, Some(socket.id))
        .await
        .map(drop)
}

async fn on_subscribe<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), ErrorBody> {
    let TopicRequest { topic } = first_arg(args, "{\"topic\": name}")?;
    state
        .subscribe(&session.claims, &topic, Some(socket.id))
        .await
        .map(drop)
}

async fn on_unsubscribe<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), ErrorBody> {
    let TopicRequest { topic } = first_arg(args, "{\"topic\": name}")?;
    state
        .unsubscribe(&session.user, &topic, Some(socket.id))
        .await
        .map(drop)
}

async fn on_sync<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), ErrorBody> {
    let SyncRequest { cursor } = first_arg(args, "{\"cursor\": id or null}")?;
    // Requests that pile up while one runs collapse into one (the latest cursor).
    if session.request_sync(cursor) {
        let (state, socket) = (state.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(session) = session_of(&socket) {
                delivery::requested_catch_up(&state, &socket, &session).await;
            }
        });
    }
    Ok(())
}
