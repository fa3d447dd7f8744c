//! The embedded store: one SQLite file, opened for durability, with every table Veil needs.
use std::path::Path;

use rusqlite::Connection;

use crate::{EngineError, Result};

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
    migrate(&tx)?;
    tx.commit()?;
    Ok(conn)
}

/// The schema version this build reads and writes (`PRAGMA user_version`).
pub(crate) const SCHEMA_VERSION: u32 = STEPS.len() as u32;

/// Step `i` (counting from 1) brings a store from schema version `i - 1` to `i`. Append new steps;
/// never change one that has shipped. Version 0 is a store made before versions were recorded
/// (or a new, empty file): step 1 creates what such a store already has.
const STEPS: [fn(&Connection) -> Result<()>; 7] = [
    step_1_baseline,
    step_2_published_counts,
    step_3_owner_scoped_dataset_ids,
    step_4_registration_reports,
    step_5_dataset_versions,
    step_6_links,
    step_7_linked_jobs,
];

/// Brings the store to [`SCHEMA_VERSION`], in the caller's transaction, so a failed step leaves
/// the store as it was. A store written by a newer Veil is refused, not guessed at.
fn migrate(conn: &Connection) -> Result<()> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(EngineError::Unavailable(format!(
            "the store has schema version {version}, written by a newer Veil; this one reads up \
             to version {SCHEMA_VERSION}: open it with the newer version"
        )));
    }
    for (done, step) in STEPS.iter().enumerate().skip(version as usize) {
        step(conn)?;
        conn.pragma_update(None, "user_version", done as u32 + 1)?;
    }
    Ok(())
}

/// Version 1: the schema as it stood when versions began to be recorded. Stores older than that
/// have audit entries without sealed parts and are refused before this runs.
fn step_1_baseline(conn: &Connection) -> Result<()> {
    veil_catalog::migrate(conn)?;
    conn.execute_batch(
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
             updated_at     TEXT NOT NULL,
             release_at     TEXT
         );
         CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
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
             created_at TEXT NOT NULL,
             revoked_at TEXT
         );
         CREATE TABLE IF NOT EXISTS job_logs (
             job  TEXT NOT NULL REFERENCES jobs(id),
             seq  INTEGER NOT NULL,
             line TEXT NOT NULL,
             PRIMARY KEY (job, seq)
         );",
    )?;
    Ok(())
}

/// Version 2: noisy unit counts a policy publishes (`datasets.rs`).
fn step_2_published_counts(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE published_counts (
             dataset        TEXT PRIMARY KEY REFERENCES datasets(name),
             epsilon_micro  INTEGER NOT NULL,
             noisy_units    INTEGER NOT NULL,
             policy_version INTEGER NOT NULL,
             created_at     TEXT NOT NULL
         );",
    )?;
    Ok(())
}

/// Version 3: dataset names are scoped per holder, so a dataset's id becomes `owner:name`
/// everywhere a table refers to it. The audit log keeps the names its entries were signed with
/// (certificates find a registration under either). Foreign keys are checked at commit, after
/// every table has the new ids.
fn step_3_owner_scoped_dataset_ids(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "defer_foreign_keys", "ON")?;
    let sep = veil_catalog::ID_SEPARATOR;
    let renamed = format!(
        "(SELECT owner || '{sep}' || name FROM datasets d WHERE d.name = {{t}}.dataset \
           AND instr(d.name, '{sep}') = 0)"
    );
    for table in ["policies", "jobs", "budget", "published_counts"] {
        let new_id = renamed.replace("{t}", table);
        conn.execute_batch(&format!(
            "UPDATE {table} SET dataset = {new_id} WHERE {new_id} IS NOT NULL"
        ))?;
    }
    conn.execute_batch(&format!(
        "UPDATE datasets SET name = owner || '{sep}' || name WHERE instr(name, '{sep}') = 0"
    ))?;
    Ok(())
}

/// Version 4: each dataset's registration report (for its owner; datasets registered before have
/// none).
fn step_4_registration_reports(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE dataset_reports (
             dataset TEXT PRIMARY KEY REFERENCES datasets(name),
             report  TEXT NOT NULL
         )",
    )?;
    Ok(())
}

/// Version 5: dataset versions (replacement, removal), the version each job read, and the first
/// policy version valid for a dataset's current content (`policy_floor`: a replacement the
/// policy no longer fits raises it, so the policy must be set again).
fn step_5_dataset_versions(conn: &Connection) -> Result<()> {
    veil_catalog::migrate_versions(conn)?;
    conn.execute_batch(
        "ALTER TABLE datasets ADD COLUMN policy_floor INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE jobs ADD COLUMN dataset_version INTEGER;",
    )?;
    Ok(())
}

/// Version 6: link keys (columns of join tokens) and links between two holders' datasets
/// (docs/linking.md): proposed by one holder, accepted or rejected by the other.
fn step_6_links(conn: &Connection) -> Result<()> {
    veil_catalog::migrate_link_keys(conn)?;
    conn.execute_batch(
        "CREATE TABLE links (
             id          TEXT PRIMARY KEY,
             seq         INTEGER NOT NULL UNIQUE,
             left_dataset  TEXT NOT NULL,
             left_key      TEXT NOT NULL,
             right_dataset TEXT NOT NULL,
             right_key     TEXT NOT NULL,
             proposer    TEXT NOT NULL,
             state       TEXT NOT NULL,
             reason      TEXT,
             created_at  TEXT NOT NULL,
             decided_at  TEXT
         );",
    )?;
    Ok(())
}

/// Version 7: jobs over a link (the linked dataset they also read and are charged on), the
/// holders' approvals of them (a linked job waiting for approval needs both holders'), and the
/// link evaluations each holder asked for (their hourly cap).
fn step_7_linked_jobs(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "ALTER TABLE jobs ADD COLUMN linked_dataset TEXT;
         CREATE TABLE job_approvals (
             job     TEXT NOT NULL,
             holder  TEXT NOT NULL,
             at      TEXT NOT NULL,
             PRIMARY KEY (job, holder)
         );
         CREATE TABLE link_evaluations (
             holder   TEXT NOT NULL,
             at       TEXT NOT NULL,
             elements INTEGER NOT NULL
         );
         CREATE INDEX link_evaluations_by_holder ON link_evaluations (holder, at);",
    )?;
    Ok(())
}

pub(crate) fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}
