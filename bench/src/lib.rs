//! Belfry's load generator: lean Socket.IO subscribers ([`client`]), many of them in one
//! process ([`pool`]), and the measurements taken of a hub process ([`procfs`]).

pub mod client;
pub mod pool;
pub mod procfs;

/// A user token signed with the test hubs' secret ([`belfry_testkit::SECRET`]), valid
/// for a day.
pub fn token(user: &str) -> String {
    belfry_server::auth::TokenSigner::new(belfry_testkit::SECRET).mint(user, None, 86_400)
}
