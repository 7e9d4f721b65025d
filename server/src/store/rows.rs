//! Mapping between stored rows and wire notifications.

use belfry_protocol::{Notification, Priority};
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
        priority: u8::try_from(priority)
            .ok()
            .and_then(Priority::from_level)
            .unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millisecond_times_round_trip() {
        let t = time::macros::datetime!(2026-11-22 10:11:12.345 UTC);
        assert_eq!(from_ms(to_ms(t)), t);
    }
}
