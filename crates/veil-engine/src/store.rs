//! The embedded store: one SQLite file, opened for durability, with every table Veil needs.
use std::path::Path;

use rusqlite::Connection;

use crate::Result;

/// Opens the store: WAL journal, `synchronous=FULL` (a committed debit or audit entry survives
/// power loss), foreign keys on, and a busy timeout so concurrent CLI processes queue rather than fail.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    let tx = conn.unchecked_transaction()?;
    // The audit log first: it refuses a store whose log predates sealed entries, before any other
    // table is touched.
    veil_audit::AuditLog::migrate(&tx)?;
    veil_catalog::migrate(&tx)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS policies (
             dataset    TEXT NOT NULL REFERENCES datasets(name),
             version    INTEGER NOT NULL,
             hash       TEXT NOT NULL,
             toml       TEXT NOT NULL,
             parsed     TEXT NOT NULL,
             holder     TEXT NOT NULL,
             created_at TEXT NOT NULL,
             PRIMARY KEY (dataset, version)
         );
         CREATE TABLE IF NOT EXISTS modules (
             hash  TEXT PRIMARY KEY,
             bytes BLOB NOT NULL
         );
         CREATE TABLE IF NOT EXISTS jobs (
             id             TEXT PRIMARY KEY,
             seq            INTEGER NOT NULL UNIQUE,
             consumer       TEXT NOT NULL,
             dataset        TEXT NOT NULL REFERENCES datasets(name),
             manifest       TEXT NOT NULL,
             manifest_hash  TEXT NOT NULL,
             module_hash    TEXT NOT NULL REFERENCES modules(hash),
             epsilon_micro  INTEGER NOT NULL,
             policy_version INTEGER,
             state          TEXT NOT NULL,
             code           TEXT,
             runner_pid     INTEGER,
             runner_start   INTEGER,
             result         TEXT,
             result_hash    TEXT,
             created_at     TEXT NOT NULL,
             updated_at     TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS budget (
             consumer    TEXT NOT NULL,
             dataset     TEXT NOT NULL,
             spent_micro INTEGER NOT NULL,
             rho_pico    INTEGER NOT NULL DEFAULT 0,
             delta_conversion_femto INTEGER NOT NULL DEFAULT 0,
             delta_selection_femto  INTEGER NOT NULL DEFAULT 0,
             PRIMARY KEY (consumer, dataset)
         );
         CREATE TABLE IF NOT EXISTS principals (
             name       TEXT PRIMARY KEY,
             role       TEXT NOT NULL CHECK (role IN ('holder', 'consumer', 'reviewer', 'admin')),
             token_hash BLOB NOT NULL UNIQUE,
             created_at TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS published_counts (
             dataset        TEXT PRIMARY KEY,
             epsilon_micro  INTEGER NOT NULL,
             noisy_units    INTEGER NOT NULL,
             policy_version INTEGER NOT NULL,
             created_at     TEXT NOT NULL
         );
         CREATE TABLE IF NOT EXISTS job_logs (
             job  TEXT NOT NULL REFERENCES jobs(id),
             seq  INTEGER NOT NULL,
             line TEXT NOT NULL,
             PRIMARY KEY (job, seq)
         );",
    )?;
    // Stores made before the zCDP/δ ledger columns existed get them, zero-filled.
    let budget_columns: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info('budget')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for column in [
        "rho_pico",
        "delta_conversion_femto",
        "delta_selection_femto",
    ] {
        if !budget_columns.iter().any(|c| c == column) {
            tx.execute_batch(&format!(
                "ALTER TABLE budget ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
            ))?;
        }
    }
    // Stores made before runners were named by pid and start time get the column.
    add_column_if_missing(&tx, "jobs", "runner_start", "INTEGER")?;
    // Stores made before jobs had a fixed release time get the column (NULL: not started).
    add_column_if_missing(&tx, "jobs", "release_at", "TEXT")?;
    tx.execute_batch("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq)")?;
    // Stores made before principals could be revoked get the column (NULL: active).
    add_column_if_missing(&tx, "principals", "revoked_at", "TEXT")?;
    tx.commit()?;
    Ok(conn)
}

/// Adds `column` (of SQL type `decl`) to `table` in stores made before it existed.
fn add_column_if_missing(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<()> {
    let present: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    if !present {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}
