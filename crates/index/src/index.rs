use crate::io;
use crate::threads::ensure_defaults;
use crate::{IndexError, Metric, SearchParams};
use faiss::index::autotune::ParameterSpace;
use faiss::index::{FromInnerPtr, IndexImpl};
use faiss::Index;
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

extern "C" {
    // cpp/storage.cpp
    fn semantic_index_stores_exact_vectors(index: *const FaissIndex) -> bool;
    fn semantic_index_begin_filling(
        index: *mut FaissIndex,
        expected: i64,
        error: *mut std::ffi::c_char,
        error_len: usize,
    ) -> i32;
    fn semantic_index_fill(
        index: *mut FaissIndex,
        x: *const f32,
        n: i64,
        error: *mut std::ffi::c_char,
        error_len: usize,
    ) -> i32;
    fn semantic_index_link_filled(
        index: *mut FaissIndex,
        error: *mut std::ffi::c_char,
        error_len: usize,
    ) -> i32;
    // cpp/search.cpp
    #[allow(clippy::too_many_arguments)]
    fn semantic_index_search_excluding(
        index: *const FaissIndex,
        query: *const f32,
        k: i64,
        ef_search: i64,
        nprobe: i64,
        dead_bitmap: *const u8,
        dead_bitmap_bytes: usize,
        distances: *mut f32,
        labels: *mut i64,
        error: *mut std::ffi::c_char,
        error_len: usize,
    ) -> std::ffi::c_int;
}

/// A bare FAISS index (no id map: its labels are the positions `0..n` in
/// the order vectors were added) with its search-time settings. Shared by
/// the mutable [`VectorIndex`] and the read-only [`crate::Snapshot`], which
/// map positions to row ids with arrays of their own.
///
/// Not `Sync`: search applies `efSearch` / `nprobe` to the FAISS object
/// before searching, so one index must not be searched from two threads at
/// once.
pub(crate) struct Faiss {
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
    /// Short description for messages (the factory string when known).
    kind: String,
}

/// Follows `IndexPreTransform` wrappers down to an `IndexIVF`, if there is
/// one.
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
            return None;
        }
        None
    }
}

/// Cheap consistency checks on a freshly read index, before anything
/// searches or probes it. The snapshot checksum is the real protection
/// against damaged bytes; this only rejects the structurally impossible
/// (labels outside `0..ntotal` are rejected at search time).
fn check_loaded(p: *mut FaissIndex) -> Result<(), IndexError> {
    let corrupt = |m: String| Err(IndexError::Corrupt(m));
    // SAFETY: getters and dynamic_casts on a live index.
    unsafe {
        let ntotal = faiss_sys::faiss_Index_ntotal(p);
        if ntotal < 0 {
            return corrupt(format!("negative vector count {ntotal}"));
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

/// Calls a C++ shim that returns -1 with a message in the buffer it is given when FAISS
/// failed; other codes are returned.
fn shim_call(
    op: &'static str,
    call: impl FnOnce(*mut std::ffi::c_char, usize) -> i32,
) -> Result<i32, IndexError> {
    let mut error = [0 as std::ffi::c_char; 512];
    match call(error.as_mut_ptr(), error.len()) {
        -1 => {
            // SAFETY: the shim wrote a NUL-terminated message.
            let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
            Err(IndexError::faiss(
                op,
                message.to_string_lossy().into_owned(),
            ))
        }
        rc => Ok(rc),
    }
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

impl Faiss {
    fn new(dim: usize, factory: &str, metric: Metric) -> Result<Self, IndexError> {
        ensure_defaults();
        validate_factory(dim, factory)?;
        let invalid = |reason: String| IndexError::InvalidFactory {
            factory: factory.to_string(),
            reason,
        };
        // Through the C API: the `faiss` crate's factory knows inner product and L2 only.
        let description =
            std::ffi::CString::new(factory).map_err(|_| invalid("a NUL byte".into()))?;
        let mut p: *mut FaissIndex = std::ptr::null_mut();
        // SAFETY: a NUL-terminated description; `p` receives a new index or stays null.
        let rc = unsafe {
            faiss_sys::faiss_index_factory(
                &mut p,
                dim as i32,
                description.as_ptr(),
                metric.faiss_code() as faiss_sys::FaissMetricType,
            )
        };
        if rc != 0 || p.is_null() {
            if !p.is_null() {
                // SAFETY: FAISS handed it to us.
                unsafe { faiss_sys::faiss_Index_free(p) };
            }
            return Err(invalid(io::last_faiss_error()));
        }
        // SAFETY: `p` is a fresh index that we now own.
        Self::wrap(unsafe { IndexImpl::from_inner_ptr(p) }, factory.to_string())
    }

    /// Takes ownership of an index FAISS just read (from memory or mapped).
    fn loaded(p: *mut FaissIndex, kind: &str) -> Result<Self, IndexError> {
        // SAFETY: `p` is a fresh index that we now own.
        let index = unsafe { IndexImpl::from_inner_ptr(p) };
        check_loaded(p)?;
        Self::wrap(index, kind.to_string())
    }

    /// Reads bytes written by [`Faiss::write_into`] into private memory.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self, IndexError> {
        ensure_defaults();
        Self::loaded(io::read(bytes)?, "loaded index")
    }

    /// Maps the index at the start of `path` read-only (see [`io::read_mapped`]).
    pub(crate) fn mapped(path: &std::path::Path) -> Result<Self, IndexError> {
        ensure_defaults();
        Self::loaded(io::read_mapped(path)?, "mapped index")
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
        Ok(Faiss {
            index,
            dim: d as usize,
            metric,
            nlist,
            has_ef,
            has_nprobe,
            base_nprobe,
            cur_ef: Cell::new(DEFAULT_EF_SEARCH),
            cur_nprobe: Cell::new(base_nprobe),
            kind,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.index.ntotal() as usize
    }

    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    pub(crate) fn metric(&self) -> Metric {
        self.metric
    }

    pub(crate) fn needs_training(&self) -> bool {
        !self.index.is_trained()
    }

    /// Whether the index keeps every vector exactly (Flat, HNSW over flat
    /// storage), so that they can be read back instead of being stored twice.
    pub(crate) fn stores_exact_vectors(&self) -> bool {
        // SAFETY: dynamic_casts on a live index.
        unsafe { semantic_index_stores_exact_vectors(self.index.inner_ptr()) }
    }

    /// Every stored vector, in position order (row-major).
    pub(crate) fn reconstruct_all(&self) -> Result<Vec<f32>, IndexError> {
        let n = self.len();
        let mut out = vec![0f32; n * self.dim];
        if n == 0 {
            return Ok(out);
        }
        // SAFETY: live index; `out` holds n * dim floats.
        let rc = unsafe {
            faiss_sys::faiss_Index_reconstruct_n(
                self.index.inner_ptr(),
                0,
                n as i64,
                out.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(IndexError::faiss("reconstruct_n", io::last_faiss_error()));
        }
        Ok(out)
    }

    /// The `k` nearest positions to `query` that are not in `dead`, best first, labels checked
    /// to lie in `0..len` (a damaged index cannot make callers index out of bounds). FAISS
    /// skips dead positions while it searches (an IDSelector) where the index kind allows it;
    /// other kinds are asked for as many more as there are dead positions, dropped after.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        dead: Option<&crate::DeadPositions>,
    ) -> Result<Vec<(usize, f32)>, IndexError> {
        ensure_defaults();
        if query.len() != self.dim {
            return Err(IndexError::invalid(format!(
                "query has {} values, the index has dimension {}",
                query.len(),
                self.dim
            )));
        }
        check_finite("query", query)?;
        let n = self.len();
        let k = k.min(n);
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
        let dead = dead.filter(|d| !d.is_empty());
        // Dead vectors stay in an HNSW graph as waypoints but take no place among the results:
        // the search explores as much further as they thin out the live ones (measured on
        // clustered data with a fifth dead, the query's nearest among them: recall@10 0.89
        // at efSearch 100, 0.96 at 160; see tests/index.rs).
        let ef = match dead {
            Some(dead) => {
                let live = (n - dead.len().min(n)).max(1) as f64 / n as f64;
                ((ef as f64 / (live * live)).ceil() as usize).min(i32::MAX as usize)
            }
            None => ef,
        };
        let mut distances = vec![0f32; k];
        let mut labels = vec![-1i64; k];
        let mut filtered = false;
        if let Some(dead) = dead {
            let mut error = [0 as std::ffi::c_char; 512];
            // SAFETY: live index (search is const in C++); query has dim floats; the bitmap
            // and the output buffers hold what their lengths say.
            let rc = unsafe {
                semantic_index_search_excluding(
                    self.index.inner_ptr(),
                    query.as_ptr(),
                    k as i64,
                    ef as i64,
                    nprobe as i64,
                    dead.bitmap().as_ptr(),
                    dead.bitmap().len(),
                    distances.as_mut_ptr(),
                    labels.as_mut_ptr(),
                    error.as_mut_ptr(),
                    error.len(),
                )
            };
            match rc {
                0 => filtered = true,
                1 => {}
                _ => {
                    // SAFETY: the shim wrote a NUL-terminated message.
                    let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
                    return Err(IndexError::faiss(
                        "search",
                        message.to_string_lossy().into_owned(),
                    ));
                }
            }
        }
        if !filtered {
            let wide = (k + dead.map_or(0, |d| d.len())).min(n);
            self.apply(ef.max(wide).min(i32::MAX as usize), nprobe)?;
            distances.resize(wide, 0.0);
            labels.resize(wide, -1);
            // SAFETY: live index (Index::search is const in C++); query has dim
            // floats; the output buffers hold `wide` entries each.
            let rc = unsafe {
                faiss_sys::faiss_Index_search(
                    self.index.inner_ptr(),
                    1,
                    query.as_ptr(),
                    wide as i64,
                    distances.as_mut_ptr(),
                    labels.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return Err(IndexError::faiss("search", io::last_faiss_error()));
            }
        }
        let mut out = Vec::with_capacity(k);
        for (label, score) in labels.into_iter().zip(distances) {
            if label < 0 {
                continue;
            }
            if label as u64 >= n as u64 {
                return Err(IndexError::Corrupt(format!(
                    "faiss returned position {label} of {n}"
                )));
            }
            if dead.is_some_and(|d| d.contains(label as usize)) {
                continue;
            }
            out.push((label as usize, score));
        }
        out.truncate(k);
        Ok(out)
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

    /// FAISS's serialisation into `out`, with search-time settings reset to their defaults
    /// first so that they are not persisted.
    pub(crate) fn write_into(&self, out: &mut dyn std::io::Write) -> Result<(), IndexError> {
        ensure_defaults();
        self.apply(DEFAULT_EF_SEARCH, self.base_nprobe)?;
        // SAFETY: live index.
        unsafe { io::write_into(self.index.inner_ptr(), out) }
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

/// A FAISS index (any factory string: `Flat`, `HNSW32`, `IVF100,Flat`,
/// `IVF256,PQ16`, ...) that maps non-negative `i64` row ids (heap TIDs
/// packed with [`crate::tid_to_id`]) to `dim`-float vectors, for building:
/// training, adding, searching and writing a [`crate::Snapshot`]. FAISS
/// itself holds the vectors by position; the position -> id array is kept
/// here, so that a snapshot can be searched straight from a mapped file.
///
/// `Send` but not `Sync` (see [`Faiss`]).
pub struct VectorIndex {
    pub(crate) faiss: Faiss,
    pub(crate) ids: Vec<i64>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("kind", &self.faiss.kind)
            .field("dim", &self.faiss.dim)
            .field("metric", &self.faiss.metric)
            .field("len", &self.len())
            .field("nlist", &self.faiss.nlist)
            .field("needs_training", &self.needs_training())
            .finish()
    }
}

impl VectorIndex {
    /// Builds an empty index from a FAISS factory string (`"Flat"`,
    /// `"HNSW32"`, `"IVF100,Flat"`, `"IVF256,PQ16"`, ...). `IDMap` must not be
    /// part of it (ids are mapped here). Bad strings are an
    /// [`IndexError::InvalidFactory`].
    ///
    /// Note: for 8-bit PQ (`PQ16`, `IVF256,PQ16`, ...) FAISS's factory turns
    /// on *polysemous training*, which costs several seconds of CPU per
    /// sub-quantizer during [`train`](Self::train) and only helps polysemous
    /// (Hamming-filtered) search, which this crate never enables. Append
    /// `np` (`IVF256,PQ16np`) to skip it.
    pub fn new(dim: usize, factory: &str, metric: Metric) -> Result<Self, IndexError> {
        Ok(VectorIndex {
            faiss: Faiss::new(dim, factory, metric)?,
            ids: Vec::new(),
        })
    }

    /// Sets HNSW `efConstruction` (how many candidates are kept while a new
    /// vector is linked into the graph) for the vectors added from now on;
    /// FAISS writes it with the index. A no-op for index types without a
    /// graph.
    pub fn set_ef_construction(&mut self, ef: usize) -> Result<(), IndexError> {
        if !self.faiss.has_ef {
            return Ok(());
        }
        if ef == 0 || ef > MAX_FACTORY_NUMBER as usize {
            return Err(IndexError::invalid(format!(
                "efConstruction must be between 1 and {MAX_FACTORY_NUMBER}, got {ef}"
            )));
        }
        let ps = ParameterSpace::new().map_err(|e| IndexError::faiss("ParameterSpace", e))?;
        ps.set_index_parameter(&self.faiss.index, "efConstruction", ef as f64)
            .map_err(|e| IndexError::faiss("set efConstruction", e))
    }

    /// Whether [`train`](Self::train) must run before [`add`](Self::add)
    /// (IVF, PQ, ...; not Flat or HNSW with flat storage).
    pub fn needs_training(&self) -> bool {
        self.faiss.needs_training()
    }

    /// Number of IVF lists, if this is an IVF index.
    pub fn nlist(&self) -> Option<usize> {
        self.faiss.nlist
    }

    /// Whether the index keeps every vector exactly (Flat; HNSW over flat
    /// storage), so [`vectors`](Self::vectors) gives back what was added.
    pub fn stores_exact_vectors(&self) -> bool {
        self.faiss.stores_exact_vectors()
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
        let n = self.faiss.rows("training vectors", vectors)?;
        check_finite("training vectors", vectors)?;
        if let Some(nlist) = self.faiss.nlist {
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
        self.faiss
            .index
            .train(vectors)
            .map_err(|e| IndexError::faiss("train", e))
    }

    /// How many vectors a batch to add holds, once its ids (one per vector, none negative)
    /// and values (finite) are checked.
    fn checked_batch(&self, ids: &[i64], vectors: &[f32]) -> Result<usize, IndexError> {
        let n = self.faiss.rows("vectors", vectors)?;
        if n != ids.len() {
            return Err(IndexError::invalid(format!(
                "{} ids for {n} vectors of dimension {}",
                ids.len(),
                self.faiss.dim
            )));
        }
        if let Some(id) = ids.iter().find(|&&id| id < 0) {
            return Err(IndexError::invalid(format!("negative id {id}")));
        }
        check_finite("vectors", vectors)?;
        Ok(n)
    }

    /// Adds vectors (`ids.len() * dim` floats, row-major) under the given
    /// ids. Ids must be non-negative; adding an id twice stores two entries
    /// (the chunks of one long text share their row's id).
    pub fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<(), IndexError> {
        ensure_defaults();
        let n = self.checked_batch(ids, vectors)?;
        if n == 0 {
            return Ok(());
        }
        if self.needs_training() {
            return Err(IndexError::NotTrained {
                kind: self.faiss.kind.clone(),
            });
        }
        // SAFETY: live index; `vectors` holds n*dim floats.
        let rc = unsafe {
            faiss_sys::faiss_Index_add(self.faiss.index.inner_ptr(), n as i64, vectors.as_ptr())
        };
        if rc != 0 {
            return Err(IndexError::faiss("add", io::last_faiss_error()));
        }
        self.ids.extend_from_slice(ids);
        Ok(())
    }

    /// Makes this empty index (Flat, or HNSW over flat storage) ready to take vectors while a
    /// table is scanned ([`Self::fill`]), with room for about `expected`; false for other kinds
    /// (which [`Self::add`] the vectors once they have them all).
    pub fn begin_filling(&mut self, expected: usize) -> Result<bool, IndexError> {
        if !self.ids.is_empty() || self.needs_training() {
            return Ok(false);
        }
        // SAFETY: live index; the shim writes a NUL-terminated message on failure.
        shim_call("begin filling", |error, len| unsafe {
            semantic_index_begin_filling(
                self.faiss.index.inner_ptr(),
                expected.min(i64::MAX as usize) as i64,
                error,
                len,
            )
        })
        .map(|rc| rc == 0)
    }

    /// Hands vectors (`ids.len() * dim` floats) to an index [`Self::begin_filling`] made ready:
    /// a flat index keeps them at once, an HNSW index's storage keeps them until
    /// [`Self::link_filled`] links them all into its graph in one call. The caller's copy can
    /// go: the vectors are never held twice.
    pub fn fill(&mut self, ids: &[i64], vectors: &[f32]) -> Result<(), IndexError> {
        let n = self.checked_batch(ids, vectors)?;
        // SAFETY: live index; `vectors` holds n * dim floats.
        shim_call("fill", |error, len| unsafe {
            semantic_index_fill(
                self.faiss.index.inner_ptr(),
                vectors.as_ptr(),
                n as i64,
                error,
                len,
            )
        })?;
        self.ids.extend_from_slice(ids);
        Ok(())
    }

    /// Links what [`Self::fill`] handed over into the HNSW graph (nothing to do for a flat
    /// index, or when nothing is pending).
    pub fn link_filled(&mut self) -> Result<(), IndexError> {
        ensure_defaults();
        // SAFETY: live index; the shim writes a NUL-terminated message on failure.
        shim_call("add", |error, len| unsafe {
            semantic_index_link_filled(self.faiss.index.inner_ptr(), error, len)
        })
        .map(|_| ())
    }

    /// Number of stored vectors.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.faiss.dim
    }

    pub fn metric(&self) -> Metric {
        self.faiss.metric
    }

    /// The row ids, in the order their vectors were added.
    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// Every vector, in the order of [`ids`](Self::ids) (row-major); exact
    /// only when [`stores_exact_vectors`](Self::stores_exact_vectors).
    pub fn vectors(&self) -> Result<Vec<f32>, IndexError> {
        self.faiss.reconstruct_all()
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
        Ok(self
            .faiss
            .search(query, k, params, None)?
            .into_iter()
            .map(|(pos, score)| (self.ids[pos], score))
            .collect())
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
