//! The distance operators (`<=>` of texts; `<=>`, `<->`, `<#>` of real[]) and semantic_search().

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_encoder::TextKind;
use semantic_index::layout::ColumnKind;
use semantic_index::IndexMetric;

use crate::am::ordered::QueryRef;
use crate::am::scan::returned_row_distance;
use crate::am::storage::read_meta;
use crate::am::vectors::{array_vector, check_finite, text_query_vector};
use crate::am::IndexKind;
use crate::errors::raise;
use crate::gucs;
use crate::models::embed_text;

thread_local! {
    /// The right-hand side of the last text <=> text: the constant query of a scan, embedded
    /// once rather than once per row.
    static LAST_QUERY: RefCell<Option<(String, String, Vec<f32>)>> = const { RefCell::new(None) };
}

fn embed_query(model: &str, text: &str) -> Vec<f32> {
    let hit = LAST_QUERY.with(|q| {
        q.borrow()
            .as_ref()
            .filter(|(m, t, _)| m == model && t == text)
            .map(|(_, _, v)| v.clone())
    });
    hit.unwrap_or_else(|| {
        let v = embed_text(model, text, TextKind::Query).vector;
        LAST_QUERY
            .with(|q| *q.borrow_mut() = Some((model.to_string(), text.to_string(), v.clone())));
        v
    })
}

/// `document <=> query` for text: the cosine distance of their embeddings under
/// `semantic.default_model`. A faiss index on the column answers the same ORDER BY with its
/// own model and metric, without embedding every row.
#[pg_extern(stable, parallel_safe, cost = 10000)]
fn semantic_text_distance(document: &str, query: &str) -> f64 {
    // On a row a faiss index scan just returned (PostgreSQL evaluates the ORDER BY expression
    // again for it), the index's own distance: no embedding of the row, and the same value the
    // rows were ordered by.
    if let Some(distance) = returned_row_distance(
        semantic_index::records::text_hash(document),
        QueryRef::Text(query),
    ) {
        return distance;
    }
    let model = gucs::default_model();
    let q = embed_query(&model, query);
    let d = embed_text(&model, document, TextKind::Passage).vector;
    1.0 - semantic_encoder::cosine_similarity(&d, &q)
}

/// The vector a faiss index on text searches for `query`: the query embedded by the index's
/// model as a query (with the model's query prefix), the model checked against the one the
/// index was built with. `col <=> semantic_query_vector('idx', 'q')` finds what `col <=> 'q'`
/// finds, and the vector can be kept and searched with again, or embedded once for many
/// searches (semantic_search does so for every shard of a distributed table).
#[pg_extern(stable, parallel_safe, strict)]
fn semantic_query_vector(index: pgrx::PgRelation, query: &str) -> Vec<f32> {
    // SAFETY: pgrx opened the index for the call.
    unsafe {
        IndexKind::expect(&index, &[IndexKind::Faiss]);
        let meta = read_meta(index.as_ptr());
        if meta.kind != ColumnKind::Text {
            raise(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!(
                    "faiss index \"{}\" is on a vector column: its queries are vectors already",
                    index.name()
                ),
                None,
            );
        }
        text_query_vector(&meta, index.as_ptr(), query)
    }
}

/// `document <=> query` for a text and a query vector the caller embedded (with
/// `embed(query, model)`, or kept from an earlier search): the cosine distance of the
/// document's embedding under `semantic.default_model` to it. A faiss index on the column
/// answers the same ORDER BY with its own model and metric, embedding nothing.
#[pg_extern(stable, parallel_safe, cost = 10000)]
fn semantic_text_vector_distance(document: &str, query: Array<f32>) -> f64 {
    let q = array_vector(query);
    check_finite(&q);
    if let Some(distance) = returned_row_distance(
        semantic_index::records::text_hash(document),
        QueryRef::Vector(&q),
    ) {
        return distance;
    }
    let model = gucs::default_model();
    let d = embed_text(&model, document, TextKind::Passage).vector;
    if d.len() != q.len() {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "model \"{model}\" (semantic.default_model) gives {}-dimensional vectors, and the query vector has {} dimensions",
                d.len(),
                q.len()
            ),
            Some("Embed the query with the same model, or search through a faiss index on the column (it uses its own model)."),
        );
    }
    1.0 - semantic_encoder::cosine_similarity(&d, &q)
}

/// The distance of two real[] vectors under `metric`, as the index ranks by it.
fn vector_distance(metric: IndexMetric, a: Array<f32>, b: Array<f32>) -> f64 {
    let (a, b) = (array_vector(a), array_vector(b));
    if a.len() != b.len() {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!(
                "vectors of different dimensions: {} and {}",
                a.len(),
                b.len()
            ),
            None,
        );
    }
    metric.between(&a, &b)
}

/// `a <=> b` for real[]: the cosine distance, as pgvector's `<=>`.
#[pg_extern(immutable, parallel_safe, strict, name = "semantic_vector_distance")]
fn semantic_vector_cosine_distance(a: Array<f32>, b: Array<f32>) -> f64 {
    vector_distance(IndexMetric::Cosine, a, b)
}

/// What `<=>` of real[] was before 0.6.0, the Euclidean distance: the library symbol that
/// semantic_vector_distance stays bound to in a database whose extension is older than the
/// library, until ALTER EXTENSION semantic UPDATE binds it to the cosine distance.
#[pg_extern(immutable, parallel_safe, strict, sql = false)]
fn semantic_vector_distance(a: Array<f32>, b: Array<f32>) -> f64 {
    vector_distance(IndexMetric::L2, a, b)
}

/// `a <-> b` for real[]: the Euclidean distance.
#[pg_extern(immutable, parallel_safe, strict)]
fn semantic_vector_l2_distance(a: Array<f32>, b: Array<f32>) -> f64 {
    vector_distance(IndexMetric::L2, a, b)
}

/// `a <#> b` for real[]: the negative inner product.
#[pg_extern(immutable, parallel_safe, strict)]
fn semantic_vector_negative_inner_product(a: Array<f32>, b: Array<f32>) -> f64 {
    vector_distance(IndexMetric::Dot, a, b)
}

/// `a <+> b` for real[]: the L1 (taxicab) distance.
#[pg_extern(immutable, parallel_safe, strict)]
fn semantic_vector_l1_distance(a: Array<f32>, b: Array<f32>) -> f64 {
    vector_distance(IndexMetric::L1, a, b)
}

/// The score semantic_search reports for a row at `distance` under an index's `metric`
/// (higher is better): the cosine similarity, the inner product, or minus the Euclidean or
/// L1 distance.
#[pg_extern(immutable, parallel_safe, strict)]
fn semantic_distance_score(metric: &str, distance: f64) -> f64 {
    let metric = IndexMetric::parse(metric).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown metric \"{metric}\""),
            Some("metric is cosine, dot, l1 or l2."),
        )
    });
    metric.score_of_distance(distance)
}

extension_sql_file!(
    "../sql/semantic_search.sql",
    name = "semantic_operators",
    requires = [
        semantic_text_distance,
        semantic_text_vector_distance,
        semantic_query_vector,
        semantic_vector_cosine_distance,
        semantic_vector_l2_distance,
        semantic_vector_negative_inner_product,
        semantic_vector_l1_distance,
        semantic_distance_score,
        am::semantic_index_info
    ]
);
