//! Subscriptions: a user subscribes to a topic, or unsubscribes. Each change is one of
//! the batch's effects, so every node hears of it once it has committed (`feed.rs`).

use super::{Effects, Operation};
use crate::store::RoomChange;
use crate::store::db::{Conn, on};
use crate::store::{StoreError, head_id, now_ms};

/// Subscribes a user to a topic unless they already have `max` subscriptions; answers
/// `false` when they were subscribed already.
#[derive(Debug)]
pub struct Subscribe {
    /// The user.
    pub user: String,
    /// The topic.
    pub topic: String,
    /// The most subscriptions a user may have.
    pub max: u32,
}

/// Unsubscribes; answers `false` when the user was not subscribed.
#[derive(Debug)]
pub struct Unsubscribe {
    /// The user.
    pub user: String,
    /// The topic.
    pub topic: String,
}

impl Operation for Subscribe {
    type Output = bool;
    const NAME: &'static str = "subscribe";

    async fn apply(self, conn: &mut Conn<'_>, effects: &mut Effects) -> Result<bool, StoreError> {
        let added = subscribe(conn, &self.user, &self.topic, self.max).await?;
        if added {
            let from = u64::try_from(head_id(conn).await?).unwrap_or(0);
            effects.rooms.push(RoomChange::Subscribed {
                user: self.user,
                topic: self.topic,
                from,
            });
        }
        Ok(added)
    }
}

impl Operation for Unsubscribe {
    type Output = bool;
    const NAME: &'static str = "unsubscribe";

    async fn apply(self, conn: &mut Conn<'_>, effects: &mut Effects) -> Result<bool, StoreError> {
        let removed: u64 = on!(conn, c => {
            sqlx::query("DELETE FROM subscriptions WHERE user_id = $1 AND topic = $2")
                .bind(&self.user)
                .bind(&self.topic)
                .execute(c)
                .await?
                .rows_affected()
        });
        if removed > 0 {
            effects.rooms.push(RoomChange::Unsubscribed {
                user: self.user,
                topic: self.topic,
            });
        }
        Ok(removed > 0)
    }
}

async fn subscribe(
    conn: &mut Conn<'_>,
    user: &str,
    topic: &str,
    max: u32,
) -> Result<bool, StoreError> {
    let (exists, count): (i64, i64) = on!(conn, c => {
        sqlx::query_as(
            "SELECT count(CASE WHEN topic = $2 THEN 1 END), count(*) FROM subscriptions \
             WHERE user_id = $1",
        )
        .bind(user)
        .bind(topic)
        .fetch_one(c)
        .await?
    });
    if exists > 0 {
        return Ok(false);
    }
    if count >= i64::from(max) {
        return Err(StoreError::TooManySubscriptions(max));
    }
    // DO NOTHING: another node may have stored the same subscription meanwhile.
    let added: u64 = on!(conn, c => {
        sqlx::query(
            "INSERT INTO subscriptions (user_id, topic, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, topic) DO NOTHING",
        )
        .bind(user)
        .bind(topic)
        .bind(now_ms())
        .execute(c)
        .await?
        .rows_affected()
    });
    Ok(added > 0)
}
