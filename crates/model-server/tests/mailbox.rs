//! The slot protocol under real concurrency: client threads and a server thread sharing one
//! mailbox, plus each way a client or the server can go away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use semantic_encoder::TextKind;
use std::collections::HashSet;
use std::sync::Mutex;

use semantic_model_server::{Client, ErrorReply, Mailbox, Poll, Reply, Request, SubmitError};

/// Memory for a mailbox, 8-byte aligned.
struct Region(Vec<u64>);

impl Region {
    fn new(slots: usize, slot_bytes: usize) -> (Region, Mailbox) {
        let mut region = Region(vec![0u64; Mailbox::size(slots, slot_bytes).div_ceil(8)]);
        let mailbox = unsafe { Mailbox::init(region.0.as_mut_ptr() as *mut u8, slots, slot_bytes) };
        (region, mailbox)
    }
}

/// A client of these tests, registered by hand: pid 1, woken through `waker`.
fn client(waker: usize) -> Client {
    Client {
        pid: 1,
        generation: 1,
        waker,
    }
}

fn request(text: &str) -> Request {
    Request {
        model_dir: "/m".into(),
        kind: TextKind::Query,
        text: text.into(),
    }
}

/// The "model" of these tests: a text's vector is its length and its first byte.
fn answer(request: &Option<Request>) -> Reply {
    match request {
        Some(r) => Reply::Vector {
            fingerprint: "fp".into(),
            vector: vec![
                r.text.len() as f32,
                r.text.bytes().next().unwrap_or(0) as f32,
            ],
        },
        None => Reply::Error(ErrorReply {
            sqlstate: 1,
            message: "malformed".into(),
            hint: None,
        }),
    }
}

fn wait_for(ticket: &mut semantic_model_server::Ticket<'_>) -> Poll {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ticket.poll() {
            Poll::Waiting if Instant::now() < deadline => std::thread::yield_now(),
            other => return other,
        }
    }
}

#[test]
fn many_clients_one_server() {
    let (_region, mailbox) = Region::new(4, 256);
    let mailbox = Arc::new(mailbox);
    let epoch = mailbox.server_started(7, 0, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (mailbox, stop) = (mailbox.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(Ordering::Acquire) {
                for (slot, req) in mailbox.take_pending(epoch) {
                    mailbox.complete(slot, &answer(&req));
                    served += 1;
                }
                std::thread::yield_now();
            }
            served
        })
    };
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let text = format!("{}{}", (b'a' + c as u8) as char, "x".repeat(i % 50));
                    let mut ticket = loop {
                        match mailbox.submit(&request(&text), &client(c)) {
                            Ok(t) => break t,
                            Err(SubmitError::Busy) => std::thread::yield_now(),
                            Err(e) => panic!("{e:?}"),
                        }
                    };
                    let Poll::Ready(Reply::Vector { vector, .. }) = wait_for(&mut ticket) else {
                        panic!("no reply")
                    };
                    assert_eq!(vector, vec![text.len() as f32, text.as_bytes()[0] as f32]);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    assert_eq!(server.join().unwrap(), 8 * 300);
    // Every slot is free again: four claims succeed at once.
    let tickets: Vec<_> = (0..4)
        .map(|_| mailbox.submit(&request("x"), &client(0)).unwrap())
        .collect();
    assert_eq!(
        mailbox.submit(&request("x"), &client(0)).err(),
        Some(SubmitError::Busy)
    );
    drop(tickets);
    assert!(mailbox.submit(&request("x"), &client(0)).is_ok());
}

#[test]
fn no_server_and_too_large_are_refused() {
    let (_region, mailbox) = Region::new(2, 64);
    assert_eq!(
        mailbox.submit(&request("x"), &client(0)).err(),
        Some(SubmitError::NoServer)
    );
    mailbox.server_started(1, 0, 0);
    assert_eq!(
        mailbox.submit(&request(&"x".repeat(100)), &client(0)).err(),
        Some(SubmitError::TooLarge)
    );
}

#[test]
fn a_client_that_gives_up_frees_its_slot_before_or_during_work() {
    let (_region, mailbox) = Region::new(1, 64);
    let epoch = mailbox.server_started(1, 0, 0);
    // Before the server took it: the slot is simply free again.
    drop(mailbox.submit(&request("a"), &client(0)).unwrap());
    assert!(mailbox.take_pending(epoch).is_empty());
    // While the server works: the server frees it when done, and wakes no one.
    let ticket = mailbox.submit(&request("b"), &client(5)).unwrap();
    let taken = mailbox.take_pending(epoch);
    assert_eq!(taken.len(), 1);
    drop(ticket);
    assert_eq!(
        mailbox.submit(&request("c"), &client(0)).err(),
        Some(SubmitError::Busy)
    );
    assert_eq!(mailbox.complete(taken[0].0, &answer(&taken[0].1)), None);
    let mut ticket = mailbox.submit(&request("c"), &client(6)).unwrap();
    let taken = mailbox.take_pending(epoch);
    assert_eq!(mailbox.complete(taken[0].0, &answer(&taken[0].1)), Some(6));
    assert!(matches!(ticket.poll(), Poll::Ready(_)));
}

#[test]
fn a_dead_server_gives_the_work_back() {
    let (_region, mailbox) = Region::new(2, 64);
    let first = mailbox.server_started(10, 0, 0);
    // A request the dead server had taken: given back once it is withdrawn...
    let mut working = mailbox.submit(&request("a"), &client(0)).unwrap();
    assert_eq!(mailbox.take_pending(first).len(), 1);
    assert_eq!(working.poll(), Poll::Waiting);
    mailbox.server_stopped(10);
    assert_eq!(working.poll(), Poll::ServerGone);
    drop(working);
    // ...or once another server has started in its place (it died without withdrawing).
    let restarted = mailbox.server_started(11, 0, 0);
    let mut pending = mailbox.submit(&request("b"), &client(0)).unwrap();
    assert_eq!(mailbox.take_pending(restarted).len(), 1);
    mailbox.server_started(12, 0, 0);
    assert_eq!(pending.poll(), Poll::ServerGone);
    // A pending request with no server at all is given back too; the slots are all free.
    mailbox.server_stopped(12);
    assert_eq!(mailbox.server(), None);
    mailbox.server_started(13, 0, 0);
    let mut queued = mailbox.submit(&request("c"), &client(0)).unwrap();
    mailbox.server_stopped(13);
    assert_eq!(queued.poll(), Poll::ServerGone);
    drop((pending, queued));
    mailbox.server_started(14, 0, 0);
    let _a = mailbox.submit(&request("d"), &client(0)).unwrap();
    let _b = mailbox.submit(&request("e"), &client(0)).unwrap();
}

#[test]
fn a_stopped_server_does_not_withdraw_its_successor() {
    let (_region, mailbox) = Region::new(1, 64);
    mailbox.server_started(20, 3, 9);
    mailbox.server_started(21, 4, 9);
    mailbox.server_stopped(20);
    let info = mailbox.server().unwrap();
    assert_eq!((info.pid, info.waker, info.settings), (21, 4, 9));
    mailbox.server_settings_changed(10);
    assert_eq!(mailbox.server().unwrap().settings, 10);
}

#[test]
fn a_reply_too_large_for_a_slot_becomes_an_error() {
    let (_region, mailbox) = Region::new(1, 64);
    let epoch = mailbox.server_started(1, 0, 0);
    let mut ticket = mailbox.submit(&request("a"), &client(0)).unwrap();
    let (slot, _) = mailbox.take_pending(epoch).pop().unwrap();
    let huge = Reply::Vector {
        fingerprint: "fp".into(),
        vector: vec![0.0; 100],
    };
    mailbox.complete(slot, &huge);
    let Poll::Ready(Reply::Error(e)) = ticket.poll() else {
        panic!("expected an error reply")
    };
    assert_eq!(e.sqlstate, ErrorReply::INTERNAL_ERROR);
}

#[test]
fn attach_sees_the_same_mailbox() {
    let (mut region, mailbox) = Region::new(3, 100);
    let other = unsafe { Mailbox::attach(region.0.as_mut_ptr() as *mut u8) };
    assert_eq!(other.slot_bytes(), 104);
    mailbox.server_started(5, 0, 0);
    assert_eq!(other.server().unwrap().pid, 5);
}

#[test]
fn the_slots_of_dead_clients_are_reclaimed_in_every_state() {
    let (_region, mailbox) = Region::new(3, 64);
    let epoch = mailbox.server_started(1, 0, 0);
    let (a, b, c) = (
        mailbox.client(100, 1),
        mailbox.client(101, 2),
        mailbox.client(102, 3),
    );
    // Each dies without giving its slot up (a FATAL exit skips destructors): A while the server
    // works on its request, B before the server took it, C after its reply was written.
    std::mem::forget(mailbox.submit(&request("a"), &a).unwrap());
    let working = mailbox.take_pending(epoch);
    std::mem::forget(mailbox.submit(&request("c"), &c).unwrap());
    let taken = mailbox.take_pending(epoch);
    assert_eq!(mailbox.complete(taken[0].0, &answer(&taken[0].1)), Some(3));
    std::mem::forget(mailbox.submit(&request("b"), &b).unwrap());
    let d = mailbox.client(103, 4);
    assert_eq!(
        mailbox.submit(&request("d"), &d).err(),
        Some(SubmitError::Busy)
    );
    // Live owners keep their slots; dead ones lose them.
    assert_eq!(mailbox.reclaim_orphans(|_| true), 0);
    assert_eq!(mailbox.reclaim_orphans(|pid| pid == 103), 3);
    // A's slot is ABANDONED until the server is done with it, then free; nobody is woken.
    assert_eq!(mailbox.slots_in_use(), 1);
    let (a_slot, a_request) = &working[0];
    let mut ticket = mailbox.submit(&request("d"), &d).unwrap();
    assert_eq!(mailbox.complete(*a_slot, &answer(a_request)), None);
    let taken = mailbox.take_pending(epoch);
    assert_eq!(mailbox.complete(taken[0].0, &answer(&taken[0].1)), Some(4));
    assert!(matches!(ticket.poll(), Poll::Ready(Reply::Vector { .. })));
    assert_eq!(mailbox.slots_in_use(), 0);
}

#[test]
fn an_exiting_client_or_its_pid_successor_frees_its_slots() {
    let (_region, mailbox) = Region::new(2, 64);
    let epoch = mailbox.server_started(1, 0, 0);
    // The exit callback: the client gives up whatever it held, in any state.
    let a = mailbox.client(200, 1);
    std::mem::forget(mailbox.submit(&request("a"), &a).unwrap());
    let working = mailbox.take_pending(epoch);
    std::mem::forget(mailbox.submit(&request("b"), &a).unwrap());
    assert_eq!(mailbox.client_exited(&a), 2);
    assert_eq!(
        mailbox.slots_in_use(),
        1,
        "the worked-on slot waits for the server"
    );
    assert_eq!(mailbox.complete(working[0].0, &answer(&working[0].1)), None);
    assert_eq!(mailbox.slots_in_use(), 0);
    // A new process with the same pid: what an earlier one left is certainly an orphan.
    let b = mailbox.client(300, 2);
    std::mem::forget(mailbox.submit(&request("c"), &b).unwrap());
    let successor = mailbox.client(300, 3);
    assert_ne!(b.generation, successor.generation);
    assert_eq!(mailbox.slots_in_use(), 0);
    // The successor's own slots are not touched by its predecessor's exit.
    let mut ticket = mailbox.submit(&request("d"), &successor).unwrap();
    assert_eq!(mailbox.client_exited(&b), 0);
    let taken = mailbox.take_pending(epoch);
    assert_eq!(mailbox.complete(taken[0].0, &answer(&taken[0].1)), Some(3));
    assert!(matches!(ticket.poll(), Poll::Ready(Reply::Vector { .. })));
}

#[test]
fn a_new_server_frees_what_its_predecessor_abandoned() {
    let (_region, mailbox) = Region::new(1, 64);
    let first = mailbox.server_started(1, 0, 0);
    let a = mailbox.client(10, 1);
    let ticket = mailbox.submit(&request("a"), &a).unwrap();
    assert_eq!(mailbox.take_pending(first).len(), 1);
    drop(ticket); // ABANDONED: the first server would free it, but it dies first
    assert_eq!(mailbox.slots_in_use(), 1);
    mailbox.server_started(2, 0, 0);
    assert_eq!(mailbox.slots_in_use(), 0);
    // An orphan WORKING slot of a dead server is freed at once, not left ABANDONED.
    let second = mailbox.server().unwrap().epoch;
    std::mem::forget(mailbox.submit(&request("b"), &a).unwrap());
    mailbox.take_pending(second);
    let _third = mailbox.server_started(3, 0, 0);
    assert_eq!(mailbox.reclaim_orphans(|_| false), 1);
    assert_eq!(mailbox.slots_in_use(), 0);
}

/// Clients that die at random points while the server answers and reclaims: every live client
/// gets its own answer, and once all are gone no slot stays taken.
#[test]
fn clients_dying_under_load_never_leak_a_slot_or_cross_replies() {
    let (_region, mailbox) = Region::new(4, 256);
    let mailbox = Arc::new(mailbox);
    let epoch = mailbox.server_started(7, 0, 0);
    let dead: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (mailbox, stop, dead) = (mailbox.clone(), stop.clone(), dead.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for (slot, req) in mailbox.take_pending(epoch) {
                    mailbox.complete(slot, &answer(&req));
                }
                mailbox.reclaim_orphans(|pid| !dead.lock().unwrap().contains(&pid));
                std::thread::yield_now();
            }
        })
    };
    let clients: Vec<_> = (0..6u32)
        .map(|c| {
            let (mailbox, dead) = (mailbox.clone(), dead.clone());
            std::thread::spawn(move || {
                let mut pid = 1000 + c * 1000;
                let mut me = mailbox.client(pid, c as usize);
                for i in 0..400 {
                    let text = format!("{}{}", (b'a' + c as u8) as char, "y".repeat(i % 40));
                    let mut ticket = loop {
                        match mailbox.submit(&request(&text), &me) {
                            Ok(t) => break t,
                            Err(SubmitError::Busy) => {
                                mailbox.reclaim_orphans(|p| !dead.lock().unwrap().contains(&p));
                                std::thread::yield_now()
                            }
                            Err(e) => panic!("{e:?}"),
                        }
                    };
                    if i % 7 == 3 {
                        // This process dies holding the slot; a new one takes its place.
                        if i % 2 == 0 {
                            std::thread::yield_now();
                        }
                        std::mem::forget(ticket);
                        dead.lock().unwrap().insert(pid);
                        pid += 1;
                        me = mailbox.client(pid, c as usize);
                        continue;
                    }
                    let Poll::Ready(Reply::Vector { vector, .. }) = wait_for(&mut ticket) else {
                        panic!("no reply")
                    };
                    assert_eq!(vector, vec![text.len() as f32, text.as_bytes()[0] as f32]);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while mailbox.slots_in_use() > 0 {
        assert!(Instant::now() < deadline, "slots leaked");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Release);
    server.join().unwrap();
}
