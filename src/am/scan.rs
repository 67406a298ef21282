//! Ordered scans: `ORDER BY col <=> query LIMIT k`. Each search asks the snapshot (FAISS) for
//! a batch of candidates and scores the records appended since the snapshot exactly, where
//! they lie in the index pages, merging both; when the executor keeps asking (WHERE filters,
//! dead or invisible rows), the search is repeated deeper, skipping rows already returned,
//! until the index is exhausted or `semantic.max_scan_tuples` candidates were asked for.
//!
//! The scan state lives in the scan's memory context (dropped with it, also when the query
//! fails); what both access methods' ordered scans share is in [`super::ordered`].

use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, ColumnKind, Meta};
use semantic_index::records::{decode_records_into, RecordKey};
use semantic_index::tail::TailVectors;
use semantic_index::{best_per_id, tid_to_id, SearchParams};

use super::appended::AppendedCaches;
use super::operators::{check_serves, TEXT_BY_VECTOR_STRATEGY};
use super::ordered::{self, retry_while_changing, Candidate, OrderedBy, Query, Rescan, RowQueue};
use super::storage::{read_meta, read_records_from};
use super::vectors::{datum_text, given_query_vector, query_vector};
use crate::errors::raise;
use crate::gucs;

struct ScanState {
    queue: RowQueue,
    query: Option<Vec<f32>>,
    /// Candidates asked of FAISS by the next search.
    k: usize,
    exhausted: bool,
}

/// The index distance of the row a faiss scan just returned, when `text_hash`/`query` are
/// that row's text and the scan's query.
pub fn returned_row_distance(text_hash: u64, query: ordered::QueryRef) -> Option<f64> {
    ordered::returned_row_distance(OrderedBy::Vector, text_hash, query)
}

/// A new index scan with the arrays the executor reads returned rows' distances from (the AM
/// allocates them): what faiss and bm25 scans begin with.
pub unsafe fn new_ordered_scan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: `index` is the open index relation ambeginscan was given.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
        let n = norderbys.max(1) as usize;
        (*scan).xs_orderbyvals =
            pg_sys::palloc0(n * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum;
        (*scan).xs_orderbynulls = pg_sys::palloc(n * std::mem::size_of::<bool>()) as *mut bool;
        std::ptr::write_bytes((*scan).xs_orderbynulls, 1, n);
        scan
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL's index AM interface calls this with the open index relation.
    unsafe {
        let scan = new_ordered_scan(index, nkeys, norderbys);
        let state = ScanState {
            queue: RowQueue::new(OrderedBy::Vector),
            query: None,
            k: 0,
            exhausted: true,
        };
        // Freed with the scan's memory context, whichever way the scan ends.
        let state = PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(state);
        (*scan).opaque = state as *mut std::ffi::c_void;
        scan
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    // SAFETY: the executor passes the scan ambeginscan made and its order-by keys.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        state.queue.restart(None);
        state.query = None;
        state.exhausted = true;
        let (argument, strategy) = match ordered::rescan(scan, orderbys, norderbys) {
            Rescan::EveryRow => {
                state.queue.extend(every_row((*scan).indexRelation));
                return;
            }
            Rescan::By { argument, strategy } => (argument, strategy),
        };
        let index = (*scan).indexRelation;
        let meta = read_meta(index);
        check_serves(&meta, index, strategy);
        state.query = Some(if meta.kind != ColumnKind::Text {
            query_vector(&meta, index, argument)
        } else if strategy == TEXT_BY_VECTOR_STRATEGY {
            let (given, prepared) = given_query_vector(&meta, index, argument);
            state.queue.restart(Some(Query::Vector(given)));
            prepared
        } else {
            state.queue.restart(Some(Query::Text(datum_text(argument))));
            query_vector(&meta, index, argument)
        });
        state.k = gucs::scan_candidates().min(gucs::max_scan_tuples());
        state.exhausted = false;
    }
}

/// Every row of the index, in no order: what `ORDER BY col <op> NULL` returns.
unsafe fn every_row(index: pg_sys::Relation) -> Vec<Candidate> {
    // SAFETY: `index` is the open index of the caller's scan.
    unsafe {
        let ids = retry_while_changing(OrderedBy::Vector, || {
            let meta = read_meta(index);
            let mut ids: Vec<i64> = Vec::new();
            if meta.cache_key().is_some() {
                let snapshot = super::cache::snapshot(index, &meta)?;
                let dead = super::cache::dead_positions(index, &meta, snapshot.len())?;
                ids.extend(
                    snapshot
                        .ids()
                        .enumerate()
                        .filter(|(pos, _)| dead.as_ref().is_none_or(|d| !d.contains(*pos)))
                        .map(|(_, id)| id),
                );
            }
            if meta.dim != 0 {
                ids.extend(with_appended(index, &meta, |rows| {
                    rows.keys
                        .iter()
                        .map(|k| tid_to_id(k.block, k.offset))
                        .collect::<Vec<_>>()
                })?);
            }
            Some(ids)
        });
        // Chunks share their row's TID; the queue returns each row once.
        ids.into_iter()
            .map(|id| Candidate {
                id,
                distance: 0.0,
                text_hash: None,
            })
            .collect()
    }
}

/// The records appended since the snapshot, decoded: what this backend has read of them.
struct AppendedVectors {
    keys: Vec<RecordKey>,
    /// The keys' vectors, in the same order.
    vectors: TailVectors,
}

impl AppendedVectors {
    /// Reads the records from `from` to the end of the chain; None if the chain was rewritten
    /// under the reader.
    unsafe fn extend(
        &mut self,
        index: pg_sys::Relation,
        meta: &Meta,
        from: ChainPos,
    ) -> Option<ChainPos> {
        let dim = meta.dim as usize;
        let mut vectors = Vec::new();
        // SAFETY: the caller's open index.
        let end = unsafe {
            read_records_from(index, from, meta.generation, dim, |bytes| {
                decode_records_into(bytes, dim, &mut self.keys, &mut vectors);
            })
        };
        self.vectors.extend(&vectors);
        end
    }
}

thread_local! {
    static APPENDED: AppendedCaches<AppendedVectors> = AppendedCaches::default();
}

/// `f` of the records appended to `index` since `meta`'s snapshot, whose vectors have a
/// dimension (`meta.dim` > 0); None if the index was rewritten under the reader.
unsafe fn with_appended<R>(
    index: pg_sys::Relation,
    meta: &Meta,
    f: impl FnOnce(&AppendedVectors) -> R,
) -> Option<R> {
    APPENDED.with(|cached| {
        // SAFETY: the caller's open index and its metapage.
        unsafe {
            cached.with(
                index,
                meta,
                || AppendedVectors {
                    keys: Vec::new(),
                    vectors: TailVectors::new(meta.dim as usize),
                },
                |rows, from| rows.extend(index, meta, from),
                f,
            )
        }
    })
}

/// One candidate of the exact search over appended records.
struct Appended {
    id: i64,
    score: f32,
    text_hash: u64,
}

/// The records appended since `meta`'s snapshot that may score at least as well as `cutoff`
/// (all of them without one), scored exactly; None if the chain was rewritten under the
/// reader.
unsafe fn score_appended(
    index: pg_sys::Relation,
    meta: &Meta,
    query: &[f32],
    cutoff: Option<f32>,
) -> Option<Vec<Appended>> {
    if meta.dim == 0 {
        return Some(Vec::new()); // no vector yet, so no record
    }
    let metric = meta.metric.faiss_metric();
    // SAFETY: the caller's open index and its metapage.
    unsafe {
        with_appended(index, meta, |rows| {
            let mut scored = Vec::new();
            rows.vectors.score(metric, query, cutoff, &mut scored);
            scored
                .into_iter()
                .map(|(i, score)| Appended {
                    id: tid_to_id(rows.keys[i].block, rows.keys[i].offset),
                    score,
                    text_hash: rows.keys[i].text_hash,
                })
                .collect()
        })
    }
}

unsafe fn search_more(index: pg_sys::Relation, state: &mut ScanState) {
    // SAFETY: `index` is the open index of the caller's scan.
    unsafe {
        let query = state.query.as_ref().expect("searching needs a query");
        let params = SearchParams {
            ef_search: gucs::hnsw_ef_search().max(state.k),
            nprobe: gucs::ivf_nprobe(),
        };
        let k = state.k;
        // The last round: every appended record is a candidate, whatever its distance.
        let last = k >= gucs::max_scan_tuples();
        let (candidates, exhausted) = retry_while_changing(OrderedBy::Vector, || {
            let meta = read_meta(index);
            let snapshot = match meta.cache_key() {
                Some(_) => match super::cache::snapshot(index, &meta) {
                    Some(snapshot) => Some(snapshot),
                    None => return None, // rewritten while being read
                },
                None => None,
            };
            let dead = match &snapshot {
                Some(snapshot) => super::cache::dead_positions(index, &meta, snapshot.len())?,
                None => None,
            };
            let metric = meta.metric.faiss_metric();
            let hits = match &snapshot {
                Some(snapshot) => snapshot
                    .search(query, k, &params, dead.as_deref())
                    .unwrap_or_else(|e| {
                        raise(
                            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                            format!("faiss search failed: {e}"),
                            None,
                        )
                    }),
                None => Vec::new(),
            };
            let snapshot_len = snapshot.as_ref().map_or(0, |s| s.len());
            let snapshot_done = hits.len() < k || k >= snapshot_len;
            // While the snapshot may hold nearer rows than its k-th hit, appended rows beyond that
            // hit wait for a deeper round: rows come out in distance order.
            let cutoff = (!snapshot_done && !last)
                .then(|| hits.last().map(|h| h.score))
                .flatten();
            let appended = score_appended(index, &meta, query, cutoff)?;
            let mut hashes: HashMap<i64, u64> = HashMap::new();
            let mut scored: Vec<(i64, f32)> = Vec::with_capacity(hits.len() + appended.len());
            for hit in &hits {
                scored.push((hit.id, hit.score));
                if let Some(hash) = hit.text_hash {
                    hashes.insert(hit.id, hash);
                }
            }
            for a in appended
                .iter()
                .filter(|a| cutoff.is_none_or(|c| !metric.better(c, a.score)))
            {
                scored.push((a.id, a.score));
                if meta.kind == ColumnKind::Text {
                    hashes.insert(a.id, a.text_hash);
                }
            }
            // Chunks share their row's TID: keep each row's best chunk.
            let candidates: Vec<Candidate> =
                best_per_id(scored.iter().copied(), metric, scored.len())
                    .into_iter()
                    .filter(|(id, _)| !state.queue.was_returned(*id))
                    .map(|(id, score)| Candidate {
                        id,
                        distance: meta.metric.distance(score),
                        text_hash: hashes.get(&id).copied(),
                    })
                    .collect();
            Some((candidates, last || snapshot_done))
        });
        state.queue.extend(candidates);
        state.exhausted = exhausted;
        state.k = k.saturating_mul(4).min(gucs::max_scan_tuples());
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    _direction: pg_sys::ScanDirection::Type,
) -> bool {
    // SAFETY: the executor passes the scan ambeginscan made.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        // Without a query the scan is exhausted from the start: it returns what rescan queued.
        loop {
            if state.queue.emit_next(scan) {
                return true;
            }
            if state.exhausted {
                return false;
            }
            pg_sys::check_for_interrupts!();
            search_more((*scan).indexRelation, state);
        }
    }
}

/// The state itself goes with the scan's memory context; the scan's claim on the returned row
/// ends here.
#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: the executor passes the scan ambeginscan made.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        state.queue.end();
    }
}
