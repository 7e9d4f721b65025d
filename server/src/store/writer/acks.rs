//! Delivery acknowledgements: many devices' acks at once, as delivery receipts.

use super::{Effects, Operation, id_param};
use crate::store::db::{Conn, Dialect, on};
use crate::store::{StoreError, head_id, now_ms};
use belfry_protocol::TopicPatterns;

/// One user's delivery acknowledgement: everything up to `up_to` that a device whose
/// token allows `allowed` may see.
#[derive(Debug, Clone, PartialEq)]
pub struct AckPoint {
    /// The user.
    pub user: String,
    /// The acking device's topic patterns.
    pub allowed: TopicPatterns,
    /// The highest id acknowledged.
    pub up_to: u64,
}

/// Records that the devices stored everything visible up to each point (capped at the
/// head); answers how many points moved a user's watermark.
#[derive(Debug)]
pub struct Acks(pub Vec<AckPoint>);

impl Operation for Acks {
    type Output = u64;
    const NAME: &'static str = "acks";

    async fn apply(self, conn: &mut Conn<'_>, _: &mut Effects) -> Result<u64, StoreError> {
        Ok(ack(conn, self.0).await?)
    }
}

/// Marks delivered what a batch of ack points covers: `$1` the points as JSON
/// (`[{"u": user, "f": from, "t": to, "p": [visible topics]}]`), `$2` the time.
///
/// One indexed range per point and target kind (the primary key is kind, name, id).
/// CROSS JOIN keeps the points as the outer loop: left to itself, SQLite scanned every
/// stored target once per point (a test checks the plan).
fn mark_acked(dialect: Dialect) -> String {
    let points = dialect.json_values("$1", "point");
    let topics = dialect.json_texts("a.p", "topic");
    let order = dialect.lock_order("id, u");
    format!(
        "WITH a AS (SELECT value ->> 'u' AS u, CAST(value ->> 'f' AS BIGINT) AS f, \
                    CAST(value ->> 't' AS BIGINT) AS t, value -> 'p' AS p FROM {points}) \
         INSERT INTO user_state (user_id, notification_id, delivered_at) \
         SELECT u, id, $2 FROM ( \
           SELECT a.u AS u, n.notification_id AS id FROM a CROSS JOIN notification_targets n \
             WHERE n.kind = 0 AND n.name = a.u \
               AND n.notification_id > a.f AND n.notification_id <= a.t \
           UNION SELECT a.u, n.notification_id FROM a CROSS JOIN notification_targets n \
             WHERE n.kind = 2 AND n.name = '' \
               AND n.notification_id > a.f AND n.notification_id <= a.t \
           UNION SELECT a.u, n.notification_id FROM a CROSS JOIN {topics} \
             CROSS JOIN notification_targets n \
             WHERE n.kind = 1 AND n.name = topic.value \
               AND n.notification_id > a.f AND n.notification_id <= a.t) AS marked \
         WHERE true {order} \
         ON CONFLICT (user_id, notification_id) DO UPDATE \
         SET delivered_at = excluded.delivered_at WHERE user_state.delivered_at IS NULL"
    )
}

/// Raises the acking users' watermarks: `$1` the points as in [`mark_acked`].
fn raise_ack_watermarks(dialect: Dialect) -> String {
    let points = dialect.json_values("$1", "point");
    let order = dialect.lock_order("1");
    format!(
        "INSERT INTO users (user_id, acked_up_to) \
         SELECT value ->> 'u', max(CAST(value ->> 't' AS BIGINT)) FROM {points} \
         WHERE true GROUP BY value ->> 'u' {order} \
         ON CONFLICT (user_id) DO UPDATE SET acked_up_to = CASE \
           WHEN excluded.acked_up_to > users.acked_up_to THEN excluded.acked_up_to \
           ELSE users.acked_up_to END"
    )
}

/// Records delivery receipts for many acks at once, in five statements however many
/// there are (one statement per ack kept the writer busy for seconds after every
/// publish to everyone, and publishes queued behind it). A user's points apply in
/// ascending order, each from where the one before left the watermark, so each marks
/// what its device's patterns may see. Returns how many points moved a watermark.
async fn ack(conn: &mut Conn<'_>, mut points: Vec<AckPoint>) -> Result<u64, sqlx::Error> {
    let dialect = conn.dialect();
    // Never move a watermark past what exists, or later notifications would be
    // skipped by the next ack.
    let head = head_id(conn).await?;
    points.sort_by(|a, b| a.user.cmp(&b.user).then(a.up_to.cmp(&b.up_to)));
    let users: Vec<&str> = points.iter().map(|p| p.user.as_str()).collect();
    let users_json = serde_json::to_string(&users).unwrap_or_else(|_| "[]".into());
    let users_in = dialect.json_texts("$1", "u");
    // The watermarks and topics of every user in the batch, read on the writer's own
    // connection: acks come by the thousand after a fan-out and must not queue for
    // the read pool.
    let marks: std::collections::HashMap<String, i64> = on!(conn, c => {
        sqlx::query_as(&format!(
            "SELECT user_id, acked_up_to FROM users WHERE user_id IN (SELECT value FROM {users_in})"
        ))
        .bind(&users_json)
        .fetch_all(c)
        .await?
        .into_iter()
        .collect()
    });
    let mut topics: std::collections::HashMap<String, Vec<String>> =
        std::collections::HashMap::new();
    let rows: Vec<(String, String)> = on!(conn, c => {
        sqlx::query_as(&format!(
            "SELECT user_id, topic FROM subscriptions \
             WHERE user_id IN (SELECT value FROM {users_in})"
        ))
        .bind(&users_json)
        .fetch_all(c)
        .await?
    });
    for (user, topic) in rows {
        topics.entry(user).or_default().push(topic);
    }
    // Each point's range (from, to] and the topics its device sees.
    let mut ranges = Vec::with_capacity(points.len());
    let mut last: Option<(&str, i64)> = None;
    for p in &points {
        let from = match last {
            Some((user, mark)) if user == p.user => mark,
            _ => marks.get(&p.user).copied().unwrap_or(0),
        };
        let to = id_param(p.up_to).min(head);
        if to <= from {
            last = Some((&p.user, from));
            continue;
        }
        let visible: Vec<&String> = topics
            .get(&p.user)
            .into_iter()
            .flatten()
            .filter(|t| p.allowed.allows(t))
            .collect();
        ranges.push(serde_json::json!({"u": p.user, "f": from, "t": to, "p": visible}));
        last = Some((&p.user, to));
    }
    if ranges.is_empty() {
        return Ok(0);
    }
    let ranges_json = serde_json::to_string(&ranges).unwrap_or_else(|_| "[]".into());
    let (mark, raise) = (mark_acked(dialect), raise_ack_watermarks(dialect));
    on!(conn, c => {
        sqlx::query(&mark)
            .bind(&ranges_json)
            .bind(now_ms())
            .execute(&mut *c)
            .await?;
        sqlx::query(&raise).bind(&ranges_json).execute(c).await?;
    });
    Ok(ranges.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Publish, Store, Subscribe};
    use belfry_protocol::PublishRequest;
    use std::time::Instant;

    async fn publish(store: &Store, to: &str) -> u64 {
        let req = PublishRequest {
            to: Some(vec![to.to_owned()]),
            title: Some(to.to_owned()),
            ..PublishRequest::default()
        };
        let request = Box::new(req.validate().expect("valid publish"));
        store
            .writer()
            .submit(Publish {
                request,
                ttl_secs: 3_600,
                received: Instant::now(),
            })
            .await
            .expect("stored")
            .id
    }

    fn point(user: &str, patterns: &[&str], up_to: u64) -> AckPoint {
        AckPoint {
            user: user.to_owned(),
            allowed: TopicPatterns::new(patterns.iter().map(|p| (*p).to_owned()).collect()),
            up_to,
        }
    }

    /// Who has a delivery time for `id`.
    async fn delivered(store: &Store, id: u64) -> Vec<String> {
        store
            .receipts(id)
            .await
            .expect("receipts")
            .expect("exists")
            .into_iter()
            .filter(|(_, delivered, _)| delivered.is_some())
            .map(|(user, _, _)| user)
            .collect()
    }

    #[tokio::test]
    async fn marking_acks_searches_targets_by_key_and_never_scans_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _feed) = Store::open(dir.path(), None).await.expect("store");
        // EXPLAIN QUERY PLAN rows: id, parent, notused, detail ("SEARCH n USING ...").
        let plan: Vec<String> = sqlx::query(&format!(
            "EXPLAIN QUERY PLAN {}",
            mark_acked(Dialect::Sqlite)
        ))
        .bind("[]")
        .bind(0_i64)
        .fetch_all(store.sqlite_pool())
        .await
        .expect("query plan")
        .iter()
        .map(|row| sqlx::Row::try_get::<String, _>(row, 3).expect("detail"))
        .collect();
        // Every step on the targets table (aliased n): one per target kind.
        let on_targets: Vec<&String> = plan
            .iter()
            .filter(|d| d.split_whitespace().nth(1) == Some("n"))
            .collect();
        assert_eq!(on_targets.len(), 3, "{plan:#?}");
        // Each a key search bounded by the point's id range, not a pass over a whole
        // kind (what SQLite chose when the points were not the outer loop).
        assert!(
            on_targets
                .iter()
                .all(|d| d.starts_with("SEARCH n USING PRIMARY KEY")
                    && d.contains("name=?")
                    && d.contains("notification_id>?")),
            "{plan:#?}"
        );
    }

    #[tokio::test]
    async fn a_batch_of_acks_marks_what_each_device_may_see_up_to_the_head() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, mut feed) = Store::open(dir.path(), None).await.expect("store");
        tokio::spawn(async move { while feed.notifications.recv().await.is_some() {} });
        let w = store.writer();
        for topic in ["ops", "dev"] {
            let subscribe = Subscribe {
                user: "ann".into(),
                topic: topic.into(),
                max: 100,
            };
            assert!(w.submit(subscribe).await.expect("subscribed"));
        }
        let to_ann = publish(&store, "user:ann").await;
        let to_all = publish(&store, "all").await;
        let to_ops = publish(&store, "topic:ops").await;
        let to_dev = publish(&store, "topic:dev").await;

        // Ann's ops-only device acked up to the ops one, her other device everything;
        // bob acked far past the head. Out of order on purpose: they apply ascending.
        let moved = w
            .submit(Acks(vec![
                point("ann", &["*"], to_dev),
                point("bob", &["*"], 1_000_000),
                point("ann", &["ops"], to_ops),
            ]))
            .await
            .expect("acked");
        assert_eq!(moved, 3);
        assert_eq!(delivered(&store, to_ann).await, ["ann"]);
        assert_eq!(delivered(&store, to_all).await, ["ann", "bob"]);
        assert_eq!(delivered(&store, to_ops).await, ["ann"]);
        assert_eq!(delivered(&store, to_dev).await, ["ann"]);

        // The watermark stopped at the head: what comes next is marked by the next ack,
        // and acks at or below a watermark move nothing.
        let later = publish(&store, "all").await;
        assert_eq!(
            w.submit(Acks(vec![point("bob", &["*"], to_all)]))
                .await
                .expect("acked"),
            0
        );
        assert!(delivered(&store, later).await.is_empty());
        assert_eq!(
            w.submit(Acks(vec![point("bob", &["*"], later)]))
                .await
                .expect("acked"),
            1
        );
        assert_eq!(delivered(&store, later).await, ["bob"]);

        // A device that may not see a topic does not mark it.
        let ops_again = publish(&store, "topic:ops").await;
        assert_eq!(
            w.submit(Acks(vec![point("ann", &["dev"], ops_again)]))
                .await
                .expect("acked"),
            1
        );
        assert!(delivered(&store, ops_again).await.is_empty());
    }
}
