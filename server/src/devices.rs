//! A user's devices on every node: events to all of them (but the one a change came
//! from), and how many are connected.

use belfry_protocol::{Target, events};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;

/// The room of a user's devices: named like the target (see `membership.rs`).
fn user_room(user: &str) -> String {
    Target::User(user.to_owned()).to_string()
}

/// Reaches a user's devices. Cheap to clone.
pub struct Devices<A: Adapter> {
    io: SocketIo<A>,
}

impl<A: Adapter> Clone for Devices<A> {
    fn clone(&self) -> Self {
        Self {
            io: self.io.clone(),
        }
    }
}

impl<A: Adapter> Devices<A> {
    /// The devices of the subscribers' namespace of `io`.
    pub fn new(io: SocketIo<A>) -> Self {
        Self { io }
    }

    /// The user's connected devices, except the socket the change came from (a broadcast
    /// from that socket leaves the sender out); `None` once the namespace is gone.
    fn of(&self, user: &str, except: Option<Sid>) -> Option<BroadcastOperators<A>> {
        let room = user_room(user);
        let ns = self.io.of(events::SUBSCRIBER_NAMESPACE)?;
        Some(match except.and_then(|sid| ns.get_socket(sid)) {
            Some(sender) => sender.to(room),
            None => ns.to(room),
        })
    }

    /// Emits to the user's devices on every node; while the other nodes cannot be
    /// reached, to this node's (the others catch up once the link is back).
    pub async fn emit<T: serde::Serialize + ?Sized>(
        &self,
        user: &str,
        except: Option<Sid>,
        event: &str,
        payload: &T,
    ) {
        let Some(devices) = self.of(user, except) else {
            return;
        };
        if let Err(e) = devices.emit(event, payload).await {
            tracing::debug!(error = %e, event, "cannot reach the other nodes; telling this node's devices");
            if let Some(devices) = self.of(user, except)
                && let Err(e) = devices.local().emit(event, payload).await
            {
                tracing::debug!(error = %e, event, "telling the user's devices");
            }
        }
    }

    /// How many devices of `user` are connected, on every node (on this one only while
    /// the others cannot be reached).
    pub async fn count(&self, user: &str) -> usize {
        if let Some(ns) = self.io.of(events::SUBSCRIBER_NAMESPACE) {
            match ns.to(user_room(user)).fetch_sockets().await {
                Ok(sockets) => return sockets.len(),
                Err(e) => tracing::debug!(error = %e, "cannot count devices on other nodes"),
            }
        }
        self.count_here(user)
    }

    /// How many devices of `user` are connected to this node.
    pub fn count_here(&self, user: &str) -> usize {
        self.io
            .of(events::SUBSCRIBER_NAMESPACE)
            .map(|ns| ns.to(user_room(user)).local().sockets().len())
            .unwrap_or(0)
    }
}

impl<A: Adapter> std::fmt::Debug for Devices<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices").finish_non_exhaustive()
    }
}
