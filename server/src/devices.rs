//! A user's devices on every node: events to all of them (but the one a change came
//! from), and how many are connected. On this node, each connected device holds one of
//! its user's [`DeviceSlot`]s, taken before its socket is accepted: so however many
//! connect at once, no more than `--max-devices` get in.

use belfry_protocol::{Target, events};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::operators::BroadcastOperators;
use socketioxide::socket::Sid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The room of a user's devices: named like the target (see `membership.rs`).
fn user_room(user: &str) -> String {
    Target::User(user.to_owned()).to_string()
}

/// How many slots each user holds on this node. A std mutex: a lookup and an update,
/// never held across an await.
type Held = Arc<Mutex<HashMap<String, usize>>>;

/// Reaches a user's devices. Cheap to clone.
pub struct Devices<A: Adapter> {
    io: SocketIo<A>,
    held: Held,
}

impl<A: Adapter> Clone for Devices<A> {
    fn clone(&self) -> Self {
        Self {
            io: self.io.clone(),
            held: self.held.clone(),
        }
    }
}

/// One connected (or connecting) device's place among its user's at most `max` on this
/// node; given back when dropped.
#[derive(Debug)]
pub struct DeviceSlot {
    held: Held,
    user: String,
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.user);
            }
        }
    }
}

fn lock(held: &Held) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    held.lock().unwrap_or_else(|p| p.into_inner())
}

impl<A: Adapter> Devices<A> {
    /// The devices of the subscribers' namespace of `io`.
    pub fn new(io: SocketIo<A>) -> Self {
        Self {
            io,
            held: Held::default(),
        }
    }

    /// A slot for one more device of `user` on this node, or, when `max` are taken, how
    /// many are.
    pub fn take_slot(&self, user: &str, max: usize) -> Result<DeviceSlot, usize> {
        let mut held = lock(&self.held);
        let n = held.entry(user.to_owned()).or_default();
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(DeviceSlot {
            held: self.held.clone(),
            user: user.to_owned(),
        })
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
