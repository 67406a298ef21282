//! Retrieval evaluation without a database: reading BEIR data sets and scoring rankings with
//! trec_eval's definitions, so the figures compare with published BEIR/MTEB numbers.

pub mod beir;
pub mod metrics;

pub use beir::{read_corpus, read_qrels, read_queries, BeirDataset, Document};
pub use metrics::{evaluate, ndcg_at, recall_at, reciprocal_rank_at, Metrics, Qrels};
