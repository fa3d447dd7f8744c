//! What a SQL job's planner can reach: the job's dataset, the public tables its policy declares
//! (lookups) and DataFusion's built-in scalar and aggregate functions. No other table, no table functions, no window functions, no
//! lambdas, no variables, no files: the planner answers "not found" for each, so a query naming
//! them fails to plan before anything is read or spent.
use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::common::TableReference;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

/// The planner's view of the world for one query.
pub(super) struct DatasetOnly {
    /// Per table, the names it answers to (its short name, then its id `owner:name`) and its
    /// rows: the dataset first, then the lookups.
    tables: Vec<(Vec<String>, Arc<dyn TableSource>)>,
    scalars: HashMap<String, Arc<ScalarUDF>>,
    aggregates: HashMap<String, Arc<AggregateUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
    /// The tables a query may join (ids: the policy's public tables, linked datasets), named
    /// when it reads another.
    joinable: Vec<String>,
}

impl DatasetOnly {
    /// `tables` are the only tables a query may read, each with its names (requires at least
    /// one name each; the dataset first) and its rows (an empty table with the dataset's schema
    /// when only planning). `declared` are the policy's public tables, named with the others
    /// in the error for a table a query may not read; it grants nothing (only `tables` are
    /// reachable).
    pub(super) fn new(
        tables: Vec<(Vec<String>, Arc<dyn TableProvider>)>,
        declared: &[String],
    ) -> DatasetOnly {
        let joinable = tables[1..]
            .iter()
            .map(|(names, _)| names.last().unwrap_or(&names[0]).clone())
            .chain(declared.iter().cloned())
            .collect();
        let state = SessionStateBuilder::new().with_default_features().build();
        DatasetOnly {
            tables: tables
                .into_iter()
                .map(|(names, provider)| (names, provider_as_source(provider)))
                .collect(),
            scalars: state.scalar_functions().clone(),
            aggregates: state.aggregate_functions().clone(),
            planners: state.expr_planners().to_vec(),
            options: state.config_options().as_ref().clone(),
            joinable,
        }
    }
}

impl ContextProvider for DatasetOnly {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        if let TableReference::Bare { table } = &name
            && let Some((_, source)) = self
                .tables
                .iter()
                .find(|(names, _)| names.iter().any(|n| n == table.as_ref()))
        {
            return Ok(source.clone());
        }
        Err(DataFusionError::Plan(not_readable(
            &name.to_string(),
            &self.tables[0].0[0],
            &self.joinable,
        )))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.scalars.get(name).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.aggregates.get(name).cloned()
    }

    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.scalars.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.aggregates.keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The error for a query that reads `name`: what a SQL job on `dataset` may read instead —
/// the tables it may join (`joinable`: its policy's public tables and the linked datasets it
/// names), by short name.
fn not_readable(name: &str, dataset: &str, joinable: &[String]) -> String {
    let mut names: Vec<String> = joinable
        .iter()
        .map(|id| format!("`{}`", super::table_names(id)[0]))
        .collect();
    names.sort();
    names.dedup();
    let joins = if names.is_empty() {
        " (its policy declares no public tables to join)".to_owned()
    } else {
        format!(
            ", and the tables it may join: {} (its policy's public tables and linked datasets)",
            names.join(", ")
        )
    };
    format!(
        "the query reads `{name}`; a SQL job reads only its dataset, `{dataset}`{joins}; \
         check the table's name (docs/sql.md; linked datasets: docs/linking.md)"
    )
}
