//! Namespace `/`: subscribers (user devices). Authenticates the handshake, joins the
//! user's rooms, runs the catch-up, and handles `ack`, `read`, `subscribe`,
//! `unsubscribe`, `sync` and `heartbeat`.

use super::{ConnectRefused, first_arg};
use crate::auth::{TokenSigner, UserClaims};
use crate::catch_up::{self, CatchUpFrom};
use crate::cluster::HubAdapter;
use crate::error::HubError;
use crate::reads;
use crate::session::{self, Session};
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

type Args = TryData<serde_json::Value>;

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
                let result = authenticate(&state, &socket, auth).await;
                // Refused credentials, not refusals of a valid token (a limit, an epoch).
                if let Err(ConnectRefused(body)) = &result
                    && matches!(
                        body.code,
                        ErrorCode::Unauthorized
                            | ErrorCode::TokenMalformed
                            | ErrorCode::TokenBadSignature
                            | ErrorCode::TokenExpired
                    )
                {
                    state.metrics.auth_failures_total.increment(1);
                }
                result
            }
        }
    };
    state
        .io
        .ns(events::SUBSCRIBER_NAMESPACE, on_connect.with(authenticate))
}

/// The connect middleware: the token (throttled per client address), then the user's
/// connect rate (before anything that reads the store), the epoch and the device count.
async fn authenticate<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    auth: Result<serde_json::Value, ParserError>,
) -> Result<(), ConnectRefused> {
    let address = super::client_address(state, socket);
    let (claims, auth) = state
        .limits
        .authenticate(address, || Ok(check_handshake(&state.tokens, auth)?))
        .map_err(|e| ConnectRefused(e.answer()))?;
    state
        .limits
        .connect(&claims.sub)
        .map_err(|e| ConnectRefused(e.answer()))?;
    // Read once: the session is let in under the epoch it was checked against.
    let mut epoch = state.store.epoch();
    if let Some(theirs) = &auth.epoch
        && **theirs != *epoch
    {
        match now_in_epoch(state, theirs).await {
            Some(now) => epoch = now,
            None => {
                // The cursor counts ids of a store this one is not (a backup was restored, or the
                // store replaced): the client must start over, not resume.
                return Err(ConnectRefused(ErrorBody::new(
                    ErrorCode::EpochChanged,
                    "this hub's store is in another epoch than your cursor (a backup was \
                     restored, or the store replaced): forget the cursor and the ids seen, \
                     and connect with cursor 0 and no epoch",
                )));
            }
        }
    }
    let cursor = auth.cursor;
    let slot = state
        .devices
        .take_slot(&claims.sub, state.config.max_devices as usize)
        .map_err(|devices| {
            ConnectRefused(ErrorBody::new(
                ErrorCode::TooManyDevices,
                format!(
                    "{} already has {devices} devices connected (at most {}); close one first",
                    claims.sub, state.config.max_devices
                ),
            ))
        })?;
    let session = Session::new(claims, cursor, epoch, &state.config);
    session.hold(slot);
    socket.extensions.insert(Arc::new(session));
    Ok(())
}

/// Whether the store is in `theirs` after all: another node may have renewed the epoch
/// moments ago, before this node's periodic check saw it (`store/feed.rs`). Asked only when
/// a client's epoch differs, of a client whose token holds and within its connect rate;
/// it only reads the stored epoch (and follows it), never renews it.
async fn now_in_epoch<A: Adapter>(state: &SharedState<A>, theirs: &str) -> Option<Arc<str>> {
    match state.store.refresh_epoch().await {
        Ok(epoch) => (*epoch == *theirs).then_some(epoch),
        Err(e) => {
            tracing::warn!(error = %e, "cannot re-read the store's epoch");
            None
        }
    }
}

/// Decodes a subscriber's handshake `auth` and verifies its token: the claims and the
/// rest of what the client sent (its cursor and epoch), or why the connection is refused.
pub fn check_handshake(
    tokens: &TokenSigner,
    auth: Result<serde_json::Value, ParserError>,
) -> Result<(UserClaims, HandshakeAuth), ErrorBody> {
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
    Ok((claims, auth))
}

async fn connected<A: Adapter>(state: SharedState<A>, socket: SocketRef<A>) {
    let Some(session) = session::of(&socket) else {
        let _ = socket.disconnect();
        return;
    };
    // Nobody else holds the session yet. Holding its catch-up lock from here on keeps a
    // client `sync` from running before the rooms are joined.
    let Ok(catching_up) = session.catching_up().try_lock() else {
        session.end();
        let _ = socket.disconnect();
        return;
    };
    // Handlers first, before any await, so no early event is lost.
    register_events(&state, &socket);
    socket.on_disconnect({
        let (state, session) = (state.clone(), session.clone());
        move |socket: SocketRef<A>, reason: socketioxide::socket::DisconnectReason| {
            tracing::debug!(sid = %socket.id, user = %session.user, %reason, "disconnected");
            session.end();
            if session.uncount() {
                state.metrics.connections.decrement(1.0);
            }
            async {}
        }
    });
    session.count();
    state.metrics.connections.increment(1.0);
    state.metrics.connections_total.increment(1);

    {
        // Serialised with subscribe / unsubscribe of the same user (see membership.rs).
        let _user = state.membership.user_lock(&session.user).lock().await;
        if let Err(e) = state.membership.join_on_connect(&socket, &session).await {
            tracing::error!(error = %e, "cannot load subscriptions; dropping the socket");
            socket.leave_all();
            let _ = socket.disconnect();
            return;
        }
    }
    if !socket.connected() {
        // Closed while we were joining: a join after the close would stay forever. (It
        // may have closed before its disconnect handler was set: end the session here.)
        session.end();
        socket.leave_all();
        if session.uncount() {
            state.metrics.connections.decrement(1.0);
        }
        return;
    }
    tracing::debug!(sid = %socket.id, user = %session.user, "subscriber connected");
    close_at_expiry(&socket, &session);

    catch_up::catch_up_locked(
        &state,
        &socket,
        &session,
        CatchUpFrom::Cursor(session.cursor),
        catching_up,
    )
    .await;
}

/// Closes the socket when its token expires: a socket never outlives the token it was
/// opened with. The client's reconnect then meets the refusal (`token_expired`). From the
/// expiry on, nothing is served on it (events are refused, a catch-up stops before its
/// next batch), and it is disconnected whatever its send buffer holds
/// ([`session::disconnect`]).
fn close_at_expiry<A: Adapter>(socket: &SocketRef<A>, session: &Arc<Session>) {
    let (socket, session) = (socket.clone(), session.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(session.claims.remaining()) => {}
            () = session.ended() => return,
        }
        tracing::info!(sid = %socket.id, user = %session.user, "token expired; disconnecting");
        session::disconnect(&socket);
    });
}

/// Applies the socket's event rate limit.
fn within_rate(session: &Session) -> Result<(), HubError> {
    session
        .events
        .check()
        .map_err(|retry_after| HubError::RateLimited {
            message: format!(
                "too many events on this socket; retry in {} ms",
                retry_after.as_millis().max(1)
            ),
            retry_after,
        })
}

fn reply<A: Adapter>(ack: AckSender<A>, result: Result<(), HubError>) {
    let body = match result {
        Ok(()) => Reply::ok(),
        Err(e) => e.reply(),
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
                        let result = match session::of(&socket) {
                            Some(session) => {
                                // Nothing is served on expired claims, or on the
                                // ids of an older epoch, whatever the event (the
                                // socket is being closed).
                                let allowed = match session.authorized() {
                                    Err(e) => Err(HubError::from(e)),
                                    Ok(()) if *session.epoch != *state.store.epoch() => {
                                        // In case the epoch's change missed it.
                                        if session.send_away() {
                                            session::disconnect(&socket);
                                        }
                                        Err(HubError::new(
                                            ErrorCode::EpochChanged,
                                            "the hub's store is in another epoch now: \
                                             reconnect with cursor 0 and no epoch",
                                        ))
                                    }
                                    Ok(()) if $rate_limited => within_rate(&session),
                                    Ok(()) => Ok(()),
                                };
                                match allowed {
                                    Ok(()) => $handler(&state, &socket, &session, args).await,
                                    Err(e) => Err(e),
                                }
                            }
                            None => {
                                Err(HubError::new(ErrorCode::Unauthorized, "not authenticated"))
                            }
                        };
                        reply(ack, result);
                    }
                },
            );
        }};
    }
    // Acks are cheap (one at or below the last is answered without touching anything)
    // and a client sends one per stored batch: no rate limit. Every other event counts,
    // heartbeats too (a client sends one every few seconds).
    on!(events::ACK, on_ack, false);
    on!(events::READ, on_read);
    on!(events::SUBSCRIBE, on_subscribe);
    on!(events::UNSUBSCRIBE, on_unsubscribe);
    on!(events::SYNC, on_sync);
    on!(events::HEARTBEAT, on_heartbeat);
}

async fn on_heartbeat<A: Adapter>(
    _state: &SharedState<A>,
    _socket: &SocketRef<A>,
    _session: &Session,
    _args: ArgsResult,
) -> Result<(), HubError> {
    Ok(())
}

type ArgsResult = Result<serde_json::Value, ParserError>;

async fn on_ack<A: Adapter>(
    state: &SharedState<A>,
    _socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), HubError> {
    let AckRequest { up_to } = first_arg(args, "{\"up_to\": id}")?;
    // An ack above anything published counts as the head (and cannot silence the
    // socket's later acks).
    let up_to = up_to.min(state.head.get());
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
) -> Result<(), HubError> {
    state.limits.user_write(&session.user)?;
    let req: ReadRequest = first_arg(args, "{\"ids\": [id, ..]} or {\"up_to\": id}")?;
    reads::mark_read(state, &session.claims, req, Some(socket.id))
        .await
        .map(drop)
}

async fn on_subscribe<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), HubError> {
    state.limits.user_write(&session.user)?;
    let TopicRequest { topic } = first_arg(args, "{\"topic\": name}")?;
    state
        .membership
        .subscribe(&session.claims, &topic, Some(socket.id))
        .await
        .map(drop)
}

async fn on_unsubscribe<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), HubError> {
    state.limits.user_write(&session.user)?;
    let TopicRequest { topic } = first_arg(args, "{\"topic\": name}")?;
    state
        .membership
        .unsubscribe(&session.user, &topic, Some(socket.id))
        .await
        .map(drop)
}

async fn on_sync<A: Adapter>(
    state: &SharedState<A>,
    socket: &SocketRef<A>,
    session: &Session,
    args: ArgsResult,
) -> Result<(), HubError> {
    let SyncRequest { cursor } = first_arg(args, "{\"cursor\": id or null}")?;
    // Requests that pile up while one runs collapse into one (the latest cursor).
    if session.request_sync(cursor) {
        let (state, socket) = (state.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(session) = session::of(&socket) {
                catch_up::requested_catch_up(&state, &socket, &session).await;
            }
        });
    }
    Ok(())
}
