//! The log's home in the embedded store (SQLite). Appends happen inside the caller's transaction.
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use veil_merkle::Hash;

use crate::AuditError;
use crate::entry::{AuditEvent, Entry};
use crate::keys::{DomainKey, VerifierKey};
use crate::note::Checkpoint;

/// Functions over the `audit_log` table. The table is append-only by construction: nothing in Veil
/// updates or deletes its rows, and verification catches anyone who does.
pub struct AuditLog;

impl AuditLog {
    /// Creates the log's tables if they do not exist.
    pub fn migrate(conn: &Connection) -> Result<(), AuditError> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS audit_log (
                 idx  INTEGER PRIMARY KEY,
                 line TEXT NOT NULL,
                 leaf BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS audit_key (
                 id         INTEGER PRIMARY KEY CHECK (id = 1),
                 public_key TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS audit_checkpoints (
                 id   INTEGER PRIMARY KEY AUTOINCREMENT,
                 size INTEGER NOT NULL,
                 note TEXT NOT NULL
             );",
        )?;
        let first: Option<String> = conn
            .query_row("SELECT line FROM audit_log ORDER BY idx LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(line) = first
            && serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get("v").and_then(|v| v.as_u64()))
                != Some(u64::from(crate::entry::ENTRY_VERSION))
        {
            return Err(AuditError::Encoding(
                "this store's audit log has entries of format v1, whose contents are all public; \
                 this version of Veil writes format v2 (public and sealed parts). Export the old \
                 log with the Veil that wrote it, then initialise a new store"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Appends an event whose public time is now, to the second. Call inside the transaction that
    /// commits the state change it records.
    pub fn append(
        conn: &Connection,
        key: &DomainKey,
        event: AuditEvent,
    ) -> Result<Entry, AuditError> {
        let now = OffsetDateTime::now_utc();
        let public = now
            .replace_nanosecond(0)
            .map_err(|e| AuditError::Encoding(e.to_string()))?;
        Self::append_at(conn, key, event, public)
    }

    /// Appends an event with the given public time (a job's scheduled instant, to the
    /// millisecond); the real time goes into the sealed part.
    pub fn append_at(
        conn: &Connection,
        key: &DomainKey,
        event: AuditEvent,
        public_time: OffsetDateTime,
    ) -> Result<Entry, AuditError> {
        // A process still holding a key that was rotated away must not sign new entries.
        let current: Option<String> = conn
            .query_row("SELECT public_key FROM audit_key WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        if current.is_some_and(|c| c != key.verifier().to_string()) {
            return Err(AuditError::Key {
                path: String::new(),
                message: "the audit signing key was rotated by another process; reopen the store"
                    .into(),
            });
        }
        let last: Option<(u64, Vec<u8>)> = conn
            .query_row(
                "SELECT idx, leaf FROM audit_log ORDER BY idx DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (index, prev) = match last {
            Some((i, leaf)) => {
                let prev: Hash = leaf
                    .try_into()
                    .map_err(|_| AuditError::Encoding("stored leaf is not 32 bytes".into()))?;
                (i + 1, prev)
            }
            None => (0, [0u8; 32]),
        };
        let format = |t: OffsetDateTime| {
            t.format(&Rfc3339)
                .map_err(|e| AuditError::Encoding(e.to_string()))
        };
        let public_time = public_time
            .replace_millisecond(public_time.millisecond())
            .map_err(|e| AuditError::Encoding(e.to_string()))?;
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).map_err(|e| AuditError::Encoding(e.to_string()))?;
        let entry = Entry::new_signed(
            index,
            format(public_time)?,
            format(OffsetDateTime::now_utc())?,
            prev,
            event,
            salt,
            key,
        );
        conn.execute(
            "INSERT INTO audit_log (idx, line, leaf) VALUES (?1, ?2, ?3)",
            params![index, entry.to_line(), entry.leaf_hash().to_vec()],
        )?;
        Ok(entry)
    }

    /// Records `key` as the key that signs from now on (first use, or after a rotation entry).
    pub fn set_current_key(conn: &Connection, key: &VerifierKey) -> Result<(), AuditError> {
        conn.execute(
            "INSERT INTO audit_key (id, public_key) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET public_key = excluded.public_key",
            [key.to_string()],
        )?;
        Ok(())
    }

    /// The key recorded as current, if any.
    pub fn current_key(conn: &Connection) -> Result<Option<String>, AuditError> {
        Ok(conn
            .query_row("SELECT public_key FROM audit_key WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// All entries in order, parsed from their stored lines.
    pub fn entries(conn: &Connection) -> Result<Vec<Entry>, AuditError> {
        let mut stmt = conn.prepare("SELECT line FROM audit_log ORDER BY idx")?;
        let lines = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for line in lines {
            let line = line?;
            out.push(serde_json::from_str(&line).map_err(|e| AuditError::Encoding(e.to_string()))?);
        }
        Ok(out)
    }

    /// Entry `index`, if the log has it.
    pub fn entry(conn: &Connection, index: u64) -> Result<Option<Entry>, AuditError> {
        let line: Option<String> = conn
            .query_row("SELECT line FROM audit_log WHERE idx = ?1", [index], |r| {
                r.get(0)
            })
            .optional()?;
        line.map(|l| serde_json::from_str(&l).map_err(|e| AuditError::Encoding(e.to_string())))
            .transpose()
    }

    /// Signs and stores a checkpoint over the whole log as it is now.
    pub fn checkpoint(conn: &Connection, key: &DomainKey) -> Result<Checkpoint, AuditError> {
        let mut stmt = conn.prepare("SELECT leaf FROM audit_log ORDER BY idx")?;
        let leaves = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .map(|l| {
                l.map_err(AuditError::from)?
                    .try_into()
                    .map_err(|_| AuditError::Encoding("stored leaf is not 32 bytes".into()))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        let cp = Checkpoint::sign(leaves.len() as u64, veil_merkle::root(&leaves), key);
        conn.execute(
            "INSERT INTO audit_checkpoints (size, note) VALUES (?1, ?2)",
            params![cp.size, cp.note],
        )?;
        Ok(cp)
    }
}

/// The export format: every entry's stored line, then a fresh signed checkpoint line.
pub fn export_lines(conn: &Connection, key: &DomainKey) -> Result<String, AuditError> {
    let mut out = String::new();
    {
        let mut stmt = conn.prepare("SELECT line FROM audit_log ORDER BY idx")?;
        for line in stmt.query_map([], |r| r.get::<_, String>(0))? {
            out.push_str(&line?);
            out.push('\n');
        }
    }
    let cp = AuditLog::checkpoint(conn, key)?;
    out.push_str(&serde_json::json!({ "checkpoint": cp.note }).to_string());
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify_export;

    fn log_with(n: usize) -> (tempfile::TempDir, Connection, DomainKey) {
        let dir = tempfile::tempdir().unwrap();
        let (key, created) =
            DomainKey::load_or_create(&dir.path().join("k"), "veil.test/audit").unwrap();
        assert!(created);
        let conn = Connection::open_in_memory().unwrap();
        AuditLog::migrate(&conn).unwrap();
        for i in 0..n {
            AuditLog::append(
                &conn,
                &key,
                AuditEvent::PolicySet {
                    dataset: "d".into(),
                    holder: "h".into(),
                    version: i as u64,
                    policy_hash: "ab".into(),
                },
            )
            .unwrap();
        }
        (dir, conn, key)
    }

    #[test]
    fn export_verifies_and_key_round_trips() {
        let (dir, conn, key) = log_with(5);
        let text = export_lines(&conn, &key).unwrap();
        let vk = crate::VerifierKey::parse(&key.verifier().to_string()).unwrap();
        let ok = verify_export(&text, &vk).unwrap();
        assert_eq!(ok.entries, 5);
        // Reloading the key file gives the same key.
        let (again, created) =
            DomainKey::load_or_create(&dir.path().join("k"), "veil.test/audit").unwrap();
        assert!(!created);
        assert_eq!(again.verifier(), key.verifier());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("k"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn tampering_is_named() {
        let (_dir, conn, key) = log_with(6);
        let text = export_lines(&conn, &key).unwrap();
        let vk = key.verifier();
        let lines: Vec<&str> = text.lines().collect();
        let check =
            |lines: Vec<String>| verify_export(&(lines.join("\n") + "\n"), &vk).unwrap_err();
        let owned = || lines.iter().map(|s| s.to_string()).collect::<Vec<_>>();

        let mut changed = owned();
        changed[3] = changed[3].replace("\"version\":3", "\"version\":30");
        assert!(matches!(
            check(changed),
            AuditError::Verification { entry: Some(3), .. }
        ));

        let mut deleted = owned();
        deleted.remove(2);
        assert!(matches!(
            check(deleted),
            AuditError::Verification { entry: Some(2), .. }
        ));

        let mut swapped = owned();
        swapped.swap(1, 4);
        assert!(matches!(
            check(swapped),
            AuditError::Verification { entry: Some(1), .. }
        ));

        let mut truncated = owned();
        truncated.remove(5);
        assert!(matches!(
            check(truncated),
            AuditError::Verification { entry: Some(5), .. }
        ));

        let other = DomainKey::load_or_create(&_dir.path().join("other"), "veil.test/audit")
            .unwrap()
            .0;
        let err = verify_export(&text, &other.verifier()).unwrap_err();
        assert!(
            matches!(err, AuditError::Verification { entry: Some(0), .. }),
            "{err}"
        );
    }
}
