//! The gate plan both benches measure: one key (13 education levels), one value in [0, 5000],
//! ε = 1, one group per person, keys from the data (partition selection at δ = 1e-8).
use std::sync::Arc;

use veil_policy::manifest::GateValue;
use veil_policy::{Aggregate, Charge, Delta, Epsilon, JobPlan, Noise};

pub fn income_by_education(aggregate: Aggregate) -> Arc<JobPlan> {
    Arc::new(JobPlan {
        privacy_unit: Some("person_id".into()),
        columns: vec![],
        keys: vec!["education".into()],
        count_weight: 1,
        values: vec![GateValue {
            name: "weekly_income".into(),
            aggregate,
            lo: 0,
            hi: 5_000_000,
            weight: 1,
        }],
        epsilon: Epsilon(1_000_000),
        max_groups_per_unit: 1,
        min_units_per_group: 50,
        max_rows_per_unit: 1000,
        blocks: None,
        noise: Noise::Laplace,
        charge: Charge {
            epsilon_pure: Epsilon(1_000_000),
            delta_selection: Delta(10_000_000),
            ..Charge::default()
        },
        public_groups: None,
        schedule: Default::default(),
        sql: None,
        join: None,
    })
}
