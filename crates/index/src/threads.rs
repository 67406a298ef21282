//! Thread-count control for FAISS's OpenMP loops and for OpenBLAS.
//!
//! * OpenMP: `omp_set_num_threads` from libgomp (which `faiss-sys` links for
//!   its static build). In libgomp it sets the *calling thread's* count, so
//!   the default of 1 is applied lazily per thread (see [`ensure_defaults`]).
//!   [`set_threads`] starts the team at once, with signals blocked
//!   (semantic-signals): its threads must never run a PostgreSQL signal
//!   handler. OpenBLAS's threads too, except those it starts when the library
//!   loads: hence `OPENBLAS_NUM_THREADS=1` in the server's environment.
//! * OpenBLAS: FAISS runs BLAS `sgemm` for k-means training and for batched
//!   flat search. The pthread build of OpenBLAS keeps its own process-wide
//!   pool sized to the machine; `openblas_set_num_threads` is looked up with
//!   `dlsym` because `libblas.so.3` may be another BLAS without it.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::Once;

extern "C" {
    // libgomp, linked by faiss-sys (`cargo:rustc-link-lib=gomp`); not in the libc crate.
    fn omp_set_num_threads(n: c_int);
    // cpp/threads.cpp
    fn semantic_index_start_omp_threads(n: c_int) -> c_int;
}

thread_local! {
    static OMP_CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

static BLAS_DEFAULT: Once = Once::new();

fn set_openblas_threads(n: usize) {
    // SAFETY: RTLD_DEFAULT (null) search for a plain C function symbol.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"openblas_set_num_threads".as_ptr()) };
    if !sym.is_null() {
        // SAFETY: OpenBLAS declares `void openblas_set_num_threads(int)`.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(sym) };
        f(n.clamp(1, c_int::MAX as usize) as c_int);
    }
}

/// Sets the threads FAISS may use: the OpenMP thread count of the *calling
/// thread* (libgomp keeps it per thread) and OpenBLAS's process-wide thread
/// count (when the BLAS in use is OpenBLAS). `0` is treated as 1. Both pools
/// start their threads here, with signals blocked (semantic-signals), and
/// FAISS's later parallel loops of up to `n` threads reuse them.
///
/// Without a call, each thread that uses a [`crate::VectorIndex`] runs FAISS
/// single-threaded, unless `OMP_NUM_THREADS` / `OPENBLAS_NUM_THREADS` are set
/// in the environment.
pub fn set_threads(n: usize) {
    let n = n.max(1).min(c_int::MAX as usize) as c_int;
    semantic_signals::with_signals_blocked(|| {
        // SAFETY: the libgomp setter, and a parallel region that only counts its threads.
        unsafe {
            omp_set_num_threads(n);
            if n > 1 {
                semantic_index_start_omp_threads(n);
            }
        }
        set_openblas_threads(n as usize);
    });
    OMP_CONFIGURED.with(|c| c.set(true));
    BLAS_DEFAULT.call_once(|| {});
}

/// Applies the single-thread defaults once per thread / process, unless the
/// environment or [`set_threads`] already decided.
pub(crate) fn ensure_defaults() {
    OMP_CONFIGURED.with(|c| {
        if !c.get() {
            c.set(true);
            if std::env::var_os("OMP_NUM_THREADS").is_none() {
                // SAFETY: plain libgomp setter.
                unsafe { omp_set_num_threads(1) };
            }
        }
    });
    BLAS_DEFAULT.call_once(|| {
        if std::env::var_os("OPENBLAS_NUM_THREADS").is_none() {
            set_openblas_threads(1);
        }
    });
}
