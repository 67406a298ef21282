//! The lexical index's Postgres-free core. A snapshot is one byte string (as the faiss
//! index's is): the row ids and lengths of its documents, a sorted term dictionary, and per
//! term a posting list compressed in blocks of [`BLOCK`] documents, each block headed by its
//! last document and the bounds (largest term frequency, shortest document) that cap any score
//! inside it. Top-k uses MaxScore with those block bounds, so that its cost follows the
//! postings of the query's rarest terms rather than the corpus. Text analysis (stemming,
//! stop words) is the caller's: the extension takes lexemes from a PostgreSQL text search
//! configuration.

#![deny(unsafe_op_in_unsafe_fn)]

mod bm25;
mod postings;
pub mod segments;
mod snapshot;
pub mod tail;
mod topk;
pub mod tsvector;

pub use bm25::{Bm25, CorpusStats};
pub use postings::BLOCK;
pub use segments::Segments;
pub use snapshot::{Snapshot, SnapshotBuilder, SnapshotError, TermInfo};
pub use tail::{AnalysedRow, Tail, TailHit};
pub use topk::{Hit, QueryTerm, TopK};
