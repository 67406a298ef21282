//! The model server: one background worker that holds each model once for the whole server
//! and embeds the texts of every backend (`embed()`, the query of `semantic_search` and of an
//! index scan), so that a new connection neither creates an ONNX Runtime session nor holds a
//! copy of the weights. It exists when the library is in `shared_preload_libraries` and
//! `semantic.model_server` is on; otherwise, or when the server is gone or busy, or a session
//! asks for other thread/provider settings than the server has, a backend embeds the text
//! itself as before. The slot protocol is Postgres-free (crates/model-server); this is the
//! glue: shared memory, latches, the worker's loop.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use semantic_encoder::{EncoderError, TextKind};
use semantic_model_server::{Client, ErrorReply, Mailbox, Poll, Reply, Request, SubmitError};

use crate::errors::{classify, raise};
use crate::gucs;
use crate::models::{try_with_encoder, Embedding};

/// Requests in flight at once; a backend that finds every slot taken waits briefly, then
/// embeds itself.
const SLOTS: usize = 64;
/// Room for one request (the model folder and the text) or one reply. A longer text is
/// embedded by the backend itself.
const SLOT_BYTES: usize = 64 * 1024;
/// How long a backend waits for a free slot before it embeds the text itself.
const BUSY_WAIT: Duration = Duration::from_millis(500);

static MAILBOX: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    /// This backend as a client of the mailbox, registered on its first request.
    static CLIENT: std::cell::Cell<Option<Client>> = const { std::cell::Cell::new(None) };
    /// The model folders the server has embedded with for this backend (for
    /// semantic_models().loaded).
    static SERVED: std::cell::RefCell<std::collections::HashSet<String>> = Default::default();
}

/// Whether the model server has embedded with the model in `model_dir` for this backend.
pub fn has_served(model_dir: &Path) -> bool {
    SERVED.with(|s| s.borrow().contains(model_dir.to_string_lossy().as_ref()))
}
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Called by `_PG_init`: reserves the mailbox and registers the worker, when the library is
/// being preloaded (the only time PostgreSQL allows either).
pub fn register() {
    // SAFETY: a plain flag PostgreSQL sets around shared_preload_libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    gucs::register_preloaded();
    if !gucs::model_server() {
        return;
    }
    // SAFETY: _PG_init runs once in the postmaster, before any hook is called.
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup_shmem);
    }
    BackgroundWorkerBuilder::new("semantic model server")
        .set_type("semantic model server")
        .set_library("semantic")
        .set_function("semantic_model_server_main")
        .enable_shmem_access(None)
        // A connection to no database, as the logical replication launcher has: it makes the
        // server visible in pg_stat_activity. Standbys search too: start once consistent.
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

#[pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    // SAFETY: hooks run in the postmaster, one at a time.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(Mailbox::size(SLOTS, SLOT_BYTES));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup_shmem() {
    // SAFETY: hooks run in the postmaster (again after a crash restart); AddinShmemInitLock
    // is slot 21 of the main LWLock array in every supported version.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let size = Mailbox::size(SLOTS, SLOT_BYTES);
        let base =
            pg_sys::ShmemInitStruct(c"semantic model server".as_ptr(), size, &mut found) as *mut u8;
        if !found {
            Mailbox::init(base, SLOTS, SLOT_BYTES);
        }
        pg_sys::LWLockRelease(lock);
        MAILBOX.store(base, Ordering::Release);
    }
}

fn mailbox() -> Option<Mailbox> {
    let base = MAILBOX.load(Ordering::Acquire);
    // SAFETY: set once the shared memory is formatted; the postmaster's children inherit it.
    (!base.is_null()).then(|| unsafe { Mailbox::attach(base) })
}

/// The settings a session is created with, hashed: a backend uses the server only when
/// its own are the same, so that `semantic.threads` still bounds what its work may use.
fn settings_hash() -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    gucs::threads().hash(&mut h);
    gucs::execution_provider().name().hash(&mut h);
    gucs::onnxruntime_library().hash(&mut h);
    h.finish()
}

fn my_latch() -> usize {
    // SAFETY: every backend has its latch.
    unsafe { pg_sys::MyLatch as usize }
}

/// Whether `pid` is a live process of this server (a backend or a background worker).
fn process_alive(pid: u32) -> bool {
    // SAFETY: BackendPidGetProc takes ProcArrayLock itself and only reads the proc array.
    !unsafe { pg_sys::BackendPidGetProc(pid as i32) }.is_null()
}

/// This backend's client identity, registering it (and its exit callback) on first use.
fn this_client(mailbox: &Mailbox) -> Client {
    CLIENT.with(|cell| {
        cell.get().unwrap_or_else(|| {
            // SAFETY: our own pid and latch.
            let client = mailbox.client(unsafe { pg_sys::MyProcPid } as u32, my_latch());
            // SAFETY: registered once per backend; the callback only touches the mailbox.
            unsafe { pg_sys::before_shmem_exit(Some(release_slots), pg_sys::Datum::from(0)) };
            cell.set(Some(client));
            client
        })
    })
}

/// Gives up this backend's slots on any exit, FATAL ones included (a terminated or
/// disconnected client never unwinds to drop its ticket).
#[pg_guard]
unsafe extern "C-unwind" fn release_slots(_code: i32, _arg: pg_sys::Datum) {
    if let (Some(mailbox), Some(client)) = (mailbox(), CLIENT.with(|c| c.get())) {
        mailbox.client_exited(&client);
    }
}

fn wait_on_latch(timeout: Duration) {
    // SAFETY: this backend's own latch; interrupts are checked right after.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis() as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pg_sys::check_for_interrupts!();
}

/// The embedding of `text` by the model server, or None when this backend should embed it
/// itself (no server, a server with other settings, no free slot, a text too long for a
/// slot, or a server that went away meanwhile). Errors the server met are raised here.
pub fn embed(model_dir: &Path, text: &str, kind: TextKind) -> Option<Embedding> {
    let mailbox = mailbox()?;
    if mailbox.server()?.settings != settings_hash() {
        return None;
    }
    let request = Request {
        model_dir: model_dir.to_string_lossy().into_owned(),
        kind,
        text: text.to_string(),
    };
    let client = this_client(&mailbox);
    let busy_since = Instant::now();
    let mut reclaimed = false;
    let mut ticket = loop {
        match mailbox.submit(&request, &client) {
            Ok(ticket) => break ticket,
            // A full mailbox may be full of slots whose owners died: take those back once.
            Err(SubmitError::Busy) if !reclaimed => {
                reclaimed = true;
                mailbox.reclaim_orphans(process_alive);
            }
            Err(SubmitError::Busy) if busy_since.elapsed() < BUSY_WAIT => {
                wait_on_latch(Duration::from_millis(1))
            }
            Err(_) => return None,
        }
    };
    if let Some(server) = mailbox.server() {
        // SAFETY: the server's latch lives in shared memory for as long as the server.
        unsafe { pg_sys::SetLatch(server.waker as *mut pg_sys::Latch) };
    }
    // A cancel or timeout raised while waiting drops the ticket, which gives the slot up.
    loop {
        match ticket.poll() {
            Poll::Ready(Reply::Vector {
                fingerprint,
                vector,
            }) => {
                SERVED.with(|s| s.borrow_mut().insert(request.model_dir.clone()));
                return Some(Embedding {
                    vector,
                    fingerprint,
                });
            }
            Poll::Ready(Reply::Error(e)) => raise(
                PgSqlErrorCode::from(e.sqlstate),
                e.message,
                e.hint.as_deref(),
            ),
            Poll::ServerGone => return None,
            Poll::Waiting => wait_on_latch(Duration::from_millis(100)),
        }
    }
}

fn error_reply(code: PgSqlErrorCode, message: String, hint: Option<&str>) -> Reply {
    Reply::Error(ErrorReply {
        sqlstate: code as i32,
        message,
        hint: hint.map(str::to_string),
    })
}

fn encoder_error_reply(error: &EncoderError) -> Reply {
    let (code, hint) = classify(error);
    error_reply(code, error.to_string(), hint)
}

/// Embeds one batch of requests for the same model and side; one reply per request.
fn embed_batch(model_dir: &str, kind: TextKind, texts: &[&str]) -> Vec<Reply> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        try_with_encoder(Path::new(model_dir), |encoder| {
            let fingerprint = encoder.manifest().fingerprint.clone();
            Ok(encoder
                .encode(texts, kind)?
                .into_iter()
                .map(|vector| Reply::Vector {
                    fingerprint: fingerprint.clone(),
                    vector,
                })
                .collect::<Vec<_>>())
        })
    }));
    match result {
        Ok(Ok(replies)) => replies,
        Ok(Err(e)) => vec![encoder_error_reply(&e); texts.len()],
        Err(_) => vec![
            error_reply(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "the model server failed while embedding (see the server log)".into(),
                None,
            );
            texts.len()
        ],
    }
}

/// Answers every request taken from the mailbox, batching those for the same model and side.
fn serve(mailbox: &Mailbox, taken: Vec<(usize, Option<Request>)>) {
    let mut groups: HashMap<(String, bool), Vec<(usize, String)>> = HashMap::new();
    let mut replies: Vec<(usize, Reply)> = Vec::new();
    for (slot, request) in taken {
        match request {
            Some(r) => groups
                .entry((r.model_dir, r.kind == TextKind::Query))
                .or_default()
                .push((slot, r.text)),
            None => replies.push((
                slot,
                error_reply(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    "malformed model server request".into(),
                    None,
                ),
            )),
        }
    }
    for ((model_dir, is_query), requests) in groups {
        let kind = if is_query {
            TextKind::Query
        } else {
            TextKind::Passage
        };
        let texts: Vec<&str> = requests.iter().map(|(_, t)| t.as_str()).collect();
        let answers = embed_batch(&model_dir, kind, &texts);
        replies.extend(requests.iter().map(|(slot, _)| *slot).zip(answers));
    }
    for (slot, reply) in replies {
        if let Some(owner) = mailbox.complete(slot, &reply) {
            // SAFETY: the owner's latch is its PGPROC's, in shared memory; a backend that
            // exited meanwhile left the slot ABANDONED (or FREE) and is not woken.
            unsafe { pg_sys::SetLatch(owner as *mut pg_sys::Latch) };
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn withdraw(_code: i32, _arg: pg_sys::Datum) {
    if let Some(mailbox) = mailbox() {
        // SAFETY: reading our own pid.
        mailbox.server_stopped(unsafe { pg_sys::MyProcPid } as u32);
    }
}

/// Loads the default model before the first request needs it.
fn preload_default_model() {
    let (Some(root), name) = (gucs::model_dir(), gucs::default_model()) else {
        return;
    };
    let dir = root.join(&name);
    if name.is_empty() || !dir.is_dir() {
        return;
    }
    if let Err(e) = try_with_encoder(&dir, |_| Ok(())) {
        pgrx::log!("semantic model server: could not preload model \"{name}\": {e}");
    }
}

/// The worker's entry point, named in its registration.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn semantic_model_server_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    let Some(mailbox) = mailbox() else {
        return;
    };
    // SAFETY: our own pid and latch; the callback withdraws us on any exit but a crash
    // (after which the postmaster restarts every process anyway).
    let epoch = unsafe {
        pg_sys::before_shmem_exit(Some(withdraw), pg_sys::Datum::from(0));
        mailbox.server_started(
            pg_sys::MyProcPid as u32,
            pg_sys::MyLatch as usize,
            settings_hash(),
        )
    };
    // What clients of the last server left when they died is taken back before anything.
    mailbox.reclaim_orphans(process_alive);
    // Requests that come meanwhile wait for this load, which they would need anyway.
    preload_default_model();
    pgrx::log!("semantic model server started");
    loop {
        let taken = mailbox.take_pending(epoch);
        if !taken.is_empty() {
            serve(&mailbox, taken);
            continue;
        }
        // Idle: reclaim the slots of clients that died (a replied slot nobody will read).
        mailbox.reclaim_orphans(process_alive);
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(10))) {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to reload postgresql.conf.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            mailbox.server_settings_changed(settings_hash());
        }
    }
    // Exit code 1 has the postmaster start a new server after restart_time when this one was
    // terminated alone (pg_terminate_backend); at shutdown nothing is restarted anyway.
    // SAFETY: a plain exit; `withdraw` runs on the way.
    unsafe { pg_sys::proc_exit(1) }
}
