//! A fixed array of request slots in memory shared by every backend and the model server.
//!
//! Each slot is owned by whoever its state says, and only the owner touches its bytes:
//!
//! ```text
//! FREE --client claims--> CLAIMED --client writes, publishes--> PENDING
//! PENDING --server takes--> WORKING --server writes the reply--> DONE --client reads--> FREE
//! ```
//!
//! A client that gives up (query cancelled, error) takes a PENDING slot back to FREE, or marks a
//! WORKING one ABANDONED so that the server frees it when it is done. A client whose server
//! died (no server, or a new one with another epoch than the one working on the slot) takes
//! the slot back and embeds the text itself: nothing waits on a process that is gone.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::message::{Reply, Request};

/// How a process is woken: the address of its PostgreSQL latch, opaque here.
pub type Waker = usize;

const MAGIC: u64 = u64::from_le_bytes(*b"SEMMBOX1");

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const PENDING: u32 = 2;
const WORKING: u32 = 3;
const DONE: u32 = 4;
const ABANDONED: u32 = 5;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    slots: AtomicU32,
    slot_bytes: AtomicU32,
    /// The running server's pid, 0 when none runs.
    server_pid: AtomicU32,
    /// Incremented by every server start: tells a live server from a dead one's leftovers.
    epoch: AtomicU32,
    server_waker: AtomicUsize,
    /// What the server's sessions were created with (threads, provider, library), hashed by
    /// the extension: a backend whose own settings differ embeds locally instead.
    settings: AtomicU64,
    /// Where the next claim starts looking, so that claims spread over the slots.
    next: AtomicU32,
}

#[repr(C)]
struct SlotHeader {
    state: AtomicU32,
    /// The epoch of the server that took the slot (set before WORKING is published).
    epoch: AtomicU32,
    len: AtomicU32,
    _pad: u32,
    owner: AtomicUsize,
}

const HEADER_BYTES: usize = 64;
const SLOT_HEADER_BYTES: usize = 32;
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<SlotHeader>() <= SLOT_HEADER_BYTES);

/// The running server, as it announced itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    pub pid: u32,
    pub epoch: u32,
    pub waker: Waker,
    pub settings: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// No server is running.
    NoServer,
    /// Every slot is in use.
    Busy,
    /// The request is larger than a slot.
    TooLarge,
}

/// What a client's request has come to.
#[derive(Debug, PartialEq)]
pub enum Poll {
    Waiting,
    Ready(Reply),
    /// The server that had the request is gone; the client must do the work itself.
    ServerGone,
}

/// A view of the mailbox memory. All state changes are atomic; slot bytes are plain memory
/// handed over by the Release/Acquire pairs of the state changes.
pub struct Mailbox {
    base: NonNull<u8>,
    slots: usize,
    slot_bytes: usize,
}

// SAFETY: every shared field is an atomic, and slot bytes are touched only by the slot's
// owner, ownership passing through atomic state changes.
unsafe impl Send for Mailbox {}
unsafe impl Sync for Mailbox {}

impl Mailbox {
    /// Bytes a mailbox of `slots` slots of `slot_bytes` payload bytes takes.
    pub fn size(slots: usize, slot_bytes: usize) -> usize {
        HEADER_BYTES + slots * (SLOT_HEADER_BYTES + slot_bytes.next_multiple_of(8))
    }

    /// Formats the memory at `base` as an empty mailbox.
    ///
    /// # Safety
    /// `base` must be 8-byte aligned, valid for [`Mailbox::size`] bytes for as long as the
    /// mailbox is used, and not in use by anyone else while this runs.
    pub unsafe fn init(base: *mut u8, slots: usize, slot_bytes: usize) -> Mailbox {
        let slot_bytes = slot_bytes.next_multiple_of(8);
        // SAFETY: the caller gives us the whole region.
        unsafe { std::ptr::write_bytes(base, 0, Self::size(slots, slot_bytes)) };
        let mailbox = Mailbox {
            base: NonNull::new(base).expect("a mailbox needs memory"),
            slots,
            slot_bytes,
        };
        let h = mailbox.header();
        h.slots.store(slots as u32, Ordering::Relaxed);
        h.slot_bytes.store(slot_bytes as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        mailbox
    }

    /// A view of the mailbox that [`Mailbox::init`] formatted at `base`.
    ///
    /// # Safety
    /// `base` must hold a mailbox formatted by `init`, valid while the view is used.
    pub unsafe fn attach(base: *mut u8) -> Mailbox {
        // SAFETY: the caller says a header lives there.
        let h = unsafe { &*(base as *const Header) };
        assert_eq!(h.magic.load(Ordering::Acquire), MAGIC, "not a mailbox");
        Mailbox {
            base: NonNull::new(base).expect("a mailbox needs memory"),
            slots: h.slots.load(Ordering::Relaxed) as usize,
            slot_bytes: h.slot_bytes.load(Ordering::Relaxed) as usize,
        }
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn header(&self) -> &Header {
        // SAFETY: init/attach checked that a header is there.
        unsafe { &*(self.base.as_ptr() as *const Header) }
    }

    fn slot_offset(&self, slot: usize) -> usize {
        assert!(slot < self.slots);
        HEADER_BYTES + slot * (SLOT_HEADER_BYTES + self.slot_bytes)
    }

    fn slot(&self, slot: usize) -> &SlotHeader {
        // SAFETY: in bounds (asserted), aligned by construction.
        unsafe { &*(self.base.as_ptr().add(self.slot_offset(slot)) as *const SlotHeader) }
    }

    /// The payload bytes of `slot`. Only its current owner may use them.
    #[allow(clippy::mut_from_ref)] // ownership is the slot state's, not the borrow checker's
    fn payload(&self, slot: usize) -> &mut [u8] {
        // SAFETY: in bounds; exclusive because only the slot's owner calls this.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base
                    .as_ptr()
                    .add(self.slot_offset(slot) + SLOT_HEADER_BYTES),
                self.slot_bytes,
            )
        }
    }

    // ---- the server's side ----

    /// Announces a server; returns its epoch.
    pub fn server_started(&self, pid: u32, waker: Waker, settings: u64) -> u32 {
        let h = self.header();
        let epoch = h.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        h.server_waker.store(waker, Ordering::Relaxed);
        h.settings.store(settings, Ordering::Relaxed);
        h.server_pid.store(pid, Ordering::Release);
        epoch
    }

    /// Publishes new session settings of the running server (after a configuration reload).
    pub fn server_settings_changed(&self, settings: u64) {
        self.header().settings.store(settings, Ordering::Release);
    }

    /// Withdraws the server `pid` (on its exit); clients then stop waiting for it.
    pub fn server_stopped(&self, pid: u32) {
        let _ =
            self.header()
                .server_pid
                .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The running server, if any.
    pub fn server(&self) -> Option<ServerInfo> {
        let h = self.header();
        let pid = h.server_pid.load(Ordering::Acquire);
        (pid != 0).then(|| ServerInfo {
            pid,
            epoch: h.epoch.load(Ordering::Acquire),
            waker: h.server_waker.load(Ordering::Relaxed),
            settings: h.settings.load(Ordering::Acquire),
        })
    }

    /// Takes every pending request for the server of `epoch`. A request that cannot be
    /// decoded (which would be a bug) comes as None, to be answered with an error.
    pub fn take_pending(&self, epoch: u32) -> Vec<(usize, Option<Request>)> {
        let mut taken = Vec::new();
        for slot in 0..self.slots {
            let s = self.slot(slot);
            if s.state.load(Ordering::Acquire) != PENDING {
                continue;
            }
            // The epoch goes first: a client that sees WORKING must see who is working.
            s.epoch.store(epoch, Ordering::Release);
            if s.state
                .compare_exchange(PENDING, WORKING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue; // the client took it back
            }
            let len = s.len.load(Ordering::Acquire) as usize;
            taken.push((slot, Request::decode(&self.payload(slot)[..len])));
        }
        taken
    }

    /// Writes the reply of a slot taken by [`Mailbox::take_pending`]. Returns the waker of the
    /// client to wake, or None when the client gave up (the slot is then free again). A reply
    /// larger than a slot is replaced by `too_large`.
    pub fn complete(&self, slot: usize, reply: &Reply) -> Option<Waker> {
        let s = self.slot(slot);
        let payload = self.payload(slot);
        let len = reply.encode(payload).unwrap_or_else(|| {
            Reply::Error(crate::message::ErrorReply {
                sqlstate: crate::message::ErrorReply::INTERNAL_ERROR,
                message: "the reply does not fit a model server slot".into(),
                hint: None,
            })
            .encode(payload)
            .expect("a short error fits any slot")
        });
        s.len.store(len as u32, Ordering::Release);
        match s
            .state
            .compare_exchange(WORKING, DONE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Some(s.owner.load(Ordering::Acquire)),
            Err(_) => {
                // ABANDONED: the client is gone, the slot is ours to free.
                s.state.store(FREE, Ordering::Release);
                None
            }
        }
    }

    // ---- the client's side ----

    /// Hands `request` to the server. The caller then wakes [`ServerInfo::waker`] and polls
    /// the ticket; dropping the ticket gives the slot up at any point.
    pub fn submit(&self, request: &Request, owner: Waker) -> Result<Ticket<'_>, SubmitError> {
        if self.server().is_none() {
            return Err(SubmitError::NoServer);
        }
        if request.encoded_len() > self.slot_bytes {
            return Err(SubmitError::TooLarge);
        }
        let start = self.header().next.fetch_add(1, Ordering::Relaxed) as usize;
        let slot = (0..self.slots)
            .map(|i| (start + i) % self.slots)
            .find(|&i| {
                self.slot(i)
                    .state
                    .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(SubmitError::Busy)?;
        let s = self.slot(slot);
        let len = request
            .encode(self.payload(slot))
            .expect("checked to fit above");
        s.len.store(len as u32, Ordering::Relaxed);
        s.owner.store(owner, Ordering::Relaxed);
        s.state.store(PENDING, Ordering::Release);
        Ok(Ticket {
            mailbox: self,
            slot,
            finished: false,
        })
    }
}

/// A client's claim on one slot, from submit to reply. Dropping it gives the slot up.
pub struct Ticket<'a> {
    mailbox: &'a Mailbox,
    slot: usize,
    /// The slot is FREE again and no longer ours.
    finished: bool,
}

impl Ticket<'_> {
    /// Where the request stands. After `Ready` or `ServerGone` the ticket is spent.
    pub fn poll(&mut self) -> Poll {
        if self.finished {
            return Poll::ServerGone;
        }
        let m = self.mailbox;
        let s = m.slot(self.slot);
        let server = m.server();
        let taken_back = |from: u32| {
            s.state
                .compare_exchange(from, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        match s.state.load(Ordering::Acquire) {
            DONE => {
                let len = s.len.load(Ordering::Acquire) as usize;
                let reply = Reply::decode(&m.payload(self.slot)[..len]);
                self.release();
                reply.map_or(Poll::ServerGone, Poll::Ready)
            }
            WORKING => {
                let worker = s.epoch.load(Ordering::Acquire);
                let alive = server.is_some_and(|info| info.epoch == worker);
                if !alive && taken_back(WORKING) {
                    self.release();
                    Poll::ServerGone
                } else {
                    Poll::Waiting
                }
            }
            PENDING => {
                if server.is_none() && taken_back(PENDING) {
                    self.release();
                    Poll::ServerGone
                } else {
                    Poll::Waiting
                }
            }
            _ => Poll::Waiting,
        }
    }

    fn release(&mut self) {
        self.mailbox
            .slot(self.slot)
            .state
            .store(FREE, Ordering::Release);
        self.finished = true;
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let s = self.mailbox.slot(self.slot);
        loop {
            let state = s.state.load(Ordering::Acquire);
            let next = match state {
                WORKING => ABANDONED,
                PENDING | DONE | CLAIMED => FREE,
                _ => return,
            };
            if s.state
                .compare_exchange(state, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }
}
