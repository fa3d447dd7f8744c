//! Public tables: the datasets a policy's `public_tables` declares, which SQL jobs on the
//! policy's dataset may join as lookups (`veil_policy::sql::Lookup`, docs/sql.md). The holder
//! names them when setting the policy; the engine resolves the names to the holder's own
//! datasets and reads their rows whole when a job is checked, started and run.
use veil_catalog::DatasetRecord;
use veil_policy::sql::Lookup;

use crate::error::{EngineError, Result};
use crate::{Caller, Veil};

impl Veil {
    /// The ids of the datasets `names` (short names or ids) in `holder`'s namespace, for the
    /// policy of `dataset`: each must be one of the holder's datasets other than `dataset`.
    pub(crate) fn resolve_public_tables(
        &self,
        holder: &Caller,
        dataset: &str,
        names: &[String],
    ) -> Result<Vec<String>> {
        names
            .iter()
            .map(|name| {
                let record = self.find_dataset(holder, name).map_err(|_| {
                    EngineError::BadInput(format!(
                        "policy: field `public_tables`: `{name}` is not one of your datasets; \
                         register the public table first (`veil dataset register`)"
                    ))
                })?;
                if record.name == dataset {
                    return Err(EngineError::BadInput(format!(
                        "policy: field `public_tables`: `{name}` is this dataset itself; list \
                         other datasets whose rows are public"
                    )));
                }
                Ok(record.name)
            })
            .collect()
    }

    /// The public tables of `declared` (dataset ids) among the tables a SQL job's query names
    /// (`named`, [`crate::links::tables_named`]), as SQL jobs read them ([`Veil::load_lookups`]):
    /// a query that joins none reads none.
    pub(crate) fn lookups_for(
        &self,
        declared: &[String],
        named: &[String],
    ) -> Result<Vec<(Lookup, DatasetRecord)>> {
        let wanted: Vec<String> = declared
            .iter()
            .filter(|id| crate::links::names_any(id, named))
            .cloned()
            .collect();
        self.load_lookups(&wanted)
    }

    /// The public tables `ids` as SQL jobs read them (every column, DECIMAL as DOUBLE), with
    /// their records (for the version and commitment the audit names). A table removed since
    /// the policy named it is left out: a query joining it then fails to plan, saying which
    /// tables it may read.
    pub(crate) fn load_lookups(&self, ids: &[String]) -> Result<Vec<(Lookup, DatasetRecord)>> {
        let mut lookups = Vec::new();
        for id in ids {
            let Some(record) = veil_catalog::get(&self.conn, id)? else {
                continue;
            };
            let schema = veil_catalog::schema_of(&self.data_dir, &record)?;
            let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let batches =
                self.block_on(veil_catalog::read_columns(&self.data_dir, &record, &names))?;
            let batches =
                crate::execute::as_queried(batches, false).map_err(EngineError::Internal)?;
            let schema = match batches.first() {
                Some(b) => b.schema(),
                None => std::sync::Arc::new(veil_policy::sql::queried_schema(&schema)),
            };
            lookups.push((
                Lookup {
                    dataset: record.name.clone(),
                    schema,
                    batches,
                },
                record,
            ));
        }
        Ok(lookups)
    }
}
