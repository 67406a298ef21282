use crate::io;
use crate::threads::ensure_defaults;
use crate::{IndexError, Metric, SearchParams};
use faiss::index::autotune::ParameterSpace;
use faiss::index::{FromInnerPtr, IndexImpl, UpcastIndex};
use faiss::selector::IdSelector;
use faiss::{IdMap, Idx, Index};
use faiss_sys::{FaissIndex, FaissIndexIVF};
use std::cell::Cell;

/// FAISS's default HNSW `efSearch` (`faiss::HNSW::efSearch = 16`).
pub const DEFAULT_EF_SEARCH: usize = 16;

/// Largest accepted vector dimension.
const MAX_DIM: usize = 65_536;
/// Longest accepted factory string (FAISS parses it with `std::regex`,
/// whose recursive matcher can overflow the stack on very long input).
const MAX_FACTORY_LEN: usize = 200;
/// Largest number accepted anywhere in a factory string.
const MAX_FACTORY_NUMBER: u64 = 1 << 24;
/// Accepted HNSW `M` range (M < 2 makes FAISS's level generator loop or
/// divide by zero; huge M explodes memory).
const HNSW_M_RANGE: std::ops::RangeInclusive<u64> = 2..=512;

/// A FAISS index mapping non-negative `i64` ids to `dim`-float vectors.
///
/// Layout: IVF indexes (`IVF...`, possibly behind a pre-transform such as
/// `OPQ16_64,IVF256,PQ16`) store the ids natively; every other type is
/// wrapped in a FAISS `IndexIDMap`. (An `IndexIDMap` over an IVF would be
/// wrong: IVF's `remove_ids` does not renumber the remaining entries while
/// the id map compacts, so ids would get mixed up — and can be read out of
/// bounds — after the first removal.)
///
/// `VectorIndex` is `Send` but not `Sync`: search applies `efSearch` /
/// `nprobe` to the FAISS object before searching, so one index must not be
/// searched from two threads at once.
pub struct VectorIndex {
    index: IndexImpl,
    dim: usize,
    metric: Metric,
    /// Number of IVF lists, when an IVF index is reachable.
    nlist: Option<usize>,
    /// Whether `efSearch` / `nprobe` can be set on this index.
    has_ef: bool,
    has_nprobe: bool,
    /// The `nprobe` the index had when built or loaded ("FAISS default").
    base_nprobe: usize,
    /// Values currently set on the FAISS object (interior mutability: they
    /// change during `&self` searches; also makes the type `!Sync`).
    cur_ef: Cell<usize>,
    cur_nprobe: Cell<usize>,
    can_remove: bool,
    /// Short description for messages (the factory string when known).
    kind: String,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("kind", &self.kind)
            .field("dim", &self.dim)
            .field("metric", &self.metric)
            .field("len", &self.len())
            .field("nlist", &self.nlist)
            .field("needs_training", &self.needs_training())
            .field("supports_remove", &self.can_remove)
            .finish()
    }
}

/// Follows `IndexIDMap` / `IndexIDMap2` / `IndexPreTransform` wrappers down
/// to an `IndexIVF`, if there is one.
fn find_ivf(mut p: *mut FaissIndex) -> Option<*mut FaissIndexIVF> {
    // SAFETY: all casts are dynamic_casts on a live index; the getters return
    // borrowed sub-index pointers.
    unsafe {
        for _ in 0..8 {
            if p.is_null() {
                return None;
            }
            let ivf = faiss_sys::faiss_IndexIVF_cast(p);
            if !ivf.is_null() {
                return Some(ivf);
            }
            let pre = faiss_sys::faiss_IndexPreTransform_cast(p);
            if !pre.is_null() {
                p = faiss_sys::faiss_IndexPreTransform_index(pre);
                continue;
            }
            let idmap = faiss_sys::faiss_IndexIDMap_cast(p);
            if !idmap.is_null() {
                p = faiss_sys::faiss_IndexIDMap_sub_index(idmap);
                continue;
            }
            let idmap2 = faiss_sys::faiss_IndexIDMap2_cast(p);
            if !idmap2.is_null() {
                p = faiss_sys::faiss_IndexIDMap2_sub_index(idmap2);
                continue;
            }
            return None;
        }
        None
    }
}

/// Cheap consistency checks on a freshly read index, before anything
/// searches or probes it. FAISS's reader checks the framing of what it reads
/// but not its consistency, and some inconsistencies end in an `abort()`
/// (`FAISS_ASSERT` in `IndexIDMap::remove_ids`), a `std::terminate` (an
/// exception inside an OpenMP region) or a segfault. The CRC-32 of the
/// `io` framing is the real protection against damaged bytes; this only
/// rejects the structurally impossible.
fn check_loaded(p: *mut FaissIndex) -> Result<(), IndexError> {
    let corrupt = |m: String| Err(IndexError::Corrupt(m));
    // SAFETY: getters and dynamic_casts on a live index; the id map slice is
    // read before anything modifies the index.
    unsafe {
        let d = faiss_sys::faiss_Index_d(p);
        let ntotal = faiss_sys::faiss_Index_ntotal(p);
        let metric = faiss_sys::faiss_Index_metric_type(p);
        if ntotal < 0 {
            return corrupt(format!("negative vector count {ntotal}"));
        }
        let idmap = faiss_sys::faiss_IndexIDMap_cast(p);
        if !idmap.is_null() {
            let sub = faiss_sys::faiss_IndexIDMap_sub_index(idmap);
            if sub.is_null() {
                return corrupt("id map without an index".into());
            }
            let mut ids: *mut i64 = std::ptr::null_mut();
            let mut n: usize = 0;
            faiss_sys::faiss_IndexIDMap_id_map(idmap, &mut ids, &mut n);
            if n as i64 != ntotal
                || faiss_sys::faiss_Index_ntotal(sub) != ntotal
                || faiss_sys::faiss_Index_d(sub) != d
                || faiss_sys::faiss_Index_metric_type(sub) != metric
            {
                return corrupt("id map and index disagree".into());
            }
            if n > 0 && std::slice::from_raw_parts(ids, n).iter().any(|&id| id < 0) {
                return corrupt("negative id in the id map".into());
            }
        } else if find_ivf(p).is_none() {
            return corrupt("not an index written by semantic-index (no id map)".into());
        }
        if let Some(ivf) = find_ivf(p) {
            let ivf_index = ivf as *mut FaissIndex;
            let nlist = faiss_sys::faiss_IndexIVF_nlist(ivf);
            let q = faiss_sys::faiss_IndexIVF_quantizer(ivf);
            if nlist == 0 || q.is_null() {
                return corrupt("IVF index without lists or quantizer".into());
            }
            if faiss_sys::faiss_Index_d(q) != faiss_sys::faiss_Index_d(ivf_index) {
                return corrupt("IVF quantizer dimension mismatch".into());
            }
            if faiss_sys::faiss_Index_is_trained(ivf_index) != 0 {
                if faiss_sys::faiss_Index_ntotal(q) != nlist as i64 {
                    return corrupt("IVF quantizer does not hold one centroid per list".into());
                }
                let mut total: u64 = 0;
                for l in 0..nlist {
                    total += faiss_sys::faiss_IndexIVF_get_list_size(ivf, l) as u64;
                }
                if total != faiss_sys::faiss_Index_ntotal(ivf_index) as u64 {
                    return corrupt("IVF list sizes do not add up".into());
                }
            }
        }
    }
    Ok(())
}

/// Checks a factory string before FAISS parses it: FAISS accepts some
/// strings it cannot actually run (`IVF0,Flat`, `HNSW0`, `PQ0`...), which
/// end in a division by zero, an endless loop or an `abort()` later.
fn validate_factory(dim: usize, factory: &str) -> Result<(), IndexError> {
    let bad = |reason: String| IndexError::InvalidFactory {
        factory: factory.to_string(),
        reason,
    };
    if dim == 0 || dim > MAX_DIM {
        return Err(IndexError::invalid(format!(
            "vector dimension must be between 1 and {MAX_DIM}, got {dim}"
        )));
    }
    if factory.is_empty() {
        return Err(bad(
            "empty; use e.g. \"Flat\", \"HNSW32\", \"IVF100,Flat\" or \"IVF256,PQ16\"".into(),
        ));
    }
    if factory.len() > MAX_FACTORY_LEN {
        return Err(bad(format!("longer than {MAX_FACTORY_LEN} characters")));
    }
    if let Some(c) = factory.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(bad(format!("unexpected character {c:?}")));
    }
    if factory.contains("IDMap") {
        return Err(bad("leave IDMap out: ids are mapped automatically".into()));
    }
    let bytes = factory.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let digits = &factory[start..i];
        let value: u64 = digits.parse().unwrap_or(u64::MAX);
        if value == 0 {
            return Err(bad(format!(
                "size parameter 0 at position {start} is not allowed"
            )));
        }
        if value > MAX_FACTORY_NUMBER {
            return Err(bad(format!(
                "parameter {digits} is too large (at most {MAX_FACTORY_NUMBER})"
            )));
        }
        if factory[..start].ends_with("HNSW") && !HNSW_M_RANGE.contains(&value) {
            return Err(bad(format!(
                "HNSW M must be between {} and {}, got {value}",
                HNSW_M_RANGE.start(),
                HNSW_M_RANGE.end()
            )));
        }
    }
    Ok(())
}

fn check_finite(what: &str, v: &[f32]) -> Result<(), IndexError> {
    if let Some(pos) = v.iter().position(|x| !x.is_finite()) {
        return Err(IndexError::invalid(format!(
            "{what} contains a non-finite value ({}) at position {pos}",
            v[pos]
        )));
    }
    Ok(())
}

impl VectorIndex {
    /// Builds an empty index from a FAISS factory string (`"Flat"`,
    /// `"HNSW32"`, `"IVF100,Flat"`, `"IVF256,PQ16"`, ...). `IDMap` must not be
    /// part of it (ids are mapped automatically). Bad strings are an
    /// [`IndexError::InvalidFactory`].
    ///
    /// Note: for 8-bit PQ (`PQ16`, `IVF256,PQ16`, ...) FAISS's factory turns
    /// on *polysemous training*, which costs several seconds of CPU per
    /// sub-quantizer during [`train`](Self::train) and only helps polysemous
    /// (Hamming-filtered) search, which this crate never enables. Append
    /// `np` (`IVF256,PQ16np`) to skip it.
    pub fn new(dim: usize, factory: &str, metric: Metric) -> Result<Self, IndexError> {
        ensure_defaults();
        validate_factory(dim, factory)?;
        let raw = faiss::index_factory(dim as u32, factory, metric.to_faiss()).map_err(|e| {
            IndexError::InvalidFactory {
                factory: factory.to_string(),
                reason: e.to_string(),
            }
        })?;
        let index = if find_ivf(raw.inner_ptr()).is_some() {
            raw
        } else {
            IdMap::new(raw)
                .map_err(|e| IndexError::faiss("IndexIDMap", e))?
                .upcast()
        };
        Self::wrap(index, factory.to_string())
    }

    /// Common set-up for new and loaded indexes.
    fn wrap(index: IndexImpl, kind: String) -> Result<Self, IndexError> {
        let p = index.inner_ptr();
        // SAFETY: getters on a live index.
        let (d, metric_code) = unsafe {
            (
                faiss_sys::faiss_Index_d(p),
                faiss_sys::faiss_Index_metric_type(p),
            )
        };
        let metric = Metric::from_faiss_code(metric_code).ok_or_else(|| {
            IndexError::Corrupt(format!("unsupported metric type code {metric_code}"))
        })?;
        if d <= 0 || d as usize > MAX_DIM {
            return Err(IndexError::Corrupt(format!("invalid dimension {d}")));
        }
        let ivf = find_ivf(p);
        // SAFETY: getters on a live IVF index.
        let (nlist, base_nprobe) = match ivf {
            Some(ivf) => unsafe {
                (
                    Some(faiss_sys::faiss_IndexIVF_nlist(ivf)),
                    faiss_sys::faiss_IndexIVF_nprobe(ivf),
                )
            },
            None => (None, 1),
        };
        if nlist == Some(0) {
            return Err(IndexError::InvalidFactory {
                factory: kind,
                reason: "an IVF index needs at least one list".into(),
            });
        }
        let ps = ParameterSpace::new().map_err(|e| IndexError::faiss("ParameterSpace", e))?;
        // Probe which knobs exist by setting them to their current values:
        // efSearch of an index made by the factory (or loaded from our bytes,
        // which are always written with the default) is DEFAULT_EF_SEARCH.
        let has_ef = ps
            .set_index_parameter(&index, "efSearch", DEFAULT_EF_SEARCH as f64)
            .is_ok();
        let has_nprobe = nlist.is_some()
            && ps
                .set_index_parameter(&index, "nprobe", base_nprobe as f64)
                .is_ok();
        // Probe removal with an empty id range: index types without
        // remove_ids throw before anything is touched.
        let can_remove = {
            let sel = IdSelector::range(Idx::new(0), Idx::new(0))
                .map_err(|e| IndexError::faiss("IDSelectorRange", e))?;
            // SAFETY: live index and selector.
            unsafe {
                let mut n: usize = 0;
                faiss_sys::faiss_Index_remove_ids(p, sel.inner_ptr(), &mut n) == 0
            }
        };
        Ok(VectorIndex {
            index,
            dim: d as usize,
            metric,
            nlist,
            has_ef,
            has_nprobe,
            base_nprobe,
            cur_ef: Cell::new(DEFAULT_EF_SEARCH),
            cur_nprobe: Cell::new(base_nprobe),
            can_remove,
            kind,
        })
    }

    /// Sets HNSW `efConstruction` (how many candidates are kept while a new
    /// vector is linked into the graph) for the vectors added from now on;
    /// FAISS writes it with the index. A no-op for index types without a
    /// graph.
    pub fn set_ef_construction(&mut self, ef: usize) -> Result<(), IndexError> {
        if !self.has_ef {
            return Ok(());
        }
        if ef == 0 || ef > MAX_FACTORY_NUMBER as usize {
            return Err(IndexError::invalid(format!(
                "efConstruction must be between 1 and {MAX_FACTORY_NUMBER}, got {ef}"
            )));
        }
        let ps = ParameterSpace::new().map_err(|e| IndexError::faiss("ParameterSpace", e))?;
        ps.set_index_parameter(&self.index, "efConstruction", ef as f64)
            .map_err(|e| IndexError::faiss("set efConstruction", e))
    }

    /// Whether [`train`](Self::train) must run before [`add`](Self::add)
    /// (IVF, PQ, ...; not Flat or HNSW with flat storage).
    pub fn needs_training(&self) -> bool {
        !self.index.is_trained()
    }

    /// Number of IVF lists, if this is an IVF index.
    pub fn nlist(&self) -> Option<usize> {
        self.nlist
    }

    /// Trains on a sample (`n * dim` floats, row-major). A no-op for indexes
    /// that need no (more) training. For `IVF<n>` fewer than `n` vectors is
    /// an [`IndexError::TooFewTrainingVectors`]; FAISS recommends at least
    /// `39 * n` (it prints a warning to stderr below that) and PQ codes need
    /// at least 256 vectors (`2^nbits`).
    pub fn train(&mut self, vectors: &[f32]) -> Result<(), IndexError> {
        ensure_defaults();
        if !self.needs_training() {
            return Ok(());
        }
        let n = self.rows("training vectors", vectors)?;
        check_finite("training vectors", vectors)?;
        if let Some(nlist) = self.nlist {
            if n < nlist {
                return Err(IndexError::TooFewTrainingVectors {
                    nlist,
                    needed: nlist,
                    got: n,
                });
            }
        }
        if n == 0 {
            return Err(IndexError::invalid("no training vectors given"));
        }
        self.index
            .train(vectors)
            .map_err(|e| IndexError::faiss("train", e))
    }

    /// Adds vectors (`ids.len() * dim` floats, row-major) under the given
    /// ids. Ids must be non-negative (`-1` means "none" to FAISS); adding an
    /// id twice stores two entries.
    pub fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<(), IndexError> {
        ensure_defaults();
        let n = self.rows("vectors", vectors)?;
        if n != ids.len() {
            return Err(IndexError::invalid(format!(
                "{} ids for {n} vectors of dimension {}",
                ids.len(),
                self.dim
            )));
        }
        if n == 0 {
            return Ok(());
        }
        if let Some(id) = ids.iter().find(|&&id| id < 0) {
            return Err(IndexError::invalid(format!("negative id {id}")));
        }
        check_finite("vectors", vectors)?;
        if self.needs_training() {
            return Err(IndexError::NotTrained {
                kind: self.kind.clone(),
            });
        }
        // SAFETY: live index; `vectors` holds n*dim floats and `ids` n ids.
        let rc = unsafe {
            faiss_sys::faiss_Index_add_with_ids(
                self.index.inner_ptr(),
                n as i64,
                vectors.as_ptr(),
                ids.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(IndexError::faiss("add_with_ids", io::last_faiss_error()));
        }
        Ok(())
    }

    /// Whether [`remove`](Self::remove) works for this index type (Flat,
    /// IVF, PQ, SQ: yes; HNSW: no).
    pub fn supports_remove(&self) -> bool {
        self.can_remove
    }

    /// Removes every entry whose id is in `ids`; returns how many entries
    /// were removed.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        ensure_defaults();
        if !self.can_remove {
            return Err(IndexError::RemoveNotSupported);
        }
        if ids.is_empty() || self.is_empty() {
            return Ok(0);
        }
        let idx: Vec<Idx> = ids.iter().map(|&id| Idx::from(id)).collect();
        let sel = IdSelector::batch(&idx).map_err(|e| IndexError::faiss("IDSelectorBatch", e))?;
        self.index
            .remove_ids(&sel)
            .map_err(|e| IndexError::faiss("remove_ids", e))
    }

    /// Number of stored vectors.
    pub fn len(&self) -> usize {
        self.index.ntotal() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The `k` nearest stored vectors to `query`: `(id, score)` best first.
    /// `InnerProduct`: score = inner product (higher is better); `L2`: score
    /// = squared L2 distance (lower is better). Fewer than `k` results when
    /// the index holds fewer (or, for IVF, the probed lists hold fewer).
    /// See [`SearchParams`] for `efSearch` / `nprobe`.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> Result<Vec<(i64, f32)>, IndexError> {
        ensure_defaults();
        if query.len() != self.dim {
            return Err(IndexError::invalid(format!(
                "query has {} values, the index has dimension {}",
                query.len(),
                self.dim
            )));
        }
        check_finite("query", query)?;
        let k = k.min(self.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        if self.needs_training() {
            return Err(IndexError::NotTrained {
                kind: self.kind.clone(),
            });
        }
        // FAISS sizes its candidate heap with max(efSearch, k) but stops
        // exploring after efSearch candidates, so efSearch < k silently
        // loses recall: never search with fewer than k.
        let ef = if params.ef_search > 0 {
            params.ef_search
        } else {
            DEFAULT_EF_SEARCH
        }
        .max(k)
        .min(i32::MAX as usize);
        let nprobe = if params.nprobe > 0 {
            params.nprobe.min(self.nlist.unwrap_or(1))
        } else {
            self.base_nprobe
        };
        self.apply(ef, nprobe)?;

        let mut distances = vec![0f32; k];
        let mut labels = vec![-1i64; k];
        // SAFETY: live index (Index::search is const in C++); query has dim
        // floats; the output buffers hold k entries each.
        let rc = unsafe {
            faiss_sys::faiss_Index_search(
                self.index.inner_ptr(),
                1,
                query.as_ptr(),
                k as i64,
                distances.as_mut_ptr(),
                labels.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(IndexError::faiss("search", io::last_faiss_error()));
        }
        Ok(labels
            .into_iter()
            .zip(distances)
            .filter(|&(id, _)| id >= 0)
            .collect())
    }

    /// Sets efSearch / nprobe on the FAISS object when they differ from what
    /// is there.
    fn apply(&self, ef: usize, nprobe: usize) -> Result<(), IndexError> {
        if (!self.has_ef || self.cur_ef.get() == ef)
            && (!self.has_nprobe || self.cur_nprobe.get() == nprobe)
        {
            return Ok(());
        }
        let ps = ParameterSpace::new().map_err(|e| IndexError::faiss("ParameterSpace", e))?;
        if self.has_ef && self.cur_ef.get() != ef {
            ps.set_index_parameter(&self.index, "efSearch", ef as f64)
                .map_err(|e| IndexError::faiss("set efSearch", e))?;
            self.cur_ef.set(ef);
        }
        if self.has_nprobe && self.cur_nprobe.get() != nprobe {
            ps.set_index_parameter(&self.index, "nprobe", nprobe as f64)
                .map_err(|e| IndexError::faiss("set nprobe", e))?;
            self.cur_nprobe.set(nprobe);
        }
        Ok(())
    }

    /// Serialises the index (FAISS's format, framed by a header with a
    /// length and a CRC-32; see the `io` module). Search-time settings are
    /// reset to their defaults first, so they are not persisted.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IndexError> {
        ensure_defaults();
        self.apply(DEFAULT_EF_SEARCH, self.base_nprobe)?;
        // SAFETY: live index.
        unsafe { io::write(self.index.inner_ptr()) }
    }

    /// Loads an index written by [`to_bytes`](Self::to_bytes). Truncated,
    /// corrupt or foreign bytes are an [`IndexError::Corrupt`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IndexError> {
        ensure_defaults();
        let payload = io::payload(bytes)?;
        let p = io::read(payload)?;
        // SAFETY: `p` is a fresh index that we now own.
        let index = unsafe { IndexImpl::from_inner_ptr(p) };
        check_loaded(p)?;
        Self::wrap(index, "loaded index".to_string())
    }

    /// Number of rows in a row-major matrix of `dim` columns.
    fn rows(&self, what: &str, v: &[f32]) -> Result<usize, IndexError> {
        if !v.len().is_multiple_of(self.dim) {
            return Err(IndexError::invalid(format!(
                "{what}: {} floats is not a multiple of the dimension {}",
                v.len(),
                self.dim
            )));
        }
        Ok(v.len() / self.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_validation() {
        for f in [
            "",
            "Nope",
            "IVF0,Flat",
            "HNSW0",
            "HNSW1",
            "PQ0",
            "IDMap,Flat",
            "Flat ",
            "IVF99999999999,Flat",
        ] {
            assert!(
                VectorIndex::new(8, f, Metric::L2).is_err(),
                "{f:?} accepted"
            );
        }
        assert!(VectorIndex::new(0, "Flat", Metric::L2).is_err());
        for f in [
            "Flat",
            "HNSW32",
            "HNSW",
            "IVF4,Flat",
            "IVF4,PQ4",
            "PQ4",
            "PCA4,Flat",
            "SQ8",
        ] {
            VectorIndex::new(8, f, Metric::L2).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }
}
