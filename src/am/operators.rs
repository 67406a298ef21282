//! Which ORDER BY operator a faiss index serves. Its operator class lists them by strategy
//! number (`IndexMetric::strategy`): text's `<=>` (distance under the model's own metric), and
//! for vectors pgvector's four, `<=>` cosine distance, `<->` Euclidean distance, `<#>`
//! negative inner product and `<+>` L1 distance. A vector index ranks by one metric and serves that metric's
//! operator only: the planner is steered away from it for the others (cost.rs), and a scan
//! that still gets one is an error, never another metric's order.
//!
//! The metric: for real[], the `metric` option (l2 by default); for pgvector's types, the
//! operator class (`vector_cosine_ops`...), which a `metric` option must not contradict.

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ColumnKind, Meta};
use semantic_index::IndexMetric;

use super::build::relation_name;
use super::vectors::VectorType;
use crate::errors::raise;

/// The operator class of an index's column: its family and input type.
pub struct OperatorClass {
    family: pg_sys::Oid,
    input: pg_sys::Oid,
}

impl OperatorClass {
    pub unsafe fn of_index(index: pg_sys::Relation) -> OperatorClass {
        // SAFETY: `index` is an open index relation: its opfamily and input type arrays have
        // one entry per key column.
        unsafe {
            OperatorClass {
                family: *(*index).rd_opfamily,
                input: *(*index).rd_opcintype,
            }
        }
    }

    pub unsafe fn of_plan(info: *const pg_sys::IndexOptInfo) -> OperatorClass {
        // SAFETY: the planner's description of an index with one key column.
        unsafe {
            OperatorClass {
                family: *(*info).opfamily,
                input: *(*info).opcintype,
            }
        }
    }

    fn holds(&self, metric: IndexMetric) -> bool {
        // SAFETY: a catalog lookup.
        unsafe {
            pg_sys::get_opfamily_member(
                self.family,
                self.input,
                self.input,
                metric.strategy() as i16,
            ) != pg_sys::InvalidOid
        }
    }

    /// real[]'s operator class as releases before 0.6.0 made it, until ALTER EXTENSION semantic
    /// UPDATE: `<=>` alone, which meant the distance under the index's own metric.
    fn is_before_0_6(&self) -> bool {
        self.input == pg_sys::FLOAT4ARRAYOID && !self.holds(IndexMetric::L2)
    }
}

fn operators(metrics: &[IndexMetric]) -> String {
    let ops: Vec<&str> = metrics.iter().map(|m| m.operator()).collect();
    ops.join(", ")
}

/// The metric of a new index on a vector column, given its `metric` option.
pub unsafe fn vector_metric(index: pg_sys::Relation, option: Option<IndexMetric>) -> IndexMetric {
    // SAFETY: `index` is an open faiss index relation (the caller's contract).
    let (class, vector_type) =
        unsafe { (OperatorClass::of_index(index), VectorType::of_index(index)) };
    if vector_type == Some(VectorType::RealArray) {
        return option.unwrap_or(IndexMetric::L2);
    }
    let metrics: Vec<IndexMetric> = IndexMetric::ALL
        .into_iter()
        .filter(|m| class.holds(*m))
        .collect();
    let implied = match metrics.as_slice() {
        [only] => Some(*only),
        _ => None,
    };
    let metric = option.or(implied).unwrap_or(IndexMetric::L2);
    if !metrics.contains(&metric) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "metric \"{}\" orders by {}, but the index's operator class orders by {}",
                metric.name(),
                metric.operator(),
                operators(&metrics)
            ),
            Some("Leave out the metric option: the operator class decides it."),
        );
    }
    metric
}

/// The strategy of `text <=> real[]` in faiss_text_ops: a query vector the caller embedded
/// (with `semantic_query_vector`, or kept from an earlier search) against a text index, which
/// then embeds nothing (`text <=> text` is strategy 1).
pub const TEXT_BY_VECTOR_STRATEGY: u16 = 2;

/// Whether an index with `meta` and operator class `class` ranks in the order of the ORDER BY
/// operator of `strategy`.
pub fn serves(meta: &Meta, class: &OperatorClass, strategy: u16) -> bool {
    meta.kind == ColumnKind::Text
        || class.is_before_0_6()
        || IndexMetric::of_strategy(strategy) == Some(meta.metric)
}

/// Raises unless `index` serves the ORDER BY operator of `strategy`.
pub unsafe fn check_serves(meta: &Meta, index: pg_sys::Relation, strategy: u16) {
    // SAFETY: `index` is the open index of the caller's scan.
    if serves(meta, &unsafe { OperatorClass::of_index(index) }, strategy) {
        return;
    }
    let asked = IndexMetric::of_strategy(strategy).map_or("?", |m| m.operator());
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "faiss index \"{}\" ranks by metric \"{}\": it serves ORDER BY ... {}, not {asked}",
            // SAFETY: as above.
            unsafe { relation_name(index) },
            meta.metric.name(),
            meta.metric.operator()
        ),
        Some(&format!(
            "Order by {}, or create an index of the metric of {asked}.",
            meta.metric.operator()
        )),
    );
}
