//! The database's schema: migrations versioned in the repository (`migrations/NNNN_*.sql`),
//! applied in order at start under an advisory lock, so that replicas starting together apply
//! each once. A database whose schema is newer than this build knows is refused: an older
//! control plane must not write into tables it does not understand.

use tokio_postgres::Client;

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_entries.sql"),
    include_str!("migrations/0002_notices.sql"),
    include_str!("migrations/0003_flushes.sql"),
];

/// The schema version this build writes.
pub fn current() -> i32 {
    i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX)
}

/// Why the schema could not be brought to [`current`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database's schema is version {found}, newer than this control plane's {known}: upgrade the control plane"
    )]
    Newer { found: i32, known: i32 },
    #[error("migrating the schema: {0}")]
    Database(#[from] tokio_postgres::Error),
}

/// An arbitrary, fixed key for the advisory lock migrations run under.
const MIGRATION_LOCK: i64 = 0x7465_726e_5f6d_6967;

/// Brings the schema to [`current`], or refuses a newer one. Returns the version found.
pub async fn migrate(client: &mut Client) -> Result<i32, SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tern_schema (version INTEGER NOT NULL)")
        .await?;
    let found: i32 = tx
        .query_opt("SELECT version FROM tern_schema", &[])
        .await?
        .map(|row| row.get(0))
        .unwrap_or(0);
    let known = current();
    if found > known {
        return Err(SchemaError::Newer { found, known });
    }
    for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(migration).await?;
    }
    if found == 0 {
        tx.execute("INSERT INTO tern_schema (version) VALUES ($1)", &[&known])
            .await?;
    } else if found < known {
        tx.execute("UPDATE tern_schema SET version = $1", &[&known])
            .await?;
    }
    tx.commit().await?;
    Ok(found)
}
