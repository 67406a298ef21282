//! The model server's Postgres-free core. Backends put texts into slots of a [`Mailbox`] that
//! lives in the server's shared memory; one background process takes every pending slot,
//! embeds the texts in batches with the one copy of each model it holds, and writes the
//! vectors back. The extension supplies the shared memory and the wake-ups (PostgreSQL
//! latches, here opaque `usize` tokens); everything else is here, tested with threads.

#![deny(unsafe_op_in_unsafe_fn)]

mod mailbox;
mod message;

pub use mailbox::{Client, Mailbox, Poll, ServerInfo, SubmitError, Ticket, Waker};
pub use message::{ErrorReply, Reply, Request};
