//! Ordered scans: `ORDER BY col <@> 'query' LIMIT k`, best BM25 score first. Each search asks
//! the snapshot for its top candidates (MaxScore over its posting lists) and scores the rows
//! appended since the snapshot exactly, reading their text back from the table the first time
//! this backend meets them (analysed rows are kept per backend until the next fold); corpus
//! statistics and document frequencies cover both. When the executor keeps asking (filters,
//! dead rows) the search is repeated deeper, skipping rows already returned, up to
//! `semantic.max_scan_tuples` candidates. Once every row that holds a query term has come
//! out, the other rows follow at distance 0 (an ORDER BY returns every row), unless the
//! search stopped at `semantic.max_scan_tuples`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{Meta, NO_BLOCK};
use semantic_index::records::{decode_records_into, RecordKey};
use semantic_index::tid_to_id;
use semantic_lexical::{Bm25, CorpusStats, QueryTerm, Snapshot};

use super::analyze::lexemes;
use super::heap::row_text;
use super::storage::{read_meta, read_records, ChainRead};
use crate::am::ordered::{self, retry_while_changing, Candidate, OrderedBy, RowQueue};
use crate::am::vectors::datum_text;
use crate::errors::raise;
use crate::gucs;

/// A row appended since the snapshot, analysed for this scan's query.
struct AppendedRow {
    id: i64,
    text_hash: u64,
    length: u32,
    /// Its frequency of each query term.
    tfs: Vec<u32>,
}

struct ScanState {
    queue: RowQueue,
    /// The query text and its lexemes with their frequencies.
    query: Option<(String, Vec<(String, u32)>)>,
    /// The appended rows of generation .0, analysed once per scan.
    appended: Option<(u64, Vec<AppendedRow>)>,
    k: usize,
    exhausted: bool,
    /// Whether the rows without any query term are still to come (after the matching ones).
    rest_pending: bool,
}

/// The distance (minus the BM25 score) of the row a bm25 scan just returned, when `text_hash`
/// and `query` are that row's text and the scan's query.
pub fn returned_row_distance(text_hash: u64, query: &str) -> Option<f64> {
    ordered::returned_row_distance(OrderedBy::Bm25, text_hash, query)
}

#[pg_guard]
pub unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: i32,
    norderbys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL's scan allocation; the state lives in the scan's memory context.
    unsafe {
        let scan = crate::am::scan::new_ordered_scan(index, nkeys, norderbys);
        let state = ScanState {
            queue: RowQueue::new(OrderedBy::Bm25),
            query: None,
            appended: None,
            k: 0,
            exhausted: true,
            rest_pending: false,
        };
        let state = PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(state);
        (*scan).opaque = state as *mut std::ffi::c_void;
        scan
    }
}

fn settings(meta: &Meta) -> &semantic_index::layout::LexicalSettings {
    meta.lexical.as_ref().unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
            "bm25 index metapage has no lexical settings",
            Some("REINDEX the index."),
        )
    })
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    _keys: pg_sys::ScanKey,
    _nkeys: i32,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) {
    // SAFETY: the scan ambeginscan made.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        if !orderbys.is_null() && norderbys > 0 {
            std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
        }
        state.queue.restart(None);
        state.query = None;
        state.appended = None;
        state.exhausted = true;
        state.rest_pending = false;
        if (*scan).numberOfOrderBys < 1 {
            // A scan without ORDER BY (PostgreSQL 18's index-only scan of a query that reads
            // no column, see the faiss scan): every row, in no order.
            state.query = Some((String::new(), Vec::new()));
            state.rest_pending = true;
            return;
        }
        let key = &*(*scan).orderByData;
        if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
            return;
        }
        let meta = read_meta((*scan).indexRelation);
        let text = datum_text(key.sk_argument);
        let terms = lexemes(pg_sys::Oid::from(settings(&meta).config_oid), &text);
        // A query of stop words only (or no words) matches nothing: every row is at distance 0.
        state.exhausted = terms.is_empty();
        state.rest_pending = true;
        state.queue.restart(Some(text.clone()));
        state.query = Some((text, terms));
        state.k = gucs::scan_candidates().min(gucs::max_scan_tuples());
    }
}

/// The keys of the rows appended since `meta`'s snapshot; None if rewritten under the reader.
unsafe fn appended_keys(index: pg_sys::Relation, meta: &Meta) -> Option<Vec<RecordKey>> {
    let mut keys = Vec::new();
    if meta.snapshot_end.block == NO_BLOCK {
        return Some(keys);
    }
    let mut unused = Vec::new();
    // SAFETY: an open index.
    let read = unsafe {
        read_records(index, meta.snapshot_end, meta.generation, 0, |bytes| {
            decode_records_into(bytes, 0, &mut keys, &mut unused);
        })
    };
    matches!(read, ChainRead::Done).then_some(keys)
}

/// An appended row as its text was analysed: its length and its lexemes' frequencies, sorted.
struct AnalysedRow {
    length: u32,
    lexemes: Vec<(Box<str>, u32)>,
}

/// The appended rows one generation of an index had when this backend last searched it.
struct AnalysedTail {
    relfilenode: u32,
    generation: u64,
    /// By row id and text hash (a TID given to another text is another row); None where the
    /// text could not be read back (the row is gone).
    rows: HashMap<(i64, u64), Option<Rc<AnalysedRow>>>,
}

thread_local! {
    /// Appended rows this backend has read back and analysed, per index: a search analyses only
    /// the rows appended since its last one. Dropped at each new generation (a fold), so it
    /// holds at most the fold threshold's rows.
    static ANALYSED: RefCell<HashMap<pg_sys::Oid, AnalysedTail>> = RefCell::default();
}

/// The appended rows of `keys`, analysed for `terms`: from this backend's cache of analysed
/// rows, reading back and analysing only those it has not seen.
unsafe fn analyse_appended(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    meta: &Meta,
    keys: &[RecordKey],
    terms: &[(String, u32)],
) -> Vec<AppendedRow> {
    // SAFETY: the scan's open index.
    let (oid, relfilenode, attnum) = unsafe {
        (
            (*index).rd_id,
            crate::compat::relation_file(index).number,
            super::build::indexed_column(index),
        )
    };
    let config = pg_sys::Oid::from(settings(meta).config_oid);
    ANALYSED.with(|analysed| {
        let mut analysed = analysed.borrow_mut();
        let tail = analysed.entry(oid).or_insert_with(|| AnalysedTail {
            relfilenode,
            generation: meta.generation,
            rows: HashMap::new(),
        });
        if tail.relfilenode != relfilenode || tail.generation != meta.generation {
            *tail = AnalysedTail {
                relfilenode,
                generation: meta.generation,
                rows: HashMap::new(),
            };
        }
        keys.iter()
            .filter_map(|key| {
                let id = tid_to_id(key.block, key.offset);
                let row = tail
                    .rows
                    .entry((id, key.text_hash))
                    .or_insert_with(|| {
                        // SAFETY: the scan's heap relation.
                        let text = unsafe { row_text(heap, attnum, key) }?;
                        let mut lexemes: Vec<(Box<str>, u32)> = lexemes(config, &text)
                            .into_iter()
                            .map(|(l, tf)| (l.into_boxed_str(), tf))
                            .collect();
                        lexemes.sort_unstable();
                        let length = lexemes.iter().map(|(_, tf)| tf).sum();
                        Some(Rc::new(AnalysedRow { length, lexemes }))
                    })
                    .clone()?;
                let tfs = terms
                    .iter()
                    .map(|(term, _)| {
                        row.lexemes
                            .binary_search_by(|(l, _)| l.as_ref().cmp(term.as_str()))
                            .map_or(0, |i| row.lexemes[i].1)
                    })
                    .collect();
                Some(AppendedRow {
                    id,
                    text_hash: key.text_hash,
                    length: row.length,
                    tfs,
                })
            })
            .collect()
    })
}

unsafe fn search_more(scan: pg_sys::IndexScanDesc, state: &mut ScanState) {
    // SAFETY: the scan and its relations.
    let (index, heap) = unsafe { ((*scan).indexRelation, (*scan).heapRelation) };
    let (_, terms) = state.query.as_ref().expect("searching needs a query");
    let k = state.k;
    let last = k >= gucs::max_scan_tuples();
    let appended_state = &mut state.appended;
    let queue = &state.queue;
    let (scored, snapshot_done) = retry_while_changing(OrderedBy::Bm25, || {
        // SAFETY: an open index.
        let meta = unsafe { read_meta(index) };
        let settings = settings(&meta).clone();
        // SAFETY: as above.
        let bytes = unsafe { super::cache::snapshot(index, &meta) }?;
        let snapshot = Snapshot::parse(bytes.payload()).unwrap_or_else(|e| {
            raise(PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED, e.to_string(), None)
        });
        // SAFETY: as above.
        let dead = unsafe { crate::am::dead_positions(index, &meta, snapshot.documents()) }?;
        if appended_state
            .as_ref()
            .is_none_or(|(g, _)| *g != meta.generation)
        {
            // SAFETY: as above.
            let keys = unsafe { appended_keys(index, &meta) }?;
            // SAFETY: the scan's index and heap.
            let rows = unsafe { analyse_appended(index, heap, &meta, &keys, terms) };
            *appended_state = Some((meta.generation, rows));
        }
        let appended = &appended_state.as_ref().expect("set above").1;
        let base = snapshot.stats();
        let bm25 = Bm25 {
            k1: settings.k1,
            b: settings.b,
            stats: CorpusStats {
                documents: base.documents + appended.len() as u64,
                total_length: base.total_length
                    + appended.iter().map(|r| r.length as u64).sum::<u64>(),
            },
        };
        let weights: Vec<QueryTerm> = terms
            .iter()
            .enumerate()
            .map(|(i, (term, qtf))| {
                let df = snapshot.term(term).map_or(0, |t| t.df as u64)
                    + appended.iter().filter(|r| r.tfs[i] > 0).count() as u64;
                QueryTerm {
                    term: term.clone(),
                    weight: if df == 0 {
                        0.0
                    } else {
                        bm25.idf(df) * *qtf as f32
                    },
                }
            })
            .collect();
        let top = snapshot.search(&weights, k, &bm25, |hit| {
            dead.as_ref().is_none_or(|d| !d.contains(hit.doc as usize))
                && !queue.was_returned(hit.id as i64)
        });
        let snapshot_done = top.hits.len() < k;
        let cutoff = (!snapshot_done && !last)
            .then(|| top.hits.last().map(|h| h.score))
            .flatten();
        let mut scored: Vec<(i64, f32, u64)> = top
            .hits
            .iter()
            .map(|h| (h.id as i64, h.score, h.text_hash))
            .collect();
        for row in appended.iter().filter(|r| !queue.was_returned(r.id)) {
            let score: f32 = weights
                .iter()
                .zip(&row.tfs)
                .filter(|(_, &tf)| tf > 0)
                .map(|(w, &tf)| w.weight * bm25.tf_part(tf, row.length))
                .sum();
            if score > 0.0 && cutoff.is_none_or(|c| score >= c) {
                scored.push((row.id, score, row.text_hash));
            }
        }
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Some((scored, snapshot_done))
    });
    state
        .queue
        .extend(scored.into_iter().map(|(id, score, text_hash)| Candidate {
            id,
            distance: -f64::from(score),
            text_hash: Some(text_hash),
        }));
    state.exhausted = last || snapshot_done;
    if last && !snapshot_done {
        // Matching rows were left out at the cap: rows at distance 0 must not follow them.
        state.rest_pending = false;
    }
    state.k = k.saturating_mul(4).min(gucs::max_scan_tuples());
}

/// Queues every row not returned yet, at distance 0: the rows that hold no query term.
unsafe fn queue_the_rest(index: pg_sys::Relation, state: &mut ScanState) {
    let keys = retry_while_changing(OrderedBy::Bm25, || {
        // SAFETY: an open index.
        let meta = unsafe { read_meta(index) };
        let (mut keys, mut unused) = (Vec::new(), Vec::new());
        let from = semantic_index::layout::ChainPos {
            block: meta.records_head,
            slot: 0,
        };
        if from.block != NO_BLOCK {
            // SAFETY: as above.
            let read = unsafe {
                read_records(index, from, meta.generation, 0, |bytes| {
                    decode_records_into(bytes, 0, &mut keys, &mut unused);
                })
            };
            if !matches!(read, ChainRead::Done) {
                return None;
            }
        }
        Some(keys)
    });
    let candidates: Vec<Candidate> = keys
        .iter()
        .map(|key| (tid_to_id(key.block, key.offset), key.text_hash))
        .filter(|(id, _)| !state.queue.was_returned(*id))
        .map(|(id, text_hash)| Candidate {
            id,
            distance: 0.0,
            text_hash: Some(text_hash),
        })
        .collect();
    state.queue.extend(candidates);
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    _direction: pg_sys::ScanDirection::Type,
) -> bool {
    // SAFETY: the scan ambeginscan made.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        if state.query.is_none() {
            return false;
        }
        loop {
            if state.queue.emit_next(scan) {
                return true;
            }
            if state.exhausted {
                if !state.rest_pending {
                    return false;
                }
                state.rest_pending = false;
                queue_the_rest((*scan).indexRelation, state);
                continue;
            }
            pg_sys::check_for_interrupts!();
            search_more(scan, state);
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: the scan ambeginscan made.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        state.queue.end();
    }
}
