//! The pgrx layer of `semantic`: settings, SQL functions, and the faiss and bm25 index access
//! methods. The work itself happens in the Postgres-free crates under `crates/`.

use pgrx::prelude::*;

mod am;
mod citus;
mod compat;
mod embed;
mod errors;
mod gucs;
mod lexical;
mod model_server;
mod models;
mod search;

::pgrx::pg_module_magic!(name, version);

/// Registers settings, and when preloaded the model server's shared memory and worker.
/// ONNX Runtime, its thread pools and models are created lazily in the process that needs
/// them (thread pools do not survive the postmaster's fork).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx puts the backtrace its panic hook captures into every error's DETAIL, which
    // RUST_BACKTRACE in the server's environment turns on: users get a 30-line Rust trace with
    // each error. RUST_LIB_BACKTRACE decides for captured backtraces alone (panic messages in
    // the log are unaffected); set before the first capture, which caches it. No other thread
    // runs yet in a backend or the postmaster loading the library.
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    gucs::register();
    am::options::register();
    lexical::register_options();
    // `SET semantic.thread = 2` (a typo) is an error, not a silent placeholder.
    // SAFETY: a static, NUL-terminated prefix, once, after our settings are defined.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"semantic".as_ptr()) };
    model_server::register();
}
