//! The pgrx layer of `semantic`: settings, SQL functions, and the faiss and bm25 index access
//! methods. The work itself happens in the Postgres-free crates under `crates/`.

use pgrx::prelude::*;

mod am;
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
    gucs::register();
    am::options::register();
    lexical::register_options();
    // `SET semantic.thread = 2` (a typo) is an error, not a silent placeholder.
    // SAFETY: a static, NUL-terminated prefix, once, after our settings are defined.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"semantic".as_ptr()) };
    model_server::register();
}
