//! Ordered scans: `ORDER BY col <=> query LIMIT k`. Each search asks the snapshot (FAISS) for
//! a batch of candidates and scores the records appended since the snapshot exactly, where
//! they lie in the index pages, merging both; when the executor keeps asking (WHERE filters,
//! dead or invisible rows), the search is repeated deeper, skipping rows already returned,
//! until the index is exhausted or `semantic.max_scan_tuples` candidates were asked for.
//!
//! The scan state lives in the scan's memory context (dropped with it, also when the query
//! fails), and so does the claim of a scan on [`RETURNED`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, ColumnKind, Meta, NO_BLOCK};
use semantic_index::records::score_records;
use semantic_index::{best_per_id, id_to_tid, tid_to_id, SearchParams};

use super::build::relation_name;
use super::storage::{read_meta, read_records, ChainRead};
use super::vectors::{datum_text, query_vector};
use crate::errors::raise;
use crate::gucs;

struct Candidate {
    id: i64,
    distance: f64,
    /// Text indexes: the row's text hash.
    text_hash: Option<u64>,
}

struct ScanState {
    /// Tells this scan's [`RETURNED`] row from another scan's.
    id: u64,
    query: Option<Vec<f32>>,
    /// Text indexes: the query text, for [`returned_row_distance`].
    query_text: Option<String>,
    pending: VecDeque<Candidate>,
    returned: HashSet<i64>,
    /// Candidates asked of FAISS by the next search.
    k: usize,
    exhausted: bool,
}

/// The row a text index scan returned last: PostgreSQL evaluates the ORDER BY expression
/// `col <=> query` again on every returned row, and the operator answers from here instead of
/// embedding the row's text.
struct ReturnedRow {
    scan: u64,
    query: String,
    text_hash: u64,
    distance: f64,
}

thread_local! {
    static RETURNED: RefCell<Option<ReturnedRow>> = const { RefCell::new(None) };
    static NEXT_SCAN_ID: Cell<u64> = const { Cell::new(0) };
}

impl ScanState {
    /// Forgets the row this scan returned last, if [`RETURNED`] still holds it: it must not
    /// answer a `<=>` after the scan.
    fn release_returned(&self) {
        RETURNED.with(|r| {
            let mut r = r.borrow_mut();
            if r.as_ref().is_some_and(|row| row.scan == self.id) {
                *r = None;
            }
        });
    }
}

impl Drop for ScanState {
    /// Runs when the scan's memory context goes: at the end of the query, or at its failure.
    fn drop(&mut self) {
        self.release_returned();
    }
}

/// The index distance of the row a scan just returned, when `text_hash`/`query` are that row's
/// text and the scan's query.
pub fn returned_row_distance(text_hash: u64, query: &str) -> Option<f64> {
    RETURNED.with(|r| {
        r.borrow()
            .as_ref()
            .filter(|r| r.text_hash == text_hash && r.query == query)
            .map(|r| r.distance)
    })
}

/// A new index scan with the arrays the executor reads returned rows' distances from (the AM
/// allocates them): what faiss and bm25 scans begin with.
pub unsafe fn new_ordered_scan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
    let n = norderbys.max(1) as usize;
    (*scan).xs_orderbyvals =
        pg_sys::palloc0(n * std::mem::size_of::<pg_sys::Datum>()) as *mut pg_sys::Datum;
    (*scan).xs_orderbynulls = pg_sys::palloc(n * std::mem::size_of::<bool>()) as *mut bool;
    std::ptr::write_bytes((*scan).xs_orderbynulls, 1, n);
    scan
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    let scan = new_ordered_scan(index, nkeys, norderbys);
    let id = NEXT_SCAN_ID.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let state = ScanState {
        id,
        query: None,
        query_text: None,
        pending: VecDeque::new(),
        returned: HashSet::new(),
        k: 0,
        exhausted: true,
    };
    // Freed with the scan's memory context, whichever way the scan ends.
    let state = PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(state);
    (*scan).opaque = state as *mut std::ffi::c_void;
    scan
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    let state = &mut *((*scan).opaque as *mut ScanState);
    if !orderbys.is_null() && norderbys > 0 {
        std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
    }
    state.pending.clear();
    state.returned.clear();
    state.query = None;
    state.query_text = None;
    state.exhausted = true;
    if (*scan).numberOfOrderBys < 1 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "faiss indexes only answer ORDER BY column <=> query",
            None,
        );
    }
    let key = &*(*scan).orderByData;
    if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
        return; // ORDER BY col <=> NULL: nothing is near NULL
    }
    let index = (*scan).indexRelation;
    let meta = read_meta(index);
    if meta.kind == ColumnKind::Text {
        state.query_text = Some(datum_text(key.sk_argument));
    }
    state.query = Some(query_vector(&meta, &relation_name(index), key.sk_argument));
    state.k = gucs::scan_candidates().min(gucs::max_scan_tuples());
    state.exhausted = false;
}

/// One candidate of the exact search over appended records.
struct Appended {
    id: i64,
    score: f32,
    text_hash: u64,
}

/// The records appended since `meta`'s snapshot, scored exactly; None if the chain was
/// rewritten under the reader.
unsafe fn score_appended(
    index: pg_sys::Relation,
    meta: &Meta,
    query: &[f32],
) -> Option<Vec<Appended>> {
    let from = if meta.snapshot_end.block == NO_BLOCK {
        ChainPos {
            block: meta.records_head,
            slot: 0,
        }
    } else {
        meta.snapshot_end
    };
    let mut out = Vec::new();
    if from.block == NO_BLOCK || meta.dim == 0 {
        return Some(out);
    }
    let dim = meta.dim as usize;
    let metric = meta.metric.faiss_metric();
    let read = read_records(index, from, meta.generation, dim, |bytes| {
        out.extend(
            score_records(bytes, dim, query, metric).map(|(key, score)| Appended {
                id: tid_to_id(key.block, key.offset),
                score,
                text_hash: key.text_hash,
            }),
        );
    });
    matches!(read, ChainRead::Done).then_some(out)
}

unsafe fn search_more(index: pg_sys::Relation, state: &mut ScanState) {
    let query = state.query.as_ref().expect("searching needs a query");
    let params = SearchParams {
        ef_search: gucs::hnsw_ef_search().max(state.k),
        nprobe: gucs::ivf_nprobe(),
    };
    let k = state.k;
    // The last round: every appended record is a candidate, whatever its distance.
    let last = k >= gucs::max_scan_tuples();
    for _ in 0..10 {
        let meta = read_meta(index);
        let snapshot = match meta.cache_key() {
            Some(_) => match super::cache::snapshot(index, &meta) {
                Some(snapshot) => Some(snapshot),
                None => continue, // rewritten while being read
            },
            None => None,
        };
        let Some(appended) = score_appended(index, &meta, query) else {
            continue;
        };
        let metric = meta.metric.faiss_metric();
        let hits = match &snapshot {
            Some(snapshot) => snapshot.search(query, k, &params).unwrap_or_else(|e| {
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
        let returned = &state.returned;
        let candidates = best_per_id(scored.iter().copied(), metric, scored.len())
            .into_iter()
            .filter(|(id, _)| !returned.contains(id))
            .map(|(id, score)| Candidate {
                id,
                distance: meta.metric.distance(score),
                text_hash: hashes.get(&id).copied(),
            });
        state.pending.extend(candidates);
        state.exhausted = last || snapshot_done;
        state.k = k.saturating_mul(4).min(gucs::max_scan_tuples());
        return;
    }
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        "faiss index kept changing while being read",
        Some("Retry the query."),
    )
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    _direction: pg_sys::ScanDirection::Type,
) -> bool {
    let state = &mut *((*scan).opaque as *mut ScanState);
    if state.query.is_none() {
        return false;
    }
    loop {
        while let Some(candidate) = state.pending.pop_front() {
            if !state.returned.insert(candidate.id) {
                continue;
            }
            let (block, offset) = id_to_tid(candidate.id);
            let tid = &mut (*scan).xs_heaptid;
            tid.ip_blkid.bi_hi = (block >> 16) as u16;
            tid.ip_blkid.bi_lo = (block & 0xffff) as u16;
            tid.ip_posid = offset;
            (*scan).xs_recheck = false;
            (*scan).xs_recheckorderby = false;
            *(*scan).xs_orderbyvals = candidate.distance.into_datum().expect("a float8 datum");
            *(*scan).xs_orderbynulls = false;
            let returned = match (&state.query_text, candidate.text_hash) {
                (Some(query), Some(text_hash)) => Some(ReturnedRow {
                    scan: state.id,
                    query: query.clone(),
                    text_hash,
                    distance: candidate.distance,
                }),
                _ => None,
            };
            RETURNED.with(|r| *r.borrow_mut() = returned);
            return true;
        }
        if state.exhausted {
            return false;
        }
        pg_sys::check_for_interrupts!();
        search_more((*scan).indexRelation, state);
    }
}

/// The state itself goes with the scan's memory context (see [`ScanState`]'s Drop); the
/// scan's claim on [`RETURNED`] ends here.
#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    let state = &mut *((*scan).opaque as *mut ScanState);
    state.pending.clear();
    state.returned = HashSet::new();
    state.release_returned();
}
