//! Folding without anyone asking. Once the records appended to an index since its snapshot
//! pass the index kind's fold threshold, the inserting backend starts a dynamic background
//! worker that folds the index in its database and exits: the insert does not wait, and the
//! tail a search scans exactly stays bounded without waiting for VACUUM. Where no worker can
//! start (max_worker_processes reached), the inserting backend folds itself, after its record
//! is in. Either way the fold runs beside inserts and searches (see vacuum.rs); a worker that
//! finds another fold or VACUUM of the index under way leaves it to that one.

use std::cell::RefCell;
use std::collections::HashSet;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

thread_local! {
    /// (index, generation) pairs this backend has asked a fold for: once per generation.
    static REQUESTED: RefCell<HashSet<(pg_sys::Oid, u64)>> = RefCell::default();
}

/// Asks for a fold of `index` (at generation `generation`), once per generation per backend.
pub unsafe fn request(index: pg_sys::Relation, generation: u64) {
    // SAFETY: `index` is an open index relation (the caller's contract).
    let oid = unsafe { (*index).rd_id };
    if !REQUESTED.with(|r| r.borrow_mut().insert((oid, generation))) {
        return;
    }
    // SAFETY: a plain read of this backend's database.
    let database = unsafe { pg_sys::MyDatabaseId };
    let started = BackgroundWorkerBuilder::new("semantic fold")
        .set_type("semantic fold")
        .set_library("semantic")
        .set_function("semantic_fold_worker_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_argument(Some(pg_sys::Datum::from(u32::from(oid))))
        .set_extra(&u32::from(database).to_string())
        .load_dynamic();
    if started.is_err() {
        // SAFETY: as above; the fold takes its own locks.
        unsafe { fold(index) };
    }
}

/// Folds `index` unless another fold or VACUUM of it is under way.
unsafe fn fold(index: pg_sys::Relation) {
    // SAFETY: `index` is an open faiss or bm25 index.
    unsafe {
        if !pg_sys::ConditionalLockRelation(index, pg_sys::ShareUpdateExclusiveLock as _) {
            return;
        }
        if let Some(kind) = super::IndexKind::of(index) {
            kind.fold(index);
        }
        pg_sys::UnlockRelation(index, pg_sys::ShareUpdateExclusiveLock as _);
    }
}

/// The worker's entry point, named in its registration: the index's OID as its argument, its
/// database's OID as its extra.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn semantic_fold_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGTERM);
    let Ok(database) = BackgroundWorker::get_extra().parse::<u32>() else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(database)), None);
    let oid = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::transaction(|| {
        // SAFETY: an index that may have been dropped meanwhile: opened only if it exists.
        unsafe {
            let index = pg_sys::try_relation_open(oid, pg_sys::AccessShareLock as _);
            if index.is_null() {
                return;
            }
            if (*(*index).rd_rel).relkind == pg_sys::RELKIND_INDEX as std::ffi::c_char {
                fold(index);
            }
            pg_sys::relation_close(index, pg_sys::AccessShareLock as _);
        }
    });
}
