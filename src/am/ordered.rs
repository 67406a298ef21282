//! What the ordered scans of both access methods (faiss `<=>`, bm25 `<@>`) share:
//! - the queue of candidates handed to the executor one row at a time, and the rows already
//!   returned, which a deeper search must not return again;
//! - the row returned last: PostgreSQL evaluates the ORDER BY expression again on every row an
//!   index scan returns (`SELECT doc <=> 'q' ...`), and the operator answers from here
//!   instead of embedding or analysing the row's text;
//! - the retry of a read that raced a rewrite of the index.
//!
//! A queue lives in its scan's memory context and drops with it, also when the query fails;
//! its claim on the returned row ends then.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_index::id_to_tid;

use crate::errors::raise;

/// Which operator an ordered scan answers, so that one never takes the other's distance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OrderedBy {
    /// `<=>` of a faiss index.
    Vector,
    /// `<@>` of a bm25 index.
    Bm25,
}

impl OrderedBy {
    fn access_method(self) -> &'static str {
        match self {
            OrderedBy::Vector => "faiss",
            OrderedBy::Bm25 => "bm25",
        }
    }
}

/// What a rescan of an ordered scan asks for.
pub enum Rescan {
    /// Every row, in no order: `ORDER BY col <op> NULL` where the NULL is not a constant (a
    /// parameter, a subquery): every row is at a NULL distance, and an ORDER BY never changes
    /// which rows a query returns.
    EveryRow,
    /// The ORDER BY key's argument and operator strategy.
    By {
        argument: pg_sys::Datum,
        strategy: pg_sys::StrategyNumber,
    },
}

/// Copies the executor's new ORDER BY keys (amrescan's) into `scan`, and says what they ask.
///
/// # Safety
/// `scan` is an ordered index scan made by [`super::scan::new_ordered_scan`], and `orderbys`
/// holds `norderbys` keys or is null.
pub unsafe fn rescan(
    scan: pg_sys::IndexScanDesc,
    orderbys: pg_sys::ScanKey,
    norderbys: i32,
) -> Rescan {
    // SAFETY: the caller's contract.
    unsafe {
        if !orderbys.is_null() && norderbys > 0 {
            std::ptr::copy(orderbys, (*scan).orderByData, norderbys as usize);
        }
        if (*scan).numberOfOrderBys < 1 {
            // The cost estimate (cost.rs) keeps such a plan out: it would miss NULL rows.
            crate::errors::raise(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "faiss and bm25 indexes are scanned in the order of ORDER BY col <op> query only",
                None,
            );
        }
        let key = &*(*scan).orderByData;
        if key.sk_flags & pg_sys::SK_ISNULL as i32 != 0 {
            return Rescan::EveryRow;
        }
        Rescan::By {
            argument: key.sk_argument,
            strategy: key.sk_strategy,
        }
    }
}

/// A row a search found, not yet handed to the executor.
pub struct Candidate {
    /// The row's TID as [`semantic_index::tid_to_id`] packs it.
    pub id: i64,
    pub distance: f64,
    /// Text columns: the hash of the row's text.
    pub text_hash: Option<u64>,
}

/// The query of a scan of a text column: a text, or a vector given for it (`text <=> real[]`).
#[derive(Clone, Debug, PartialEq)]
pub enum Query {
    Text(String),
    Vector(Vec<f32>),
}

/// A [`Query`] as an operator receives it.
#[derive(Clone, Copy, Debug)]
pub enum QueryRef<'a> {
    Text(&'a str),
    Vector(&'a [f32]),
}

impl Query {
    fn is(&self, other: QueryRef) -> bool {
        match (self, other) {
            (Query::Text(a), QueryRef::Text(b)) => a == b,
            // Bit for bit: the scan's own vector, not a close one.
            (Query::Vector(a), QueryRef::Vector(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => false,
        }
    }
}

struct ReturnedRow {
    scan: u64,
    by: OrderedBy,
    query: Query,
    text_hash: u64,
    distance: f64,
}

thread_local! {
    static RETURNED: RefCell<Option<ReturnedRow>> = const { RefCell::new(None) };
    static NEXT_SCAN_ID: Cell<u64> = const { Cell::new(0) };
}

/// The distance the last row returned by a scan of `by` had, when `text_hash` and `query` are
/// that row's text and the scan's query.
pub fn returned_row_distance(by: OrderedBy, text_hash: u64, query: QueryRef) -> Option<f64> {
    RETURNED.with(|r| {
        r.borrow()
            .as_ref()
            .filter(|r| r.by == by && r.text_hash == text_hash && r.query.is(query))
            .map(|r| r.distance)
    })
}

/// One scan's candidates in the order they are to come out.
pub struct RowQueue {
    /// Tells this scan's returned row from another scan's.
    scan: u64,
    by: OrderedBy,
    /// Scans of text columns: the query, for [`returned_row_distance`].
    query: Option<Query>,
    pending: VecDeque<Candidate>,
    returned: HashSet<i64>,
    /// Whether emitted rows go to `returned` (see [`RowQueue::stop_recording`]).
    recording: bool,
}

impl RowQueue {
    pub fn new(by: OrderedBy) -> Self {
        let scan = NEXT_SCAN_ID.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        RowQueue {
            scan,
            by,
            query: None,
            pending: VecDeque::new(),
            returned: HashSet::new(),
            recording: true,
        }
    }

    /// Starts over for a new query (amrescan).
    pub fn restart(&mut self, query: Option<Query>) {
        self.pending.clear();
        self.returned.clear();
        self.recording = true;
        self.query = query;
        self.release_returned();
    }

    pub fn was_returned(&self, id: i64) -> bool {
        self.returned.contains(&id)
    }

    /// Queues candidates behind the pending ones; those already returned are skipped when
    /// their turn comes.
    pub fn extend(&mut self, candidates: impl IntoIterator<Item = Candidate>) {
        self.pending.extend(candidates);
    }

    /// Sets the next row not yet returned into `scan` (its TID and its ORDER BY value) and
    /// records it as the returned row; false when nothing is pending.
    ///
    /// # Safety
    /// `scan` is an ordered index scan made by [`super::scan::new_ordered_scan`].
    pub unsafe fn emit_next(&mut self, scan: pg_sys::IndexScanDesc) -> bool {
        while let Some(candidate) = self.pending.pop_front() {
            let again = if self.recording {
                !self.returned.insert(candidate.id)
            } else {
                self.returned.contains(&candidate.id)
            };
            if again {
                continue;
            }
            let (block, offset) = id_to_tid(candidate.id);
            // SAFETY: the caller's scan, whose order-by arrays hold at least one value.
            unsafe {
                let tid = &mut (*scan).xs_heaptid;
                tid.ip_blkid.bi_hi = (block >> 16) as u16;
                tid.ip_blkid.bi_lo = (block & 0xffff) as u16;
                tid.ip_posid = offset;
                (*scan).xs_recheck = false;
                (*scan).xs_recheckorderby = false;
                *(*scan).xs_orderbyvals = candidate.distance.into_datum().expect("a float8");
                *(*scan).xs_orderbynulls = false;
            }
            let returned = match (&self.query, candidate.text_hash) {
                (Some(query), Some(text_hash)) => Some(ReturnedRow {
                    scan: self.scan,
                    by: self.by,
                    query: query.clone(),
                    text_hash,
                    distance: candidate.distance,
                }),
                _ => None,
            };
            RETURNED.with(|r| *r.borrow_mut() = returned);
            return true;
        }
        false
    }

    /// From now on emitted rows are still checked against those returned so far but no longer
    /// recorded: the caller queues rows that cannot come twice (so that a scan of every row
    /// does not keep every row's id).
    pub fn stop_recording(&mut self) {
        self.recording = false;
    }

    /// Ends the scan (amendscan): frees the queue's sets now rather than with the context.
    pub fn end(&mut self) {
        self.pending = VecDeque::new();
        self.returned = HashSet::new();
        self.release_returned();
    }

    /// Forgets the row this scan returned last, if it is still the returned row: it must not
    /// answer an operator after the scan.
    fn release_returned(&self) {
        RETURNED.with(|r| {
            let mut r = r.borrow_mut();
            if r.as_ref().is_some_and(|row| row.scan == self.scan) {
                *r = None;
            }
        });
    }
}

impl Drop for RowQueue {
    /// Runs when the scan's memory context goes: at the end of the query, or at its failure.
    fn drop(&mut self) {
        self.release_returned();
    }
}

/// Runs `read` until it returns Some: None means the index was rewritten while being read (a
/// VACUUM or fold published a new generation), and the read starts again from the metapage.
/// After 10 such races the query fails with a retryable error.
pub fn retry_while_changing<T>(by: OrderedBy, mut read: impl FnMut() -> Option<T>) -> T {
    for _ in 0..10 {
        if let Some(value) = read() {
            return value;
        }
    }
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!(
            "{} index kept changing while being read",
            by.access_method()
        ),
        Some("Retry the query."),
    )
}
