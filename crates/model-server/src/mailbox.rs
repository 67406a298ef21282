//! A fixed array of request slots in memory shared by every backend and the model server.
//!
//! Each slot is owned by whoever its state says, and only the owner touches its bytes:
//!
//! ```text
//! FREE --client claims--> CLAIMED --client writes, publishes--> PENDING
//! PENDING --server takes--> WORKING --server writes the reply--> DONE --client reads--> FREE
//! ```
//!
//! A client that gives up (query cancelled, error, its process exiting) takes a PENDING or
//! DONE slot back to FREE, or marks a WORKING one ABANDONED so that the server frees it when it
//! is done. A client whose server died (no server, or a new one with another epoch than the one
//! working on the slot) takes the slot back and embeds the text itself: nothing waits on a
//! process that is gone.
//!
//! Every slot also names its owner: the client's pid and the generation it drew from the
//! mailbox when it first used it. The state and the generation share one atomic word, so a
//! slot's owner cannot change between a check and the state change that acts on it. A client
//! that dies without giving its slot up (a FATAL exit that skipped its clean-up, or whatever
//! the extension's exit callback missed) leaves an *orphan*: the server and every submitter
//! that finds the mailbox full reclaim the slots whose owner's pid is no longer alive
//! ([`Mailbox::reclaim_orphans`]), and a new client reclaims those of an earlier process with
//! its own pid ([`Mailbox::client`]). A server that starts frees what its predecessor
//! abandoned.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::message::{Reply, Request};

/// How a process is woken: the address of its PostgreSQL latch, opaque here.
pub type Waker = usize;

const MAGIC: u64 = u64::from_le_bytes(*b"SEMMBOX2");

const FREE: u32 = 0;
const CLAIMED: u32 = 1;
const PENDING: u32 = 2;
const WORKING: u32 = 3;
const DONE: u32 = 4;
const ABANDONED: u32 = 5;

/// A slot's state word: the owner's generation in the high half, the state in the low half.
/// FREE is always the word 0 (no owner).
fn word(generation: u32, state: u32) -> u64 {
    ((generation as u64) << 32) | state as u64
}
fn state_of(word: u64) -> u32 {
    word as u32
}
fn generation_of(word: u64) -> u32 {
    (word >> 32) as u32
}

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
    /// The last client generation drawn.
    generations: AtomicU32,
}

#[repr(C)]
struct SlotHeader {
    /// [`word`]: the owner's generation and the state.
    word: AtomicU64,
    /// The epoch of the server that took the slot (set before WORKING is published).
    epoch: AtomicU32,
    len: AtomicU32,
    /// The owner's pid, written before PENDING is published.
    owner_pid: AtomicU32,
    _pad: u32,
    /// The owner's waker, written before PENDING is published.
    owner_waker: AtomicUsize,
}

const HEADER_BYTES: usize = 64;
const SLOT_HEADER_BYTES: usize = 32;
const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<SlotHeader>() <= SLOT_HEADER_BYTES);

/// A process that submits requests: its pid, the generation it drew (which tells it from an
/// earlier process that had the same pid) and how to wake it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub pid: u32,
    pub generation: u32,
    pub waker: Waker,
}

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

    /// Announces a server; returns its epoch. Slots its predecessor abandoned (their clients
    /// gave up while it worked, and it died before freeing them) are freed.
    pub fn server_started(&self, pid: u32, waker: Waker, settings: u64) -> u32 {
        let h = self.header();
        let epoch = h.epoch.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        h.server_waker.store(waker, Ordering::Relaxed);
        h.settings.store(settings, Ordering::Relaxed);
        h.server_pid.store(pid, Ordering::Release);
        for slot in 0..self.slots {
            let s = self.slot(slot);
            let w = s.word.load(Ordering::Acquire);
            if state_of(w) == ABANDONED && s.epoch.load(Ordering::Acquire) != epoch {
                let _ = s
                    .word
                    .compare_exchange(w, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
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
            let w = s.word.load(Ordering::Acquire);
            if state_of(w) != PENDING {
                continue;
            }
            // The epoch goes first: a client that sees WORKING must see who is working.
            s.epoch.store(epoch, Ordering::Release);
            if s.word
                .compare_exchange(
                    w,
                    word(generation_of(w), WORKING),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
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
        // Read before DONE is published: from then on the slot may pass to another client.
        let waker = s.owner_waker.load(Ordering::Acquire);
        loop {
            let w = s.word.load(Ordering::Acquire);
            let (next, wake) = match state_of(w) {
                WORKING => (word(generation_of(w), DONE), true),
                // The client is gone: the slot is ours to free.
                ABANDONED => (0, false),
                // Reclaimed meanwhile (its owner died): nothing to do.
                _ => return None,
            };
            if s.word
                .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return wake.then_some(waker);
            }
        }
    }

    // ---- slot ownership ----

    /// Gives up the slot whose word is `w`, as its owner would: CLAIMED, PENDING and DONE
    /// become FREE; WORKING becomes ABANDONED for the live server to free when it is done, or
    /// FREE when the server working on it is gone. False when the word changed meanwhile.
    fn give_up(&self, slot: usize, w: u64) -> bool {
        let s = self.slot(slot);
        let next = match state_of(w) {
            CLAIMED | PENDING | DONE => 0,
            WORKING => {
                let worker = s.epoch.load(Ordering::Acquire);
                if self.server().is_some_and(|info| info.epoch == worker) {
                    word(generation_of(w), ABANDONED)
                } else {
                    0
                }
            }
            _ => return true,
        };
        s.word
            .compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives up every slot whose owner matches: `generation` exactly, or, with `other_than`,
    /// any generation but that one.
    fn give_up_owned_by(&self, pid: u32, generation: u32, other_than: bool) -> usize {
        let mut freed = 0;
        for slot in 0..self.slots {
            let s = self.slot(slot);
            loop {
                let w = s.word.load(Ordering::Acquire);
                // CLAIMED slots are skipped by pid (it is not written yet), so only a matching
                // generation can release one.
                let owned = match state_of(w) {
                    FREE | ABANDONED => false,
                    CLAIMED => !other_than && generation_of(w) == generation,
                    _ => {
                        s.owner_pid.load(Ordering::Acquire) == pid
                            && (generation_of(w) == generation) != other_than
                    }
                };
                if !owned {
                    break;
                }
                if self.give_up(slot, w) {
                    freed += 1;
                    break;
                }
            }
        }
        freed
    }

    // ---- the client's side ----

    /// Registers the process `pid` as a client: it draws a generation no earlier process had,
    /// and the slots an earlier process with the same pid left behind (it is certainly gone)
    /// are reclaimed.
    pub fn client(&self, pid: u32, waker: Waker) -> Client {
        let generation = loop {
            let g = self
                .header()
                .generations
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1);
            if g != 0 {
                break g;
            }
        };
        self.give_up_owned_by(pid, generation, true);
        Client {
            pid,
            generation,
            waker,
        }
    }

    /// Gives up every slot of `client` (its process is exiting). Returns how many.
    pub fn client_exited(&self, client: &Client) -> usize {
        self.give_up_owned_by(client.pid, client.generation, false)
    }

    /// Reclaims the slots whose owner is no longer alive, as `alive(pid)` tells; returns how
    /// many. Slots being claimed (their owner not written yet) are left alone.
    pub fn reclaim_orphans(&self, alive: impl Fn(u32) -> bool) -> usize {
        let mut reclaimed = 0;
        for slot in 0..self.slots {
            let s = self.slot(slot);
            let w = s.word.load(Ordering::Acquire);
            if !matches!(state_of(w), PENDING | WORKING | DONE) {
                continue;
            }
            let pid = s.owner_pid.load(Ordering::Acquire);
            // The pid belongs to the generation in `w` only while the word is unchanged.
            if s.word.load(Ordering::Acquire) != w || alive(pid) {
                continue;
            }
            if self.give_up(slot, w) {
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// Slots in use (not FREE), for the extension's diagnostics and the tests.
    pub fn slots_in_use(&self) -> usize {
        (0..self.slots)
            .filter(|&i| self.slot(i).word.load(Ordering::Acquire) != 0)
            .count()
    }

    /// Hands `request` to the server for `client`. The caller then wakes
    /// [`ServerInfo::waker`] and polls the ticket; dropping the ticket gives the slot up at
    /// any point.
    pub fn submit(&self, request: &Request, client: &Client) -> Result<Ticket<'_>, SubmitError> {
        if self.server().is_none() {
            return Err(SubmitError::NoServer);
        }
        if request.encoded_len() > self.slot_bytes {
            return Err(SubmitError::TooLarge);
        }
        let claimed = word(client.generation, CLAIMED);
        let start = self.header().next.fetch_add(1, Ordering::Relaxed) as usize;
        let slot = (0..self.slots)
            .map(|i| (start + i) % self.slots)
            .find(|&i| {
                self.slot(i)
                    .word
                    .compare_exchange(0, claimed, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
            .ok_or(SubmitError::Busy)?;
        let s = self.slot(slot);
        let len = request
            .encode(self.payload(slot))
            .expect("checked to fit above");
        s.len.store(len as u32, Ordering::Relaxed);
        s.owner_pid.store(client.pid, Ordering::Relaxed);
        s.owner_waker.store(client.waker, Ordering::Relaxed);
        // A CAS, not a store: the slot may have been given up by client_exited meanwhile.
        if s.word
            .compare_exchange(
                claimed,
                word(client.generation, PENDING),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return Err(SubmitError::Busy);
        }
        Ok(Ticket {
            mailbox: self,
            slot,
            generation: client.generation,
            finished: false,
        })
    }
}

/// A client's claim on one slot, from submit to reply. Dropping it gives the slot up.
pub struct Ticket<'a> {
    mailbox: &'a Mailbox,
    slot: usize,
    generation: u32,
    /// The slot is no longer ours.
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
        let w = s.word.load(Ordering::Acquire);
        if generation_of(w) != self.generation {
            // Reclaimed as an orphan: whoever did so believed this process gone.
            self.finished = true;
            return Poll::ServerGone;
        }
        let server = m.server();
        match state_of(w) {
            DONE => {
                let len = s.len.load(Ordering::Acquire) as usize;
                let reply = Reply::decode(&m.payload(self.slot)[..len]);
                self.release(w);
                reply.map_or(Poll::ServerGone, Poll::Ready)
            }
            WORKING => {
                let worker = s.epoch.load(Ordering::Acquire);
                let alive = server.is_some_and(|info| info.epoch == worker);
                if !alive && self.release(w) {
                    Poll::ServerGone
                } else {
                    Poll::Waiting
                }
            }
            PENDING => {
                if server.is_none() && self.release(w) {
                    Poll::ServerGone
                } else {
                    Poll::Waiting
                }
            }
            _ => Poll::Waiting,
        }
    }

    /// Frees the slot if its word is still `w`.
    fn release(&mut self, w: u64) -> bool {
        let freed = self
            .mailbox
            .slot(self.slot)
            .word
            .compare_exchange(w, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.finished |= freed;
        freed
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let s = self.mailbox.slot(self.slot);
        loop {
            let w = s.word.load(Ordering::Acquire);
            if generation_of(w) != self.generation || self.mailbox.give_up(self.slot, w) {
                return;
            }
        }
    }
}
