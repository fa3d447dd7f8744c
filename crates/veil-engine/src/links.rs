//! Links between two datasets on their link keys (docs/linking.md): one holder proposes, the
//! other accepts or rejects, both steps in the audit log. A link joins rows whose join tokens
//! are equal: one person across both holders. Jobs on an accepted link are the next step (issue
//! 17); this module keeps the agreement itself.
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use veil_audit::{AuditEvent, AuditLog};
use veil_catalog::DatasetRecord;

use crate::Veil;
use crate::access::{Caller, Operation, Viewer, require};
use crate::error::{EngineError, Result, bad};
use crate::store::now;

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Waiting for the other holder.
    Proposed,
    /// Both holders agreed: jobs may use it.
    Accepted,
    /// The other holder refused; it cannot be used.
    Rejected,
    /// A holder of either side ended it (or the proposer withdrew it); it cannot be used.
    Revoked,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Proposed => "proposed",
            LinkState::Accepted => "accepted",
            LinkState::Rejected => "rejected",
            LinkState::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<LinkState> {
        match text {
            "proposed" => Ok(LinkState::Proposed),
            "accepted" => Ok(LinkState::Accepted),
            "rejected" => Ok(LinkState::Rejected),
            "revoked" => Ok(LinkState::Revoked),
            other => Err(EngineError::Internal(format!(
                "unknown link state `{other}`"
            ))),
        }
    }
}

/// One side of a link: a dataset and its link-key column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSide {
    pub dataset: String,
    pub key: String,
}

/// A link between two datasets, as its holders and reviewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub id: String,
    /// The proposer's side.
    pub left: LinkSide,
    /// The side whose holder decides.
    pub right: LinkSide,
    pub proposer: String,
    pub state: LinkState,
    /// The other holder's reason, when it rejected the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

const SELECT_LINK: &str = "SELECT id, left_dataset, left_key, right_dataset, right_key, proposer, \
                           state, reason, created_at, decided_at FROM links";

fn link_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Link, String)> {
    let state: String = r.get(6)?;
    Ok((
        Link {
            id: r.get(0)?,
            left: LinkSide {
                dataset: r.get(1)?,
                key: r.get(2)?,
            },
            right: LinkSide {
                dataset: r.get(3)?,
                key: r.get(4)?,
            },
            proposer: r.get(5)?,
            state: LinkState::Proposed,
            reason: r.get(7)?,
            created_at: veil_catalog::to_the_second(&r.get::<_, String>(8)?),
            decided_at: r
                .get::<_, Option<String>>(9)?
                .map(|t| veil_catalog::to_the_second(&t)),
        },
        state,
    ))
}

fn with_state((mut link, state): (Link, String)) -> Result<Link> {
    link.state = LinkState::parse(&state)?;
    Ok(link)
}

/// The answer for a link the caller may not see, and for one that does not exist.
fn no_such_link(id: &str) -> EngineError {
    EngineError::NotFound(format!("no link `{id}`"))
}

impl Veil {
    /// Proposes a link between the caller's dataset `dataset` (column `key`) and dataset `other`
    /// (column `other_key`), both link keys. Another holder's dataset must then accept it
    /// ([`Veil::decide_link`]); a link between two of the caller's own datasets is accepted at
    /// once, and may also join on their privacy units (one holder's datasets about the same
    /// people, docs/sql.md). An unknown dataset and one without that key answer alike.
    pub fn propose_link(
        &mut self,
        holder: &Caller,
        dataset: &str,
        key: &str,
        other: &str,
        other_key: &str,
    ) -> Result<Link> {
        require(holder, Operation::ManageLinks)?;
        let own = self.find_dataset(holder, dataset)?;
        let theirs = veil_catalog::get(&self.conn, other)?.filter(|d| {
            d.link_keys.iter().any(|k| k == other_key)
                || (d.owner == own.owner && d.privacy_unit.as_deref() == Some(other_key))
        });
        let same_holder = theirs.as_ref().is_some_and(|d| d.owner == own.owner);
        let own_unit = same_holder && own.privacy_unit.as_deref() == Some(key);
        if !own.link_keys.iter().any(|k| k == key) && !own_unit {
            return Err(bad(format!(
                "`{key}` is not a link key of `{}` (its link keys: {}); register the file with \
                 `--link-key {key}`",
                own.name,
                list_or_none(&own.link_keys)
            )));
        }
        let theirs = theirs.ok_or_else(|| {
            EngineError::NotFound(format!(
                "no dataset `{other}` with link key `{other_key}` (name it by its id, \
                     `owner:name`)"
            ))
        })?;
        if theirs.name == own.name {
            return Err(bad("a link joins two different datasets"));
        }
        self.insert_link(holder, &own, key, &theirs, other_key)
    }

    /// Records a proposal (accepted at once when one holder owns both sides) with its audit
    /// entries. Requires no open link between the same two sides.
    fn insert_link(
        &mut self,
        holder: &Caller,
        own: &DatasetRecord,
        key: &str,
        theirs: &DatasetRecord,
        their_key: &str,
    ) -> Result<Link> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let open: Option<String> = tx
            .query_row(
                "SELECT id FROM links WHERE state IN ('proposed', 'accepted') AND
                   ((left_dataset = ?1 AND right_dataset = ?2) OR (left_dataset = ?2 AND right_dataset = ?1))",
                params![own.name, theirs.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = open {
            return Err(EngineError::Conflict(format!(
                "`{}` and `{}` already have link {id}",
                own.name, theirs.name
            )));
        }
        let seq: u64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM links", [], |r| {
            r.get(0)
        })?;
        let id = format!("link-{seq:06}");
        let same_holder = theirs.owner == own.owner;
        let state = if same_holder {
            LinkState::Accepted
        } else {
            LinkState::Proposed
        };
        let ts = now();
        tx.execute(
            "INSERT INTO links (id, seq, left_dataset, left_key, right_dataset, right_key, proposer, state, created_at, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![id, seq, own.name, key, theirs.name, their_key, holder.name, state.as_str(), ts, same_holder.then(|| ts.clone())],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::LinkProposed {
                link: id.clone(),
                left_dataset: own.name.clone(),
                right_dataset: theirs.name.clone(),
                proposer: holder.name.clone(),
            },
        )?;
        if same_holder {
            AuditLog::append(
                &tx,
                &self.key,
                AuditEvent::LinkDecided {
                    link: id.clone(),
                    holder: holder.name.clone(),
                    accepted: true,
                    reason: String::new(),
                },
            )?;
        }
        let link = load_link(&tx, &id)?;
        tx.commit()?;
        Ok(link)
    }

    /// Accepts (`reject` = `None`) or rejects a proposed link, as the holder of its right side.
    /// A link the caller may not decide answers like a missing one; one already decided is a
    /// conflict.
    pub fn decide_link(&mut self, holder: &Caller, id: &str, reject: Option<&str>) -> Result<Link> {
        require(holder, Operation::ManageLinks)?;
        if let Some(reason) = reject {
            check_given_reason(reason, "a rejection")?;
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let link = load_link(&tx, id)?;
        let decider = veil_catalog::get(&tx, &link.right.dataset)?.map(|d| d.owner);
        if decider.as_deref() != Some(holder.name.as_str()) {
            return Err(no_such_link(id));
        }
        if link.state != LinkState::Proposed {
            return Err(EngineError::Conflict(format!(
                "link {id} is {}, not proposed",
                link.state.as_str()
            )));
        }
        let state = if reject.is_some() {
            LinkState::Rejected
        } else {
            LinkState::Accepted
        };
        tx.execute(
            "UPDATE links SET state = ?2, reason = ?3, decided_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), reject, now()],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::LinkDecided {
                link: id.into(),
                holder: holder.name.clone(),
                accepted: reject.is_none(),
                reason: reject.unwrap_or_default().into(),
            },
        )?;
        let link = load_link(&tx, id)?;
        tx.commit()?;
        Ok(link)
    }

    /// Ends a proposed or accepted link, as the holder of either side, with a reason: no job can
    /// join it from now on, and jobs over it that have not started are refused when they would.
    pub fn revoke_link(&mut self, holder: &Caller, id: &str, reason: &str) -> Result<Link> {
        require(holder, Operation::ManageLinks)?;
        check_given_reason(reason, "revoking a link")?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let link = load_link(&tx, id)?;
        let mut owners = Vec::new();
        for side in [&link.left.dataset, &link.right.dataset] {
            owners.extend(veil_catalog::get(&tx, side)?.map(|d| d.owner));
        }
        if !owners.iter().any(|o| o == &holder.name) {
            return Err(no_such_link(id));
        }
        if !matches!(link.state, LinkState::Proposed | LinkState::Accepted) {
            return Err(EngineError::Conflict(format!(
                "link {id} is {}, not in force",
                link.state.as_str()
            )));
        }
        tx.execute(
            "UPDATE links SET state = 'revoked', reason = ?2, decided_at = ?3 WHERE id = ?1",
            params![id, reason, now()],
        )?;
        AuditLog::append(
            &tx,
            &self.key,
            AuditEvent::LinkRevoked {
                link: id.into(),
                holder: holder.name.clone(),
                reason: reason.into(),
            },
        )?;
        let link = load_link(&tx, id)?;
        tx.commit()?;
        Ok(link)
    }

    /// The links `caller` may see: a holder those touching its datasets, a consumer the accepted
    /// links between datasets it is admitted to, reviewers and admins all of them.
    pub fn links_as(&self, caller: &Caller) -> Result<Vec<Link>> {
        let mut stmt = self.conn.prepare(&format!("{SELECT_LINK} ORDER BY seq"))?;
        let all = stmt
            .query_map([], link_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut visible = Vec::new();
        for link in all.into_iter().map(with_state) {
            let link = link?;
            if self.may_see_link(caller.viewer(), &link)? {
                visible.push(link);
            }
        }
        Ok(visible)
    }

    /// Whether `viewer` may see `link`.
    fn may_see_link(&self, viewer: Viewer<'_>, link: &Link) -> Result<bool> {
        let sides = [&link.left.dataset, &link.right.dataset];
        let records: Vec<Option<DatasetRecord>> = sides
            .iter()
            .map(|d| veil_catalog::get(&self.conn, d))
            .collect::<std::result::Result<_, _>>()?;
        Ok(match viewer {
            Viewer::Holder(h) => records.iter().flatten().any(|r| r.owner == h),
            Viewer::Consumer(_) => {
                link.state == LinkState::Accepted
                    && records.iter().all(|r| {
                        r.as_ref()
                            .is_some_and(|r| self.may_see_dataset(viewer, r).unwrap_or(false))
                    })
            }
            Viewer::Auditor => true,
        })
    }
}

/// Whether an accepted link joins datasets `a` and `b` (either way round), read in the caller's
/// transaction.
pub(crate) fn accepted_between(conn: &rusqlite::Connection, a: &str, b: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM links WHERE state = 'accepted' AND
               ((left_dataset = ?1 AND right_dataset = ?2) OR (left_dataset = ?2 AND right_dataset = ?1))",
            params![a, b],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The tables a job names besides its dataset: the tables its query reads, or a module job's
/// `[join]` dataset. What [`Veil::partners_for`] and [`Veil::lookups_for`] may read.
pub(crate) fn tables_named(manifest: &veil_policy::JobManifest) -> Vec<String> {
    match (&manifest.sql, &manifest.join) {
        (Some(sql), _) => veil_policy::sql::referenced_tables(&sql.text),
        (None, Some(join)) => vec![join.dataset.clone()],
        (None, None) => Vec::new(),
    }
}

/// Requires a reason for `what` that says something and passes the job reasons' check (one line,
/// at most 500 characters).
fn check_given_reason(reason: &str, what: &str) -> Result<()> {
    if reason.trim().is_empty() {
        return Err(bad(format!("{what} needs a reason: say why, in one line")));
    }
    crate::jobs::check_reason(reason)
}

/// Whether dataset `id` is among `named` (by its id or its short name).
pub(crate) fn names_any(id: &str, named: &[String]) -> bool {
    veil_policy::sql::table_names(id)
        .iter()
        .any(|n| named.contains(n))
}

fn load_link(conn: &rusqlite::Connection, id: &str) -> Result<Link> {
    let row = conn
        .query_row(&format!("{SELECT_LINK} WHERE id = ?1"), [id], link_from_row)
        .optional()?;
    row.map(with_state).unwrap_or_else(|| Err(no_such_link(id)))
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A dataset linked to a job's dataset, with what the job needs of it beside the planner's view.
pub(crate) struct LinkedPartner {
    pub partner: veil_policy::sql::Partner,
    pub record: DatasetRecord,
    pub policy: crate::datasets::StoredPolicy,
}

impl Veil {
    /// The datasets linked to `dataset` by accepted links whose current policy admits
    /// `consumer`: what a SQL job on `dataset` may join. Planned against their schemas only
    /// (empty tables): nothing of their rows is read before a job starts.
    /// Only the datasets `named` names (as [`tables_named`] gives them) are considered, so a
    /// job reads the schemas of just the datasets it joins.
    pub(crate) fn partners_for(
        &self,
        consumer: &str,
        dataset: &str,
        named: &[String],
    ) -> Result<Vec<LinkedPartner>> {
        if named.is_empty() {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(&format!(
            "{SELECT_LINK} WHERE state = 'accepted' AND (left_dataset = ?1 OR right_dataset = ?1)
             ORDER BY seq"
        ))?;
        let links = stmt
            .query_map([dataset], link_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut partners = Vec::new();
        for (link, _) in links {
            let (ours, theirs) = if link.left.dataset == dataset {
                (link.left, link.right)
            } else {
                (link.right, link.left)
            };
            if !names_any(&theirs.dataset, named) {
                continue;
            }
            let Some(record) = veil_catalog::get(&self.conn, &theirs.dataset)? else {
                continue;
            };
            let Some(policy) = self.policy(&record.name)? else {
                continue;
            };
            if !policy.policy.allows_consumer(consumer) {
                continue;
            }
            let schema = veil_catalog::schema_of(&self.data_dir, &record)?;
            let queried = std::sync::Arc::new(veil_policy::sql::queried_schema(&schema));
            let table = datafusion::datasource::MemTable::try_new(queried, vec![vec![]])
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            partners.push(LinkedPartner {
                partner: veil_policy::sql::Partner {
                    dataset: record.name.clone(),
                    key: ours.key,
                    partner_key: theirs.key,
                    policy: policy.policy.clone(),
                    table: std::sync::Arc::new(table),
                },
                record,
                policy,
            });
        }
        Ok(partners)
    }
}
