//! Ordered scans: `ORDER BY col <@> 'query' LIMIT k`, best BM25 score first. Each search asks
//! the segments for their top candidates (MaxScore over their posting lists, see
//! `semantic_lexical::segments`) and scores the rows appended since the last fold exactly,
//! from the terms entries their inserts stored (read by this backend once, into a small
//! inverted index it extends as rows are appended, until the next fold); corpus statistics and document frequencies cover both. When the executor keeps
//! asking (filters, dead rows) the search is repeated deeper, skipping rows already returned,
//! up to `semantic.max_scan_tuples` candidates. Once every row that holds a query term has
//! come out, the other rows follow at distance 0 (an ORDER BY returns every row), unless the
//! search stopped at `semantic.max_scan_tuples`.

use std::rc::Rc;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use pgrx::PgSqlErrorCode;
use semantic_index::layout::{ChainPos, Meta, NO_BLOCK};
use semantic_index::records::decode_records_into;
use semantic_index::{tid_to_id, DeadPositions};
use semantic_lexical::tail::decode_entries;
use semantic_lexical::{QueryTerm, Tail};

use super::analyze::lexemes;
use super::cache::SealedSegments;
use super::heap::{appended_lexemes, Entries};
use super::settings;
use super::statistics::CorpusFigures;
use super::storage::{read_meta, read_records_from, read_terms};
use crate::am::appended::AppendedCaches;
use crate::am::ordered::{self, retry_while_changing, Candidate, OrderedBy, Rescan, RowQueue};
use crate::am::vectors::datum_text;
use crate::errors::raise;
use crate::gucs;

struct ScanState {
    queue: RowQueue,
    /// The query text and its lexemes with their frequencies.
    query: Option<(String, Vec<(String, u32)>)>,
    k: usize,
    exhausted: bool,
    /// Whether the rows without any query term are still to come (after the matching ones).
    rest_pending: bool,
    /// Those rows, while they are being returned.
    rest: Option<Rest>,
    /// The corpus to score against when `semantic.bm25_statistics` names one (a Citus table's,
    /// summed over its shards); else the index's own.
    corpus: Option<CorpusFigures>,
}

/// The distance (minus the BM25 score) of the row a bm25 scan just returned, when `text_hash`
/// and `query` are that row's text and the scan's query.
pub fn returned_row_distance(text_hash: u64, query: &str) -> Option<f64> {
    ordered::returned_row_distance(OrderedBy::Bm25, text_hash, ordered::QueryRef::Text(query))
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
            k: 0,
            exhausted: true,
            rest_pending: false,
            rest: None,
            corpus: None,
        };
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
    // SAFETY: the scan ambeginscan made.
    unsafe {
        let state = &mut *((*scan).opaque as *mut ScanState);
        state.queue.restart(None);
        state.query = None;
        state.exhausted = true;
        state.rest_pending = false;
        state.rest = None;
        let argument = match ordered::rescan(scan, orderbys, norderbys) {
            Rescan::EveryRow => {
                // Every row holds no term of an empty query.
                state.query = Some((String::new(), Vec::new()));
                state.rest_pending = true;
                return;
            }
            Rescan::By { argument, .. } => argument,
        };
        let meta = read_meta((*scan).indexRelation);
        let text = datum_text(argument);
        let terms = lexemes(pg_sys::Oid::from(settings(&meta).config_oid), &text);
        // A query of stop words only (or no words) matches nothing: every row is at distance 0.
        state.exhausted = terms.is_empty();
        state.rest_pending = true;
        state
            .queue
            .restart(Some(ordered::Query::Text(text.clone())));
        state.query = Some((text, terms));
        state.corpus = CorpusFigures::from_setting();
        state.k = gucs::scan_candidates().min(gucs::max_scan_tuples());
    }
}

/// What this backend has read of one index's appended rows (see [`crate::am::appended`]).
struct TailCache {
    /// Where the next read of the terms chain goes on (None: at its start).
    terms_at: Option<ChainPos>,
    /// Entries read before their records (appended meanwhile).
    entries: Entries,
    tail: Tail,
}

impl TailCache {
    fn new() -> Self {
        TailCache {
            terms_at: None,
            entries: Entries::new(),
            tail: Tail::default(),
        }
    }

    /// Reads the rows appended from `records_from` on into the tail: their records first, then
    /// the terms (each written before its record, so every record read has its entry in what
    /// follows). Returns where the records chain ended; None if the index was rewritten under
    /// the reader.
    unsafe fn extend(
        &mut self,
        index: pg_sys::Relation,
        heap: pg_sys::Relation,
        meta: &Meta,
        records_from: ChainPos,
    ) -> Option<ChainPos> {
        let terms_from = self.terms_at.unwrap_or(ChainPos {
            block: meta.terms_head,
            slot: 0,
        });
        let (mut keys, mut unused) = (Vec::new(), Vec::new());
        let mut bytes = Vec::new();
        // SAFETY: the scan's open index.
        let (records_end, terms_end) = unsafe {
            let records_end = read_records_from(index, records_from, meta.generation, 0, |b| {
                decode_records_into(b, 0, &mut keys, &mut unused);
            })?;
            let terms_end = read_terms(index, terms_from, None, meta.generation, |b| {
                bytes.extend_from_slice(b)
            })?;
            (records_end, terms_end)
        };
        let mut rows = Vec::new();
        let corrupted = |e: &dyn std::fmt::Display| -> ! {
            raise(
                PgSqlErrorCode::ERRCODE_INDEX_CORRUPTED,
                format!("bm25 index: {e}"),
                Some("REINDEX the index."),
            )
        };
        let took = decode_entries(&bytes, &mut rows).unwrap_or_else(|e| corrupted(&e));
        // Appends are whole (see `chain::append_terms`): the chain never ends inside an entry.
        if took != bytes.len() {
            corrupted(&"the terms chain ends inside an entry");
        }
        self.entries
            .extend(rows.into_iter().map(|r| ((r.id, r.text_hash), r.lexemes)));
        self.terms_at = (terms_end.block != NO_BLOCK).then_some(terms_end);
        let config = pg_sys::Oid::from(settings(meta).config_oid);
        for key in &keys {
            // SAFETY: the scan's index and heap.
            let lexemes = unsafe { appended_lexemes(&mut self.entries, key, index, heap, config) };
            if let Some(lexemes) = lexemes {
                self.tail.add(
                    tid_to_id(key.block, key.offset) as u64,
                    key.text_hash,
                    lexemes.iter().map(|(l, tf)| (l.as_str(), *tf)),
                );
            }
        }
        Some(records_end)
    }
}

thread_local! {
    static TAILS: AppendedCaches<TailCache> = AppendedCaches::default();
}

/// Calls `f` with the rows appended to `index` up to now; None if the index was rewritten
/// under the reader.
pub(super) unsafe fn with_tail<T>(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    meta: &Meta,
    f: impl FnOnce(&Tail) -> T,
) -> Option<T> {
    TAILS.with(|tails| {
        // SAFETY: the scan's open index and heap, and the index's metapage.
        unsafe {
            tails.with(
                index,
                meta,
                TailCache::new,
                |cache, from| cache.extend(index, heap, meta, from),
                |cache| f(&cache.tail),
            )
        }
    })
}

unsafe fn search_more(scan: pg_sys::IndexScanDesc, state: &mut ScanState) {
    // SAFETY: the scan and its relations.
    let (index, heap) = unsafe { ((*scan).indexRelation, (*scan).heapRelation) };
    let (_, terms) = state.query.as_ref().expect("searching needs a query");
    let k = state.k;
    let last = k >= gucs::max_scan_tuples();
    let queue = &state.queue;
    let corpus = state.corpus.as_ref();
    let (scored, snapshot_done) = retry_while_changing(OrderedBy::Bm25, || {
        // SAFETY: an open index.
        let meta = unsafe { read_meta(index) };
        let settings = settings(&meta).clone();
        // SAFETY: as above.
        let sealed = unsafe { super::cache::segments(index, &meta) }?;
        let segments = sealed.view();
        // SAFETY: as above.
        let dead = unsafe { crate::am::dead_positions(index, &meta, segments.documents()) }?;
        // SAFETY: the scan's index and heap.
        unsafe {
            with_tail(index, heap, &meta, |tail| {
                let own;
                let corpus = match corpus {
                    Some(shared) => shared,
                    None => {
                        own = CorpusFigures::of(&segments, tail, terms);
                        &own
                    }
                };
                let bm25 = corpus.bm25(settings.k1, settings.b);
                let weights: Vec<QueryTerm> = terms
                    .iter()
                    .map(|(term, qtf)| {
                        let df = corpus.df(term);
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
                let top = segments.search(&weights, k, &bm25, |hit| {
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
                scored.extend(
                    tail.search(&weights, &bm25, |id| !queue.was_returned(id as i64))
                        .into_iter()
                        .filter(|h| h.score > 0.0 && cutoff.is_none_or(|c| h.score >= c))
                        .map(|h| (h.id as i64, h.score, h.text_hash)),
                );
                scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                (scored, snapshot_done)
            })
        }
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

/// The rows that hold no query term, which follow the matching ones at distance 0: the
/// segments' documents outside the query terms' posting lists (and not marked dead), then the
/// appended rows likewise, queued a chunk at a time from the generation the stream began with
/// (its segments stay open meanwhile: a fold does not disturb the stream). The scan keeps a
/// bit per document, not the ids of the rows it returns.
struct Rest {
    segments: Rc<SealedSegments>,
    /// Documents holding a query term (see `Segments::holding_any`).
    matching: Vec<u64>,
    dead: Option<Rc<DeadPositions>>,
    next_doc: usize,
    /// Appended rows (id, text hash) holding no query term.
    appended: std::vec::IntoIter<(u64, u64)>,
}

/// Rows [`Rest`] queues at a time.
const REST_CHUNK: usize = 1024;

impl Rest {
    unsafe fn start(scan: pg_sys::IndexScanDesc, terms: &[(String, u32)]) -> Rest {
        // SAFETY: the scan and its relations.
        let (index, heap) = unsafe { ((*scan).indexRelation, (*scan).heapRelation) };
        let terms: Vec<&str> = terms.iter().map(|(t, _)| t.as_str()).collect();
        retry_while_changing(OrderedBy::Bm25, || {
            // SAFETY: an open index.
            let meta = unsafe { read_meta(index) };
            // SAFETY: as above.
            let sealed = unsafe { super::cache::segments(index, &meta) }?;
            let (matching, documents) = {
                let segments = sealed.view();
                (segments.holding_any(&terms), segments.documents())
            };
            // SAFETY: as above.
            let dead = unsafe { crate::am::dead_positions(index, &meta, documents) }?;
            // SAFETY: the scan's index and heap.
            let appended = unsafe { with_tail(index, heap, &meta, |t| t.rows_without(&terms)) }?;
            Some(Rest {
                segments: sealed,
                matching,
                dead,
                next_doc: 0,
                appended: appended.into_iter(),
            })
        })
    }

    /// Queues the next rows; false when none are left.
    fn queue_next(&mut self, queue: &mut RowQueue) -> bool {
        let segments = self.segments.view();
        let mut chunk = Vec::with_capacity(REST_CHUNK);
        while chunk.len() < REST_CHUNK && self.next_doc < segments.documents() {
            let doc = self.next_doc;
            self.next_doc += 1;
            let matching = self.matching[doc / 64] & (1 << (doc % 64)) != 0;
            if !matching && self.dead.as_ref().is_none_or(|d| !d.contains(doc)) {
                chunk.push((segments.id(doc as u32), segments.text_hash(doc as u32)));
            }
        }
        chunk.extend(self.appended.by_ref().take(REST_CHUNK - chunk.len()));
        let any = !chunk.is_empty();
        queue.extend(chunk.into_iter().map(|(id, text_hash)| Candidate {
            id: id as i64,
            distance: 0.0,
            text_hash: Some(text_hash),
        }));
        any
    }
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
                if let Some(rest) = &mut state.rest {
                    if rest.queue_next(&mut state.queue) {
                        continue;
                    }
                    return false;
                }
                if !state.rest_pending {
                    return false;
                }
                state.rest_pending = false;
                let (_, terms) = state.query.as_ref().expect("checked above");
                state.rest = Some(Rest::start(scan, terms));
                state.queue.stop_recording();
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
