//! Threads that libraries start inside a PostgreSQL backend (ONNX Runtime's, the tokenizer's,
//! a session's pools, FAISS's OpenMP team) must never take the process's signals: a handler
//! that runs on a foreign thread aborts the process (pgrx checks the thread) or loses a latch
//! wake-up. A new thread inherits the signal mask of the thread that creates it, so they are
//! created with every asynchronous signal blocked; the creating thread's mask comes back
//! afterwards, and the signals that arrived meanwhile are delivered to it then.

/// Runs `f` with every signal but the synchronous fault signals blocked in this thread.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(libc::sigset_t);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a mask this thread had.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
        }
    }
    // SAFETY: sigset_t is plain data, filled by sigfillset/pthread_sigmask before use.
    let (mut blocked, mut previous): (libc::sigset_t, libc::sigset_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: valid sigset pointers; the faults stay deliverable (blocking them is undefined
    // when they are raised by the thread itself).
    unsafe {
        libc::sigfillset(&mut blocked);
        for fault in [libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL] {
            libc::sigdelset(&mut blocked, fault);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &blocked, &mut previous);
    }
    let _restore = Restore(previous);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_now(signal: libc::c_int) -> bool {
        // SAFETY: reads this thread's mask into a local set.
        unsafe {
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut mask);
            libc::sigismember(&mask, signal) == 1
        }
    }

    #[test]
    fn threads_started_inside_block_signals_and_the_caller_gets_its_mask_back() {
        assert!(!blocked_now(libc::SIGHUP));
        let inside = with_signals_blocked(|| {
            std::thread::spawn(|| (blocked_now(libc::SIGHUP), blocked_now(libc::SIGSEGV)))
                .join()
                .unwrap()
        });
        assert_eq!(inside, (true, false));
        assert!(!blocked_now(libc::SIGHUP));
    }
}
