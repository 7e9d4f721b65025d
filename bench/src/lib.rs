//! Belfry's load generator: lean Socket.IO subscribers ([`client`]), many of them in one
//! process ([`pool`]), the systems they run against ([`system`]), what is measured
//! ([`latency`], [`procfs`]) and the report made of it ([`report`], [`plot`]).

pub mod client;
pub mod latency;
pub mod plot;
pub mod pool;
pub mod procfs;
pub mod report;
pub mod system;

/// Signs user tokens for the system under test.
pub struct Signer(belfry_server::auth::TokenSigner);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    /// With the secret the system was started with.
    pub fn new(secret: &str) -> Self {
        Self(belfry_server::auth::TokenSigner::new(secret))
    }

    /// A day-long token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.0.mint(user, None, 86_400)
    }
}

/// A user token signed with the test hubs' secret ([`belfry_testkit::SECRET`]), valid
/// for a day.
pub fn token(user: &str) -> String {
    Signer::new(belfry_testkit::SECRET).token(user)
}
