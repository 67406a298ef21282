//! Stopping long FAISS operations from the outside: FAISS asks a process-wide callback (installed
//! by cpp/interrupt.cpp) every few thousand steps, from any of its OpenMP threads; the callback
//! asks the function given to [`set_interrupt_check`]. A FAISS call it stops returns an
//! [`crate::IndexError::Faiss`] whose message says "computation interrupted".

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Once;

extern "C" {
    fn semantic_index_install_interrupt_callback();
}

static CHECK: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static INSTALL: Once = Once::new();

/// Makes FAISS stop (with an error) when `check` returns true. `check` runs on FAISS's worker
/// threads: it must be cheap, thread-safe and must not panic (a database backend reads its
/// pending-interrupt flag there, nothing more).
pub fn set_interrupt_check(check: fn() -> bool) {
    CHECK.store(check as *mut (), Ordering::Release);
    // SAFETY: replaces FAISS's (empty) callback instance; called once.
    INSTALL.call_once(|| unsafe { semantic_index_install_interrupt_callback() });
}

#[no_mangle]
extern "C" fn semantic_index_interrupt_requested() -> bool {
    let check = CHECK.load(Ordering::Acquire);
    if check.is_null() {
        return false;
    }
    // SAFETY: only ever stored from a `fn() -> bool` in set_interrupt_check.
    let check: fn() -> bool = unsafe { std::mem::transmute(check) };
    // A panic must not unwind into C++.
    std::panic::catch_unwind(check).unwrap_or(true)
}
