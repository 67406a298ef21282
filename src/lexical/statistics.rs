//! The corpus a bm25 search scores against, and figures gathered from several indexes: a
//! Citus table has one bm25 index per shard, each with its own documents, lengths and document
//! frequencies, so each shard alone would score as a smaller corpus. semantic_search first
//! gathers every shard's figures (`semantic_lexical_statistics`), sums them, and hands the sum
//! to every shard's scan through `semantic.bm25_statistics` (Elasticsearch's
//! dfs_query_then_fetch): each shard then scores as one server holding all the rows would.

use std::collections::BTreeMap;

use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_lexical::{Bm25, CorpusStats, Segments, Tail};
use serde::{Deserialize, Serialize};

use super::analyze::lexemes;
use super::settings;
use super::storage::read_meta;
use crate::am::ordered::{retry_while_changing, OrderedBy};
use crate::errors::raise;
use crate::gucs;

/// Documents, their total length (in lexemes), and the document frequency of each query term.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusFigures {
    pub documents: u64,
    pub total_length: u64,
    pub df: BTreeMap<String, u64>,
}

impl CorpusFigures {
    /// One index's figures: its segments and the rows appended since, for `terms`.
    pub fn of(segments: &Segments, tail: &Tail, terms: &[(String, u32)]) -> Self {
        let (base, appended) = (segments.stats(), tail.stats());
        CorpusFigures {
            documents: base.documents + appended.documents,
            total_length: base.total_length + appended.total_length,
            df: terms
                .iter()
                .map(|(term, _)| (term.clone(), segments.df(term) + tail.df(term)))
                .collect(),
        }
    }

    /// The figures `semantic.bm25_statistics` holds, if it is set.
    pub fn from_setting() -> Option<Self> {
        let text = gucs::bm25_statistics()?;
        Some(serde_json::from_str(&text).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("semantic.bm25_statistics is not valid: {e}"),
                Some("It takes {\"documents\": N, \"total_length\": L, \"df\": {\"term\": n, ...}}, as semantic_lexical_statistics returns; RESET it to score with each index's own statistics."),
            )
        }))
    }

    /// BM25 with parameters `k1` and `b` over this corpus.
    pub fn bm25(&self, k1: f32, b: f32) -> Bm25 {
        Bm25 {
            k1,
            b,
            stats: CorpusStats {
                documents: self.documents,
                total_length: self.total_length,
            },
        }
    }

    /// The documents holding `term` (0 for a term the figures do not name).
    pub fn df(&self, term: &str) -> u64 {
        self.df.get(term).copied().unwrap_or(0)
    }
}

/// What a bm25 index's corpus is for `query`: its documents (the snapshot's, marked ones
/// included until a compaction drops them, as the scores count them, and the rows appended
/// since), their total length in lexemes, and the number of documents holding each of the
/// query's lexemes, as JSON. Summed over several indexes (the shards of a distributed table)
/// and set as `semantic.bm25_statistics`, they make each index score as one corpus.
#[pg_extern(stable, strict)]
fn semantic_lexical_statistics(index: pgrx::PgRelation, query: &str) -> pgrx::JsonB {
    // SAFETY: an open index relation (checked to be a bm25 one), and its table.
    unsafe {
        crate::am::IndexKind::expect(&index, &[crate::am::IndexKind::Bm25]);
        let heap = index.heap_relation().unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                format!("\"{}\" has no table", index.name()),
                None,
            )
        });
        let rel = index.as_ptr();
        let config = pgrx::pg_sys::Oid::from(settings(&read_meta(rel)).config_oid);
        let terms = lexemes(config, query);
        let figures = retry_while_changing(OrderedBy::Bm25, || {
            let meta = read_meta(rel);
            let sealed = super::cache::segments(rel, &meta)?;
            let segments = sealed.view();
            super::scan::with_tail(rel, heap.as_ptr(), &meta, |tail| {
                CorpusFigures::of(&segments, tail, &terms)
            })
        });
        pgrx::JsonB(serde_json::to_value(figures).expect("figures serialise"))
    }
}
