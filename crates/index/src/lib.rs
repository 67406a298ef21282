//! Postgres-free core of the `faiss` index access method.
//!
//! * [`VectorIndex`]: a FAISS index (any factory string: `Flat`, `HNSW32`,
//!   `IVF100,Flat`, `IVF256,PQ16`, ...) that maps arbitrary non-negative `i64`
//!   ids (heap TIDs packed with [`tid_to_id`]) to vectors, with training and
//!   parameterised search, written as a [`snapshot`].
//! * [`Snapshot`]: a search-only snapshot, private or mapped from the
//!   server's shared [`cache_file`].
//! * [`tid_to_id`] / [`id_to_tid`]: heap TID <-> FAISS id.
//! * [`best_per_id`]: merging per-chunk hits into per-row hits;
//!   [`metric`]: every rule of the metrics (FAISS scores, the SQL distance,
//!   the score semantic_search reports).
//! * [`records`]: the fixed-size record codec used on the index pages;
//!   [`chain`]: the page protocol (metapage, chains, rewrite) over a
//!   [`relation::Relation`], which the extension implements with PostgreSQL's
//!   buffers and WAL.
//!
//! Every FAISS call goes through the C API, which turns C++ exceptions into
//! error codes; inputs that FAISS would not check (or would check with an
//! `abort()`ing assertion) are validated here first, so misuse is an
//! [`IndexError`], never a crash.
//!
//! # Threads
//! FAISS parallelises with OpenMP and its BLAS (OpenBLAS here) with its own
//! thread pool. Inside a PostgreSQL backend both should be single-threaded,
//! so this crate sets the OpenMP thread count of every thread that uses a
//! [`VectorIndex`] to 1 (unless `OMP_NUM_THREADS` is set in the environment)
//! and OpenBLAS's thread count to 1 (unless `OPENBLAS_NUM_THREADS` is set).
//! [`set_threads`] overrides that.

pub mod cache_file;
pub mod chain;
mod dead;
mod error;
mod index;
mod interrupt;
mod io;
pub mod layout;
pub mod metric;
pub mod options;
pub mod packed_graph;
pub mod records;
pub mod relation;
pub mod snapshot;
pub mod tail;
mod threads;
pub mod tiers;

pub use dead::DeadPositions;
pub use error::IndexError;
pub use index::{VectorIndex, DEFAULT_EF_SEARCH};
pub use interrupt::set_interrupt_check;
pub use metric::{IndexMetric, Metric};
pub use records::{decode_records, encode_record, record_size};
pub use snapshot::{generation_key, key_generation, seal, CacheKey, Sealed, Snapshot, SnapshotHit};
pub use threads::set_threads;

use std::collections::HashMap;

/// Search-time knobs. `0` means the FAISS default (`efSearch` =
/// [`DEFAULT_EF_SEARCH`] (but at least `k`), `nprobe` = the index's own,
/// 1 unless the factory string said otherwise), also after an earlier search
/// used other values. A knob that does not apply to the index type (e.g.
/// `nprobe` on HNSW) is ignored. Settings are never persisted by
/// a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SearchParams {
    /// HNSW `efSearch` (also the HNSW quantizer of `IVFn_HNSWm`). The value
    /// used is at least `k`: FAISS stops exploring after `efSearch`
    /// candidates, so a smaller value would silently cost recall.
    pub ef_search: usize,
    /// IVF `nprobe`: how many inverted lists are visited; clamped to the
    /// number of lists.
    pub nprobe: usize,
}

/// Packs a heap TID into a FAISS id: `(block << 16) | offset`.
///
/// Every `u32` block gives an id in `0 ..= 2^48 - 1`, so ids are never
/// negative (FAISS uses `-1` for "no result"). The packing itself would fit
/// blocks up to `2^47 - 1`.
pub fn tid_to_id(block: u32, offset: u16) -> i64 {
    ((block as i64) << 16) | offset as i64
}

/// Unpacks an id made by [`tid_to_id`]. Ids outside `0 ..= 2^48 - 1` (never
/// produced by `tid_to_id`) lose their high bits.
pub fn id_to_tid(id: i64) -> (u32, u16) {
    ((id >> 16) as u32, (id & 0xFFFF) as u16)
}

/// Merges per-chunk hits into per-row hits: keeps each id's best score (max
/// for `InnerProduct`, min for `L2`), orders best first (ties by ascending
/// id, NaN scores last) and truncates to `k`.
pub fn best_per_id(
    hits: impl IntoIterator<Item = (i64, f32)>,
    metric: Metric,
    k: usize,
) -> Vec<(i64, f32)> {
    let mut best: HashMap<i64, f32> = HashMap::new();
    for (id, score) in hits {
        best.entry(id)
            .and_modify(|s| {
                if metric.better(score, *s) || s.is_nan() {
                    *s = score;
                }
            })
            .or_insert(score);
    }
    let mut out: Vec<(i64, f32)> = best.into_iter().collect();
    out.sort_by(|a, b| metric.cmp_best_first(a.1, b.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_better() {
        assert!(Metric::InnerProduct.better(0.9, 0.1));
        assert!(Metric::L2.better(0.1, 0.9));
        assert!(!Metric::L2.better(0.5, 0.5));
    }
}
