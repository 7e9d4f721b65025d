//! The two databases the store runs on: SQLite (the embedded default, one hub) and
//! PostgreSQL (shared by several hub nodes).
//!
//! Every query is written once, with `$n` parameters (both drivers take them), and runs on
//! either database through [`on!`], which compiles its body once per driver. The few
//! places where the SQL dialects differ go through [`Dialect`].

use super::StoreError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Transaction};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Runs `$body` with `$c` bound to the database connection behind a `&mut Conn`: a
/// `&mut SqliteConnection` in one arm, a `&mut PgConnection` in the other. The body is
/// written once and type-checked against both drivers.
macro_rules! on {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::db::Conn::Sqlite(c) => {
                let $c = &mut **c;
                $body
            }
            $crate::store::db::Conn::Postgres(c) => {
                let $c = &mut **c;
                $body
            }
        }
    };
}
pub(crate) use on;

/// Which SQL dialect a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.38 or later.
    Sqlite,
    /// PostgreSQL 12 or later.
    Postgres,
}

impl Dialect {
    /// A table `alias` with one text column `value`: the elements of the JSON array of
    /// strings in `json` (a parameter holding JSON text, or a JSON expression).
    pub(crate) fn json_texts(self, json: &str, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_each({json}) AS {alias}"),
            Dialect::Postgres => {
                format!("jsonb_array_elements_text(CAST({json} AS jsonb)) AS {alias}(value)")
            }
        }
    }

    /// A table `alias` with one column `value`: the elements of the JSON array in `json`,
    /// as JSON (objects are read with `value ->> 'key'`, which both dialects understand).
    /// PostgreSQL parses the array once, as `jsonb`: each `->>` then reads the parsed
    /// element (on `json` every one parses its element's text again). Nested arrays and
    /// objects read with `->>` come back in `jsonb`'s form, so values that must keep their
    /// exact text go in as strings.
    pub(crate) fn json_values(self, json: &str, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_each({json}) AS {alias}"),
            Dialect::Postgres => {
                format!("jsonb_array_elements(CAST({json} AS jsonb)) AS {alias}(value)")
            }
        }
    }

    /// `ORDER BY {keys}` on PostgreSQL, nothing on SQLite: for an upsert of many rows, so
    /// two nodes writing overlapping rows lock them in the same order and never deadlock
    /// (SQLite has one writer).
    pub(crate) fn lock_order(self, keys: &str) -> String {
        match self {
            Dialect::Sqlite => String::new(),
            Dialect::Postgres => format!("ORDER BY {keys}"),
        }
    }

    /// The statement that opens a write transaction. SQLite takes its write lock at once
    /// (so the batch never fails half-way on a busy database).
    pub(crate) fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// A JSON array with the values of `exprs` (comma-separated SQL expressions) as its
    /// elements.
    pub(crate) fn json_array(self, exprs: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_array({exprs})"),
            Dialect::Postgres => format!("json_build_array({exprs})"),
        }
    }

    /// A text column holding JSON, as JSON (so it nests in [`Dialect::json_array`]
    /// instead of becoming a string). Both keep the stored text's numbers and escapes as
    /// they are. Not `jsonb` on PostgreSQL: it refuses `\u0000` (which stored `data` may
    /// hold), and it reorders keys and rewrites numbers.
    pub(crate) fn json_of(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json({column})"),
            Dialect::Postgres => format!("CAST({column} AS json)"),
        }
    }

    /// The aggregate of the JSON values `expr` over a query's rows, as JSON text (an
    /// array in no particular order; SQLite gives `[]` for no rows, PostgreSQL NULL).
    pub(crate) fn json_agg(self, expr: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_group_array({expr})"),
            Dialect::Postgres => format!("CAST(json_agg({expr}) AS text)"),
        }
    }

    /// The highest notification id ever assigned and committed (0 when none).
    pub(crate) fn head(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'notifications'), 0)"
            }
            Dialect::Postgres => "SELECT id FROM notification_head",
        }
    }
}

/// A connection of either database, borrowed for a few statements (see [`on!`]).
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Conn<'_> {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Conn::Sqlite(_) => Dialect::Sqlite,
            Conn::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs one statement that returns nothing of interest.
    pub(crate) async fn exec(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        on!(self, c => sqlx::query(sql).execute(c).await.map(drop))
    }
}

/// The read pool.
#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connection taken from the read pool.
pub(crate) enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Pooled {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            Pooled::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// A read transaction: every statement in it sees one snapshot.
pub(crate) enum ReadTx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl ReadTx {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            ReadTx::Sqlite(tx) => Conn::Sqlite(tx),
            ReadTx::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            ReadTx::Sqlite(tx) => tx.commit().await,
            ReadTx::Postgres(tx) => tx.commit().await,
        }
    }
}

impl Pool {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Pool::Sqlite(_) => Dialect::Sqlite,
            Pool::Postgres(_) => Dialect::Postgres,
        }
    }

    pub(crate) async fn acquire(&self) -> Result<Pooled, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => Pooled::Sqlite(p.acquire().await?),
            Pool::Postgres(p) => Pooled::Postgres(p.acquire().await?),
        })
    }

    /// Starts a read transaction. In SQLite a transaction reads one snapshot; PostgreSQL
    /// needs REPEATABLE READ for that (READ COMMITTED takes one per statement).
    pub(crate) async fn begin_read(&self) -> Result<ReadTx, sqlx::Error> {
        Ok(match self {
            Pool::Sqlite(p) => ReadTx::Sqlite(p.begin().await?),
            Pool::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *tx)
                    .await?;
                ReadTx::Postgres(tx)
            }
        })
    }

    pub(crate) async fn close(&self) {
        match self {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

/// The writer's connection. SQLite: one connection for the hub's life. PostgreSQL: a pool
/// of one, taken for each batch, so a connection lost while the database restarted is
/// replaced instead of failing every write after it.
#[derive(Debug)]
pub(crate) enum WriteConn {
    Sqlite(SqliteConnection),
    Postgres(PgPool),
}

/// The writer's connection, held for one batch.
pub(crate) enum Held<'w> {
    Sqlite(&'w mut SqliteConnection),
    Postgres(PoolConnection<Postgres>),
}

impl Held<'_> {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Held::Sqlite(c) => Conn::Sqlite(c),
            Held::Postgres(c) => Conn::Postgres(c),
        }
    }
}

impl WriteConn {
    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            WriteConn::Sqlite(_) => Dialect::Sqlite,
            WriteConn::Postgres(_) => Dialect::Postgres,
        }
    }

    pub(crate) async fn hold(&mut self) -> Result<Held<'_>, sqlx::Error> {
        Ok(match self {
            WriteConn::Sqlite(c) => Held::Sqlite(c),
            WriteConn::Postgres(p) => Held::Postgres(p.acquire().await?),
        })
    }

    pub(crate) async fn close(self) -> Result<(), sqlx::Error> {
        match self {
            WriteConn::Sqlite(c) => c.close().await,
            WriteConn::Postgres(p) => {
                p.close().await;
                Ok(())
            }
        }
    }
}

/// Whether a database URL names a PostgreSQL server.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// What [`open`] returns: the read pool, the feed's pool (PostgreSQL: connections of its
/// own, so live delivery never queues behind a storm of catch-ups; SQLite: the read pool)
/// and the writer's connection.
pub(crate) type Opened = (Pool, Pool, WriteConn);

/// Opens the database (creating an SQLite file if needed) and applies the migrations.
pub(crate) async fn open(data_dir: &Path, url: Option<&str>) -> Result<Opened, StoreError> {
    match url {
        Some(url) if is_postgres(url) => open_postgres(url).await,
        Some(url) => open_sqlite(SqliteConnectOptions::from_str(url)?).await,
        // A path, not a URL: a data dir with `?` or `#` in its name stays a path.
        None => open_sqlite(SqliteConnectOptions::new().filename(data_dir.join("belfry.db"))).await,
    }
}

async fn open_sqlite(options: SqliteConnectOptions) -> Result<Opened, StoreError> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk before the publisher hears 201. Group commit keeps
        // this affordable: one fsync per batch, not per notification.
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10))
        // Sorting and UNION scratch space in memory: no temporary files, so a hub short
        // of file descriptors (thousands of sockets) can still write.
        .pragma("temp_store", "memory")
        .log_statements(tracing::log::LevelFilter::Trace);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .min_connections(1)
        // Waiting for a read connection is normal under a connect storm (thousands of
        // catch-ups queue for four connections); at warn level sqlx logs a line per wait
        // over 2 s, tens of thousands in a reconnect storm of 10,000 clients.
        .acquire_slow_level(tracing::log::LevelFilter::Debug)
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
    let conn = options.connect().await?;
    Ok((
        Pool::Sqlite(pool.clone()),
        Pool::Sqlite(pool),
        WriteConn::Sqlite(conn),
    ))
}

/// How long a write waits for a PostgreSQL connection before the publish is refused with
/// 503 (while the database is down or restarting).
const PG_WRITE_WAIT: Duration = Duration::from_secs(3);
/// How long a read waits for one (as long as SQLite's: a catch-up that gives up
/// disconnects its client, which comes back and queues again).
const PG_READ_WAIT: Duration = Duration::from_secs(30);

async fn open_postgres(url: &str) -> Result<Opened, StoreError> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("belfry-hub")
        .log_statements(tracing::log::LevelFilter::Trace);
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .acquire_timeout(PG_READ_WAIT)
        .acquire_slow_level(tracing::log::LevelFilter::Debug)
        .connect_with(options.clone())
        .await?;
    // Several nodes starting at once: sqlx holds an advisory lock while it migrates.
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    // A batch that waits on another node's locks longer than this fails (each operation
    // answers 503) instead of holding up every publish of the cluster behind it.
    let writer = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .acquire_timeout(PG_WRITE_WAIT)
        .connect_with(options.clone().options([("lock_timeout", "10s")]))
        .await?;
    // The LISTEN connection and the feed's reads.
    let feed = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .acquire_timeout(PG_WRITE_WAIT)
        .connect_with(options)
        .await?;
    Ok((
        Pool::Postgres(pool),
        Pool::Postgres(feed),
        WriteConn::Postgres(writer),
    ))
}
