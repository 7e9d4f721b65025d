//! Mapping between stored rows and wire notifications.

use super::db::Dialect;
use belfry_protocol::{Action, Notification, Priority};
use serde::Deserialize;
use sqlx::{ColumnIndex, Decode, Row, Type};
use time::OffsetDateTime;

/// A row of either database that the store can read notifications from.
pub(crate) trait StoreRow {
    fn int(&self, col: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, col: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error>;
}

impl<R: Row> StoreRow for R
where
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    fn int(&self, col: &str) -> Result<i64, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(col)
    }
    fn text(&self, col: &str) -> Result<String, sqlx::Error> {
        self.try_get(col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(col)
    }
}

/// The notification columns, in the order [`notification`] reads them (by name).
pub(crate) const COLUMNS: &str = "n.id, n.event, n.title, n.body, n.priority, n.tags, n.url, \
     n.actions, n.data, n.topic, n.created_at, n.expires_at";

pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &impl StoreRow,
    col: &str,
) -> Result<T, sqlx::Error> {
    let text = row.text(col)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: Box::new(e),
    })
}

/// Reads a notification from a row with [`COLUMNS`] and an optional `read_at`.
pub(crate) fn notification(row: &impl StoreRow) -> Result<Notification, sqlx::Error> {
    let id = row.int("id")?;
    let priority = row.int("priority")?;
    let read_at = row.opt_int("read_at").unwrap_or(None);
    Ok(Notification {
        id: u64::try_from(id).unwrap_or(0),
        event: row.text("event")?,
        title: row.text("title")?,
        body: row.text("body")?,
        priority: priority_of(priority),
        tags: json_column(row, "tags")?,
        url: row.opt_text("url")?,
        actions: json_column(row, "actions")?,
        data: json_column(row, "data")?,
        topic: row.opt_text("topic")?,
        created_at: from_ms(row.int("created_at")?),
        expires_at: from_ms(row.int("expires_at")?),
        read: read_at.is_some(),
    })
}

/// The notification columns of [`COLUMNS`] and `read_at` as the elements of one JSON
/// array, JSON columns nested as JSON: a statement that returns many notifications in one
/// value ([`Packed`] reads them back).
pub(crate) fn packed_columns(dialect: Dialect) -> String {
    COLUMNS
        .split(", ")
        .map(|c| match c {
            "n.tags" | "n.actions" | "n.data" => dialect.json_of(c),
            _ => c.to_owned(),
        })
        .chain(["s.read_at".to_owned()])
        .collect::<Vec<_>>()
        .join(", ")
}

/// The priority stored as its level (a level out of range reads as the default).
fn priority_of(level: i64) -> Priority {
    u8::try_from(level)
        .ok()
        .and_then(Priority::from_level)
        .unwrap_or_default()
}

/// A notification read from [`packed_columns`] (the elements by position, in that order),
/// all of it NULL where the row's LEFT JOIN found none.
#[derive(Debug, Deserialize)]
pub(crate) struct Packed(
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<Vec<String>>,
    Option<String>,
    Option<Vec<Action>>,
    Option<serde_json::Value>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

impl Packed {
    /// The notification, or `None` where there was none (no id). A notification with a
    /// column missing that its table requires is an error, as it is for
    /// [`notification`]: never a notification skipped as if it had expired, nor one
    /// with a default in place of what was stored.
    pub(crate) fn into_notification(self) -> Result<Option<Notification>, sqlx::Error> {
        let Packed(id, event, title, body, priority, tags, url, actions, data, topic, c, e, r) =
            self;
        let Some(id) = id else {
            return Ok(None);
        };
        let missing = |col: &str| sqlx::Error::ColumnDecode {
            index: col.to_owned(),
            source: format!("notification {id} has no {col} in its page entry").into(),
        };
        Ok(Some(Notification {
            id: u64::try_from(id).unwrap_or(0),
            event: event.ok_or_else(|| missing("event"))?,
            title: title.ok_or_else(|| missing("title"))?,
            body: body.ok_or_else(|| missing("body"))?,
            priority: priority_of(priority.ok_or_else(|| missing("priority"))?),
            tags: tags.ok_or_else(|| missing("tags"))?,
            url,
            actions: actions.ok_or_else(|| missing("actions"))?,
            // A JSON `null` in `data` reads as `None`: the column itself is never NULL.
            data: data.unwrap_or(serde_json::Value::Null),
            topic,
            created_at: from_ms(c.ok_or_else(|| missing("created_at"))?),
            expires_at: from_ms(e.ok_or_else(|| missing("expires_at"))?),
            read: r.is_some(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_entry_is_a_notification_none_or_an_error() {
        let full = r#"[7, "e", "t", "b", 4, ["x"], null, [], {"k": 1}, "ops", 1000, 2000, null]"#;
        let n = serde_json::from_str::<Packed>(full)
            .expect("parse")
            .into_notification()
            .expect("decode")
            .expect("a notification");
        assert_eq!(
            (n.id, n.title.as_str(), n.priority),
            (7, "t", Priority::High)
        );
        assert_eq!((n.topic.as_deref(), n.read), (Some("ops"), false));
        // An id the page covered whose notification has expired: all NULL.
        let none = format!("[{}]", ["null"; 13].join(", "));
        let packed = serde_json::from_str::<Packed>(&none).expect("parse");
        assert!(packed.into_notification().expect("decode").is_none());
        // A required column missing is an error, never a notification skipped.
        let holed = r#"[7, "e", null, "b", 4, ["x"], null, [], null, null, 1000, 2000, null]"#;
        let packed = serde_json::from_str::<Packed>(holed).expect("parse");
        assert!(packed.into_notification().is_err());
    }

    #[test]
    fn millisecond_times_round_trip() {
        let t = time::macros::datetime!(2026-11-22 10:11:12.345 UTC);
        assert_eq!(from_ms(to_ms(t)), t);
    }
}
