//! Mapping between stored rows and wire notifications.

use belfry_protocol::{Notification, Priority};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;

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
    row: &SqliteRow,
    col: &str,
) -> Result<T, sqlx::Error> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: col.to_owned(),
        source: Box::new(e),
    })
}

/// Reads a notification from a row with [`COLUMNS`] and an optional `read_at`.
pub(crate) fn notification(row: &SqliteRow) -> Result<Notification, sqlx::Error> {
    let id: i64 = row.try_get("id")?;
    let priority: i64 = row.try_get("priority")?;
    let read_at: Option<i64> = row.try_get("read_at").unwrap_or(None);
    Ok(Notification {
        id: u64::try_from(id).unwrap_or(0),
        event: row.try_get("event")?,
        title: row.try_get("title")?,
        body: row.try_get("body")?,
        priority: u8::try_from(priority)
            .ok()
            .and_then(Priority::from_level)
            .unwrap_or_default(),
        tags: json_column(row, "tags")?,
        url: row.try_get("url")?,
        actions: json_column(row, "actions")?,
        data: json_column(row, "data")?,
        topic: row.try_get("topic")?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: from_ms(row.try_get("expires_at")?),
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
