//! Registering datasets and setting their policies.
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use veil_audit::{AuditEvent, AuditLog};
use veil_catalog::{
    CatalogEntry, CsvOptions, DatasetRecord, IngestReport, LoadOptions, NoisyUnits,
};
use veil_policy::mechanisms::DiscreteLaplace;
use veil_policy::{Epsilon, Policy, document_hash, model::valid_principal};

use crate::access::{Caller, Operation, no_such_dataset, require};
use crate::error::bad;
use crate::store::now;
use crate::{EngineError, Result, Veil};

/// A policy as stored: its version, hash and text.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    /// The id of the dataset it governs.
    pub dataset: String,
    pub version: u64,
    pub hash: String,
    pub text: String,
    pub policy: Policy,
    pub holder: String,
    /// Set only when the policy is set: what the registration report suggests checking.
    pub warnings: Vec<String>,
}

/// The answer to a registration, for the holder only: the catalog record and the report on what
/// the file holds (per column: type, nulls, distinct values, range). The report describes the
/// data: it is stored with the dataset and never shown to consumers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    #[serde(flatten)]
    pub record: DatasetRecord,
    pub report: IngestReport,
    /// For a new version: why the dataset's policy stopped applying (it must be set again);
    /// absent when it carried over or there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_suspended: Option<String>,
}

/// A policy as the API and the CLI show it (`GET /v1/datasets/{name}/policy`, `policy show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    /// The id of the dataset it governs.
    pub dataset: String,
    pub version: u64,
    /// SHA-256 of the text.
    pub hash: String,
    /// Who set it: the dataset's owner.
    pub holder: String,
    /// The policy as its holder wrote it (TOML); for a consumer, with the `consumers` list cut
    /// to that consumer (so `hash` is not the hash of this text).
    pub toml: String,
    /// Set for a consumer's view: other admitted consumers' names were cut from `toml`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consumers_withheld: bool,
}

/// One version in a dataset's policy history (`GET /v1/datasets/{name}/policy/versions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRevision {
    pub version: u64,
    /// SHA-256 of the text.
    pub hash: String,
    pub holder: String,
    /// When it was set (RFC 3339).
    pub created_at: String,
    pub toml: String,
}

/// The answer to setting a policy: which version it became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub dataset: String,
    pub version: u64,
    pub hash: String,
    /// Columns the policy classifies that the registration report flags (padded values, text of
    /// mostly numbers, mostly null), for the owner to check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl StoredPolicy {
    pub fn document(&self) -> PolicyDocument {
        PolicyDocument {
            dataset: self.dataset.clone(),
            version: self.version,
            hash: self.hash.clone(),
            holder: self.holder.clone(),
            toml: self.text.clone(),
            consumers_withheld: false,
        }
    }

    pub fn version_info(&self) -> PolicyVersion {
        PolicyVersion {
            dataset: self.dataset.clone(),
            version: self.version,
            hash: self.hash.clone(),
            warnings: self.warnings.clone(),
        }
    }
}

/// How a file is registered ([`Veil::register_with`]).
#[derive(Debug, Clone, Default)]
pub struct RegisterOptions<'a> {
    /// The column identifying people; `None`: each row is a unit.
    pub privacy_unit: Option<&'a str>,
    /// How to read a CSV file.
    pub csv: CsvOptions,
    /// Columns of join tokens (docs/linking.md), each checked to hold nothing else.
    pub link_keys: &'a [String],
    /// Register the file as the next version of the caller's dataset.
    pub replace: bool,
}

impl Veil {
    /// Registers a file as dataset `name` owned by the calling holder (its id is `owner:name`). On
    /// any error nothing is left behind: no catalog row, no audit entry, no stored file.
    pub fn register_dataset(
        &mut self,
        owner: &Caller,
        file: &Path,
        name: &str,
        privacy_unit: Option<&str>,
        csv: CsvOptions,
    ) -> Result<Registered> {
        let options = RegisterOptions {
            privacy_unit,
            csv,
            ..RegisterOptions::default()
        };
        self.register_with(owner, file, name, &options)
    }

    /// Registers a file as the next version of the caller's dataset `name`, with its own content
    /// hash, commitment and certificate. The policy carries over when it still fits the new
    /// schema (columns, types, privacy unit, `max_units`); otherwise the dataset has no policy
    /// until its owner sets one again, and the log says why. Jobs read the version current when
    /// they start. Budgets stay: every version is about the same people.
    pub fn replace_dataset(
        &mut self,
        owner: &Caller,
        file: &Path,
        name: &str,
        privacy_unit: Option<&str>,
        csv: CsvOptions,
    ) -> Result<Registered> {
        let options = RegisterOptions {
            privacy_unit,
            csv,
            replace: true,
            ..RegisterOptions::default()
        };
        self.register_with(owner, file, name, &options)
    }

    /// Registers a file, or its next version, as `options` say (see [`Veil::register_dataset`]
    /// and [`Veil::replace_dataset`]).
    pub fn register_with(
        &mut self,
        owner: &Caller,
        file: &Path,
        name: &str,
        options: &RegisterOptions<'_>,
    ) -> Result<Registered> {
        let RegisterOptions {
            privacy_unit,
            ref csv,
            link_keys,
            replace,
        } = *options;
        require(owner, Operation::RegisterDataset)?;
        if !valid_principal(name) {
            return Err(bad(format!(
                "`{name}` is not a valid dataset name (letters, digits, '-', '_', '.')"
            )));
        }
        let id = veil_catalog::dataset_id(&owner.name, name);
        let previous = self.previous_version(&id, replace)?;
        let loaded = self.block_on(veil_catalog::load_file(
            file,
            &LoadOptions {
                csv: csv.clone(),
                format: None,
            },
        ))?;
        let (table, report) = (loaded.table, loaded.report);
        for key in link_keys {
            veil_catalog::check_link_key(&table.batches, key)?;
        }
        if let Some(unit) = privacy_unit
            && table.schema.field_with_name(unit).is_err()
        {
            return Err(bad(format!(
                "privacy unit `{unit}` is not a column of {}",
                file.display()
            )));
        }
        let stored = veil_catalog::store_parquet(&self.data_dir, &table)?;
        let columns = veil_catalog::columns_of(&table.schema);
        let salt = veil_catalog::new_salt()?;
        let record = DatasetRecord {
            name: id,
            owner: owner.name.clone(),
            content_commitment: veil_catalog::content_commitment(&salt, &stored.content_hash),
            salt,
            content_hash: stored.content_hash.clone(),
            schema_hash: veil_catalog::schema_hash(&columns),
            columns,
            rows: table.rows,
            privacy_unit: privacy_unit.map(str::to_owned),
            created_at: now(),
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            link_keys: link_keys.to_vec(),
        };
        let suspended = match &previous {
            Some(_) => self.policy_misfit(&record, &table.schema)?,
            None => None,
        };
        let result =
            self.commit_registration(&record, &report, previous.is_some(), suspended.clone());
        match result {
            Ok(()) => Ok(Registered {
                record,
                report,
                policy_suspended: suspended,
            }),
            Err(e) => {
                stored.discard(&self.conn);
                Err(e)
            }
        }
    }

    /// The current record of `id` when replacing it (which requires it to exist), `None` for a
    /// new registration (which requires the id to be unused, removed datasets included).
    fn previous_version(&self, id: &str, replace: bool) -> Result<Option<DatasetRecord>> {
        match (veil_catalog::get(&self.conn, id)?, replace) {
            (Some(current), true) => Ok(Some(current)),
            (None, true) => Err(EngineError::NotFound(format!(
                "no dataset `{id}` to replace: register it without --replace"
            ))),
            (_, false) if veil_catalog::id_taken(&self.conn, id)? => {
                match veil_catalog::get(&self.conn, id)? {
                    Some(_) => Err(EngineError::Catalog(veil_catalog::CatalogError::Duplicate(
                        id.into(),
                    ))),
                    None => Err(EngineError::Conflict(format!(
                        "dataset `{id}` was removed; its name stays taken (the log and the \
                         budgets refer to it): register under another name"
                    ))),
                }
            }
            (_, false) => Ok(None),
        }
    }

    /// Why the current policy of `record.name` does not fit the new version, if it does not.
    fn policy_misfit(
        &self,
        record: &DatasetRecord,
        schema: &datafusion::arrow::datatypes::Schema,
    ) -> Result<Option<String>> {
        let Some(current) = self.policy(&record.name)? else {
            return Ok(None);
        };
        let text = &current.text;
        let fits = Policy::from_toml(text)
            .and_then(|p| p.validate_against(schema, record.privacy_unit.as_deref()));
        match fits {
            Err(e) => Ok(Some(e.to_string())),
            Ok(policy) => match self.check_public_bounds(record, &policy) {
                Err(e) => Ok(Some(e.to_string())),
                Ok(()) => Ok(None),
            },
        }
    }

    /// Writes a registration (or a new version) with its report and audit entries, in one
    /// transaction. `suspended`: why the current policy no longer applies.
    fn commit_registration(
        &mut self,
        record: &DatasetRecord,
        report: &IngestReport,
        replacing: bool,
        suspended: Option<String>,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if replacing {
            veil_catalog::update(&tx, record)?;
            veil_catalog::record_version(&tx, record)?;
        } else {
            veil_catalog::insert(&tx, record)?;
        }
        tx.execute(
            "INSERT OR REPLACE INTO dataset_reports (dataset, report) VALUES (?1, ?2)",
            params![
                record.name,
                serde_json::to_string(report).expect("report serializes")
            ],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::DatasetRegistered {
                dataset: record.name.clone(),
                owner: record.owner.clone(),
                content_commitment: record.content_commitment.clone(),
                schema_hash: record.schema_hash.clone(),
                rows: record.rows,
                privacy_unit: record.privacy_unit.clone(),
                version: record.version,
            },
        )?;
        if let Some(reason) = suspended {
            tx.execute(
                "UPDATE datasets SET policy_floor =
                   (SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE dataset = ?1)
                 WHERE name = ?1",
                [&record.name],
            )?;
            AuditLog::append(
                &tx,
                &self.key,
                AuditEvent::PolicySuspended {
                    dataset: record.name.clone(),
                    dataset_version: record.version,
                    reason,
                },
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Retires the caller's dataset `name`: its data files (every version's) are deleted, new
    /// jobs cannot name it, jobs waiting on it are refused; its catalog row, jobs, ledger and log
    /// entries stay, and its name stays taken. Refused while a job is running on it.
    pub fn remove_dataset(&mut self, owner: &Caller, name: &str) -> Result<u64> {
        require(owner, Operation::RemoveDataset)?;
        let record = self.find_dataset(owner, name)?;
        let id = record.name.clone();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let running: Option<String> = tx
            .query_row(
                "SELECT id FROM jobs WHERE dataset = ?1 AND state = 'running' LIMIT 1",
                [&id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(job) = running {
            return Err(EngineError::Conflict(format!(
                "job {job} is running on `{id}`; remove the dataset once it has settled"
            )));
        }
        let waiting = crate::jobs::waiting_jobs(&tx, &id)?;
        for job in &waiting {
            crate::jobs::refuse_in(
                &tx,
                &self.key,
                job,
                crate::codes::JobCode::Policy,
                format!("dataset `{id}` was removed by its holder"),
            )?;
        }
        let files = veil_catalog::version_files(&tx, &id)?;
        veil_catalog::mark_removed(&tx, &id, &now())?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::DatasetRemoved {
                dataset: id.clone(),
                owner: record.owner.clone(),
                versions: record.version,
                jobs_refused: waiting.len() as u64,
            },
        )?;
        tx.commit()?;
        // After the commit: a crash in between leaves files the catalog no longer uses, never a
        // catalog entry without its file.
        for hash in files {
            if !veil_catalog::file_in_use(&self.conn, &hash)? {
                let _ = std::fs::remove_file(veil_catalog::dataset_path(&self.data_dir, &hash));
            }
        }
        Ok(record.version)
    }

    pub fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        Ok(veil_catalog::list(&self.conn)?)
    }

    /// One dataset's catalog record, by id (`owner:name`); for names as callers write them, see
    /// [`Veil::find_dataset`].
    pub fn dataset(&self, id: &str) -> Result<DatasetRecord> {
        veil_catalog::get(&self.conn, id)?.ok_or_else(|| no_such_dataset(id))
    }

    /// Sets a new version of the policy on `dataset` (an id, or a short name in `holder`'s
    /// namespace) from the TOML file `file`, as its owner.
    pub fn set_policy(
        &mut self,
        holder: &Caller,
        dataset: &str,
        file: &Path,
    ) -> Result<StoredPolicy> {
        require(holder, Operation::SetPolicy)?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
        self.set_policy_text(holder, dataset, &text)
    }

    /// Sets a new version of the policy on `dataset` from its TOML text, as its owner.
    pub fn set_policy_text(
        &mut self,
        holder: &Caller,
        dataset: &str,
        text: &str,
    ) -> Result<StoredPolicy> {
        require(holder, Operation::SetPolicy)?;
        // Another holder's dataset answers like a missing one.
        let record = self.find_dataset(holder, dataset)?;
        let caller = holder;
        let holder = holder.name.as_str();
        let dataset = record.name.as_str();
        let text = text.to_owned();
        let schema = veil_catalog::schema_of(&self.data_dir, &record)?;
        let mut policy =
            Policy::from_toml(&text)?.validate_against(&schema, record.privacy_unit.as_deref())?;
        policy.public_tables =
            self.resolve_public_tables(caller, &record.name, &policy.public_tables)?;
        check_link_key_classes(&record, &policy)?;
        self.check_public_bounds(&record, &policy)?;
        self.check_unit_count_unchanged(dataset, &policy)?;
        let draw = self.unit_count_to_draw(&record, &policy)?;
        let warnings = self.policy_warnings(dataset, &policy)?;
        let hash = document_hash(&text);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: u64 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM policies WHERE dataset = ?1",
            [dataset],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO policies (dataset, version, hash, toml, parsed, holder, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![dataset, version, hash, text, serde_json::to_string(&policy).expect("policy serializes"), holder, now()],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::PolicySet {
                dataset: dataset.into(),
                holder: holder.into(),
                version,
                policy_hash: hash.clone(),
            },
        )?;
        if let Some((epsilon, units)) = draw {
            publish_unit_count(
                &tx,
                &self.key,
                &record.name,
                epsilon,
                units,
                &policy,
                version,
            )?;
        }
        tx.commit()?;
        Ok(StoredPolicy {
            dataset: dataset.into(),
            version,
            hash,
            text,
            policy,
            holder: holder.into(),
            warnings,
        })
    }

    /// The registration report of dataset `id`, if it has one (datasets registered before reports
    /// existed have none).
    pub(crate) fn report(&self, id: &str) -> Result<Option<IngestReport>> {
        let text: Option<String> = self
            .conn
            .query_row(
                "SELECT report FROM dataset_reports WHERE dataset = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| EngineError::Internal(e.to_string())))
            .transpose()
    }

    /// What the owner should know about the columns `policy` classifies, from the registration
    /// report: padded, mostly-numeric text or mostly null columns.
    fn policy_warnings(&self, dataset: &str, policy: &Policy) -> Result<Vec<String>> {
        let Some(report) = self.report(dataset)? else {
            return Ok(Vec::new());
        };
        Ok(policy
            .columns
            .keys()
            .flat_map(|c| report.warnings_for(c))
            .collect())
    }

    /// Refuses a policy whose public bounds the dataset exceeds: jobs are scheduled for
    /// `max_units` units and SQL jobs (which read every row) for `max_units × max_rows_per_unit`
    /// rows, so more would make them release late — a timing channel. The messages are for the
    /// owner, who may know the counts.
    fn check_public_bounds(&self, record: &DatasetRecord, policy: &Policy) -> Result<()> {
        self.check_max_units(record, policy.max_units)?;
        check_max_rows(record, policy)?;
        self.check_rows_per_token(record, policy.max_rows_per_unit)
    }

    /// Refuses a policy under which one join token has more rows than `max_rows_per_unit`: a
    /// SQL job over a link reads every joined row and is scheduled for at most
    /// `max_rows_per_unit` rows of a person on each side (`policy/src/sql/mod.rs`, `shape`).
    fn check_rows_per_token(&self, record: &DatasetRecord, max_rows_per_unit: u32) -> Result<()> {
        if record.rows <= u64::from(max_rows_per_unit) || record.link_keys.is_empty() {
            return Ok(());
        }
        let batches = self.block_on(veil_catalog::read_columns(
            &self.data_dir,
            record,
            &record.link_keys,
        ))?;
        for (index, key) in record.link_keys.iter().enumerate() {
            let most = rows_per_value(&batches, index)?
                .into_values()
                .max()
                .unwrap_or(0);
            if most > u64::from(max_rows_per_unit) {
                return Err(bad(format!(
                    "a join token of `{key}` in `{}` has {most} rows but the policy's \
                     max_rows_per_unit is {max_rows_per_unit}: set max_rows_per_unit to at \
                     least {most} (SQL jobs over a link are scheduled for that many rows of a \
                     person on each side)",
                    record.name
                )));
            }
        }
        Ok(())
    }

    /// Refuses a policy whose public bound on privacy units the dataset exceeds.
    fn check_max_units(&self, record: &DatasetRecord, max_units: u64) -> Result<()> {
        if record.rows <= max_units {
            return Ok(());
        }
        let units = self.units_of(record)?;
        if units > max_units {
            return Err(bad(format!(
                "`{}` has {units} privacy units but the policy's max_units is {max_units}: set \
                 max_units to at least {units} (it is public, and jobs are scheduled for that many)",
                record.name
            )));
        }
        Ok(())
    }

    /// The exact number of privacy units (distinct non-null unit values, or rows). Secret: for
    /// the owner's messages and for DP mechanisms only.
    fn units_of(&self, record: &DatasetRecord) -> Result<u64> {
        match &record.privacy_unit {
            None => Ok(record.rows),
            Some(unit) => {
                let batches = self.block_on(veil_catalog::read_columns(
                    &self.data_dir,
                    record,
                    std::slice::from_ref(unit),
                ))?;
                count_distinct(&batches)
            }
        }
    }

    /// Refuses, before anything is written, a policy that would redraw the published unit count:
    /// a second draw would be a second release to every consumer who saw the first.
    fn check_unit_count_unchanged(&self, dataset: &str, policy: &Policy) -> Result<()> {
        match (
            policy.unit_count_epsilon,
            published_count(&self.conn, dataset)?,
        ) {
            (Some(wanted), Some(drawn)) if wanted != drawn.epsilon => Err(bad(format!(
                "dp.unit_count_epsilon: `{dataset}`'s unit count was published with ε = {}; it is \
                 drawn once per dataset, so keep unit_count_epsilon = {} (or remove it to stop \
                 showing the count)",
                drawn.epsilon, drawn.epsilon
            ))),
            _ => Ok(()),
        }
    }

    /// The unit count to publish with this policy: `(ε, exact units)` when the policy asks for a
    /// count and none was drawn yet.
    fn unit_count_to_draw(
        &self,
        record: &DatasetRecord,
        policy: &Policy,
    ) -> Result<Option<(Epsilon, u64)>> {
        match policy.unit_count_epsilon {
            Some(epsilon) if published_count(&self.conn, &record.name)?.is_none() => {
                Ok(Some((epsilon, self.units_of(record)?)))
            }
            _ => Ok(None),
        }
    }

    /// What a consumer sees of `record`: its catalog entry without anything computed from the
    /// rows, plus the noisy unit count where the current policy publishes one.
    pub fn catalog_entry(&self, record: &DatasetRecord) -> Result<CatalogEntry> {
        let mut entry = record.consumer_view();
        let policy = self.policy(&record.name)?;
        for id in policy.iter().flat_map(|p| &p.policy.public_tables) {
            if let Some(table) = veil_catalog::get(&self.conn, id)? {
                entry.public_tables.push(veil_catalog::PublicTable {
                    name: table.name,
                    columns: table.columns,
                });
            }
        }
        let shown = policy.is_some_and(|p| p.policy.unit_count_epsilon.is_some());
        if let (true, Some(drawn)) = (shown, published_count(&self.conn, &record.name)?) {
            let half = DiscreteLaplace::for_sensitivity(1, drawn.epsilon.micro()).half_width(0.95);
            let half = u64::try_from(half).unwrap_or(u64::MAX);
            entry.units = Some(NoisyUnits {
                noisy: drawn.noisy_units,
                epsilon: drawn.epsilon.as_f64(),
                ci95: [
                    drawn.noisy_units.saturating_sub(half),
                    drawn.noisy_units.saturating_add(half),
                ],
            });
        }
        Ok(entry)
    }

    /// Every policy version of a dataset `caller` may read the ledgers of (its owner, reviewers,
    /// admins), oldest first.
    pub fn policy_history_as(
        &self,
        caller: &Caller,
        reference: &str,
    ) -> Result<Vec<PolicyRevision>> {
        require(caller, Operation::ReadLedgers)?;
        let dataset = self.find_dataset(caller, reference)?.name;
        let mut stmt = self.conn.prepare(
            "SELECT version, hash, holder, created_at, toml FROM policies WHERE dataset = ?1
             ORDER BY version",
        )?;
        let revisions = stmt
            .query_map([&dataset], |r| {
                Ok(PolicyRevision {
                    version: r.get(0)?,
                    hash: r.get(1)?,
                    holder: r.get(2)?,
                    created_at: r.get(3)?,
                    toml: r.get(4)?,
                })
            })?
            .collect::<std::result::Result<_, _>>()?;
        Ok(revisions)
    }

    /// The current policy of a dataset (by id), if one has been set.
    pub fn policy(&self, dataset: &str) -> Result<Option<StoredPolicy>> {
        self.dataset(dataset)?;
        let row = self
            .conn
            .query_row(
                "SELECT version, hash, toml, parsed, holder FROM policies WHERE dataset = ?1
                   AND version >= (SELECT policy_floor FROM datasets WHERE name = ?1)
                 ORDER BY version DESC LIMIT 1",
                [dataset],
                |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(version, hash, text, parsed, holder)| {
            let policy = serde_json::from_str(&parsed)
                .map_err(|e| EngineError::Internal(format!("stored policy: {e}")))?;
            Ok(StoredPolicy {
                dataset: dataset.into(),
                version,
                hash,
                text,
                policy,
                holder,
                warnings: Vec::new(),
            })
        })
        .transpose()
    }
}

/// Link keys hold join tokens, which identify people across holders: a policy may make one the
/// privacy unit (jobs never see it) or leave it forbidden, never deliver it to jobs.
fn check_link_key_classes(record: &DatasetRecord, policy: &Policy) -> Result<()> {
    for key in &record.link_keys {
        let unit = policy.privacy_unit.as_deref() == Some(key.as_str());
        if !unit && policy.column_rule(key).class != veil_policy::model::ColumnClass::Forbidden {
            return Err(bad(format!(
                "policy: field `columns.{key}`: `{key}` is a link key (join tokens identify people                  across holders); make it the privacy unit or classify it \"forbidden\""
            )));
        }
    }
    Ok(())
}

/// Draws and records a noisy count of `units` in the policy's transaction. Mechanism: discrete
/// Laplace with scale 1/ε (Canonne, Kamath, Steinke 2020); sensitivity 1 because adding or
/// removing one person changes the count of distinct units by at most one. Clamping to
/// `[0, max_units]` is post-processing.
fn publish_unit_count(
    tx: &rusqlite::Transaction<'_>,
    key: &veil_audit::DomainKey,
    dataset: &str,
    epsilon: Epsilon,
    units: u64,
    policy: &Policy,
    version: u64,
) -> Result<()> {
    let noise = DiscreteLaplace::for_sensitivity(1, epsilon.micro())
        .sample(&mut crate::execute::noise_rng());
    let noisy = (i128::from(units) + noise).clamp(0, i128::from(policy.max_units)) as u64;
    tx.execute(
        "INSERT INTO published_counts (dataset, epsilon_micro, noisy_units, policy_version, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![dataset, epsilon.micro(), noisy, version, now()],
    )?;
    AuditLog::append(
        tx,
        key,
        AuditEvent::UnitCountPublished {
            dataset: dataset.into(),
            policy_version: version,
            epsilon_micro: epsilon.micro(),
            noisy_units: noisy,
        },
    )?;
    Ok(())
}

/// A dataset's published noisy unit count, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishedCount {
    pub epsilon: Epsilon,
    pub noisy_units: u64,
}

/// The published unit count of `dataset` (an id), if one was drawn.
pub(crate) fn published_count(conn: &Connection, dataset: &str) -> Result<Option<PublishedCount>> {
    Ok(conn
        .query_row(
            "SELECT epsilon_micro, noisy_units FROM published_counts WHERE dataset = ?1",
            [dataset],
            |r| {
                Ok(PublishedCount {
                    epsilon: Epsilon(r.get(0)?),
                    noisy_units: r.get(1)?,
                })
            },
        )
        .optional()?)
}

/// Distinct non-null values of the first column of `batches`.
fn count_distinct(batches: &[datafusion::arrow::array::RecordBatch]) -> Result<u64> {
    Ok(rows_per_value(batches, 0)?.len() as u64)
}

/// How many rows each non-null value of column `index` of `batches` has, by its text.
fn rows_per_value(
    batches: &[datafusion::arrow::array::RecordBatch],
    index: usize,
) -> Result<std::collections::HashMap<String, u64>> {
    use datafusion::arrow::array::{Array, StringArray};
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::DataType;
    let mut rows = std::collections::HashMap::new();
    for batch in batches {
        let column = cast(batch.column(index), &DataType::Utf8)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        let column = column
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| EngineError::Internal("cast to Utf8".into()))?;
        for i in 0..column.len() {
            if column.is_valid(i) {
                *rows.entry(column.value(i).to_owned()).or_insert(0) += 1;
            }
        }
    }
    Ok(rows)
}

/// Refuses a policy under which the dataset has more rows than SQL jobs are scheduled for
/// (`max_units × max_rows_per_unit`; module jobs sample each unit's rows down to the cap, SQL
/// jobs read them all).
fn check_max_rows(record: &DatasetRecord, policy: &Policy) -> Result<()> {
    let per_unit = u64::from(policy.max_rows_per_unit.max(1));
    let scheduled = policy.max_units.saturating_mul(per_unit);
    if record.rows <= scheduled {
        return Ok(());
    }
    let needed = record.rows.div_ceil(policy.max_units.max(1));
    Err(bad(format!(
        "`{}` has {} rows but SQL jobs are scheduled for at most max_units × max_rows_per_unit = \
         {} × {} = {scheduled}: set max_rows_per_unit to at least {needed}, or raise max_units \
         (both are public; module jobs see at most max_rows_per_unit rows of a unit)",
        record.name, record.rows, policy.max_units, per_unit
    )))
}
