//! Publishing, as every edge does it (HTTP, the `/publisher` namespace, `/send`): the
//! key's rate limit, validation, the idempotency key scoped to the publish key, the time
//! to live within the hub's bounds, and the store's answer once it is durable. Delivery
//! follows from the store's feed, in id order.

use crate::config::Config;
use crate::error::HubError;
use crate::metrics::Metrics;
use crate::rate_limit::{Limit, quota};
use crate::store::{Publish, Published, WriterHandle};
use belfry_protocol::PublishRequest;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The publish use case.
#[derive(Debug)]
pub struct Publishing {
    writer: WriterHandle,
    metrics: Arc<Metrics>,
    /// Per publish key (indexed like the keys), a fingerprint that scopes its
    /// idempotency keys, so two backends using the same idempotency key never swallow
    /// each other's publishes.
    scopes: Vec<String>,
    /// One rate limit per publish key.
    limits: Vec<Limit>,
    default_ttl: Duration,
    max_ttl: Duration,
}

impl Publishing {
    /// Publishing to `writer` with the keys, limits and time to live of `config`.
    pub fn new(config: &Config, writer: WriterHandle, metrics: Arc<Metrics>) -> Self {
        Self {
            writer,
            metrics,
            scopes: config
                .publish_keys
                .iter()
                .map(|k| key_fingerprint(k))
                .collect(),
            limits: config
                .publish_keys
                .iter()
                .map(|_| Limit::new(quota(config.publish_rate, config.publish_burst)))
                .collect(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
        }
    }

    /// Rate-limits, validates and stores a publish made with the key at `key_index`;
    /// answers once it is durable.
    pub async fn publish(
        &self,
        key_index: usize,
        req: PublishRequest,
        received: Instant,
    ) -> Result<Published, HubError> {
        if let Some(limit) = self.limits.get(key_index)
            && let Err(retry_after) = limit.check()
        {
            self.metrics.rate_limited_total.increment(1);
            return Err(HubError::RateLimited {
                message: format!(
                    "rate limit exceeded; retry in {} s",
                    retry_after.as_secs_f64().ceil().max(1.0)
                ),
                retry_after,
            });
        }
        let mut valid = req.validate()?;
        if let (Some(key), Some(scope)) = (valid.idempotency_key.take(), self.scopes.get(key_index))
        {
            valid.idempotency_key = Some(format!("{scope}/{key}"));
        }
        let ttl = valid
            .ttl
            .map(Duration::from_secs)
            .unwrap_or(self.default_ttl)
            .min(self.max_ttl);
        let published = self
            .writer
            .submit(Publish {
                request: Box::new(valid),
                ttl_secs: ttl.as_secs().max(1),
                received,
            })
            .await?;
        if published.duplicate {
            self.metrics.publish_duplicates_total.increment(1);
        } else {
            self.metrics.publishes_total.increment(1);
        }
        Ok(published)
    }
}

/// A short, stable fingerprint of a publish key (never the key itself).
fn key_fingerprint(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_short_and_never_the_key() {
        let a = key_fingerprint("bfk_the_first_key_of_all");
        assert_eq!(a, key_fingerprint("bfk_the_first_key_of_all"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, key_fingerprint("bfk_the_other_key_of_all"));
        assert!(!a.contains("bfk"));
    }
}
