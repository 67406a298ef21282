//! The `semantic.*` settings.

use std::ffi::CString;
use std::path::PathBuf;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use semantic_encoder::ExecutionProvider;

pub static MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static ONNXRUNTIME_LIBRARY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static DEFAULT_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"all-MiniLM-L6-v2"));
pub static DEFAULT_INDEX: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static BM25_STATISTICS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static MODEL_SERVER: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static SCAN_CANDIDATES: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static MAX_SCAN_TUPLES: GucSetting<i32> = GucSetting::<i32>::new(20_000);
pub static HNSW_EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static IVF_NPROBE: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static MAX_CACHED_MODELS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static MAX_CACHED_INDEXES: GucSetting<i32> = GucSetting::<i32>::new(4);
pub static COMPACT_THRESHOLD: GucSetting<f64> = GucSetting::<f64>::new(0.2);
pub static MAX_APPENDED: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static EXECUTION_PROVIDER: GucSetting<ProviderSetting> =
    GucSetting::<ProviderSetting>::new(ProviderSetting::Cpu);

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProviderSetting {
    #[name = c"cpu"]
    Cpu,
    #[name = c"cuda"]
    Cuda,
}

pub fn register() {
    GucRegistry::define_string_guc(
        c"semantic.model_dir",
        c"Directory holding one folder per installed model (superuser only).",
        c"Each folder holds manifest.json, tokenizer.json and model.onnx, as written by semantic-tools import-model.",
        &MODEL_DIR,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"semantic.onnxruntime_library",
        c"Absolute path of the ONNX Runtime shared library libonnxruntime.so (superuser only).",
        c"Loaded once per backend, on first use; a change takes effect in new sessions.",
        &ONNXRUNTIME_LIBRARY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"semantic.default_model",
        c"Model used by embed(text) and by new indexes that name none.",
        c"",
        &DEFAULT_MODEL,
        GucContext::Userset,
        GucFlags::default(),
    );
    // Read by semantic_search (sql/semantic_search.sql) through current_setting.
    GucRegistry::define_string_guc(
        c"semantic.default_index",
        c"Index semantic_search uses when the call names none.",
        c"A faiss or bm25 index; a search of the other kind uses the index of its kind on the same column. Set it per database or role with ALTER DATABASE or ALTER ROLE ... SET.",
        &DEFAULT_INDEX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.threads",
        c"ONNX Runtime threads for inference (of the model server, or of a backend that embeds itself).",
        c"Models already loaded in a session are reloaded when this changes.",
        &THREADS,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.max_appended",
        c"Rows appended to a faiss (Flat, HNSW) or bm25 index since its snapshot past which they are folded into it, by a background worker the inserting backend starts.",
        c"Searches score the appended rows exactly; other faiss factories fold past a tenth of the snapshot when that is more.",
        &MAX_APPENDED,
        1,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"semantic.compact_threshold",
        c"Share of an index's vectors that belong to dead rows past which VACUUM compacts it (writes it again without them).",
        c"Below it, VACUUM only marks dead rows, which searches skip.",
        &COMPACT_THRESHOLD,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    // Set by semantic_search on a distributed table (sql/semantic_search.sql), read by bm25 scans.
    GucRegistry::define_string_guc(
        c"semantic.bm25_statistics",
        c"Corpus statistics bm25 index scans score with in place of their index's own.",
        c"JSON: documents, total_length and df (each query term's document frequency), as semantic_lexical_statistics gives and semantic_search sums over a Citus table's shards, so that every shard scores as one server would. Empty: each index's own.",
        &BM25_STATISTICS,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.scan_candidates",
        c"Rows a faiss index scan asks FAISS for at first; it searches 4x deeper each time the query needs more.",
        c"",
        &SCAN_CANDIDATES,
        1,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.max_scan_tuples",
        c"Most candidates a faiss index scan asks FAISS for while it searches deeper (as pgvector's hnsw.max_scan_tuples).",
        c"A query whose filters reject more rows than this may return fewer rows than its LIMIT.",
        &MAX_SCAN_TUPLES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.hnsw_ef_search",
        c"HNSW efSearch of faiss index scans (at least the number of candidates asked).",
        c"",
        &HNSW_EF_SEARCH,
        1,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.ivf_nprobe",
        c"IVF lists probed by faiss index scans.",
        c"",
        &IVF_NPROBE,
        1,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.max_cached_models",
        c"Models a backend keeps loaded; the least recently used one is dropped beyond this.",
        c"A loaded all-MiniLM-L6-v2 takes about 100 MB of backend memory.",
        &MAX_CACHED_MODELS,
        1,
        100,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"semantic.max_cached_indexes",
        c"faiss indexes a backend keeps in memory; the least recently used one is dropped beyond this.",
        c"Each cached index holds its vectors (and graph) in backend memory.",
        &MAX_CACHED_INDEXES,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"semantic.execution_provider",
        c"Where inference runs: cpu or cuda.",
        c"cuda needs an ONNX Runtime build with the CUDA execution provider; without it loading a model fails with an error.",
        &EXECUTION_PROVIDER,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Settings that exist only when the library is preloaded (as pg_stat_statements does: a
/// postmaster-level setting cannot be defined later).
pub fn register_preloaded() {
    GucRegistry::define_bool_guc(
        c"semantic.model_server",
        c"Whether a background worker holds each model once for the whole server and embeds the texts of every session.",
        c"Exists with shared_preload_libraries = 'semantic'. Sessions whose semantic.threads, semantic.execution_provider or semantic.onnxruntime_library differ from the server's embed in their own backend.",
        &MODEL_SERVER,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn path_setting(setting: &GucSetting<Option<CString>>) -> Option<PathBuf> {
    setting
        .get()
        .map(|s| PathBuf::from(s.to_string_lossy().into_owned()))
        .filter(|p| !p.as_os_str().is_empty())
}

pub fn model_dir() -> Option<PathBuf> {
    path_setting(&MODEL_DIR)
}

pub fn onnxruntime_library() -> Option<PathBuf> {
    path_setting(&ONNXRUNTIME_LIBRARY)
}

pub fn default_model() -> String {
    DEFAULT_MODEL
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn model_server() -> bool {
    MODEL_SERVER.get()
}

pub fn threads() -> usize {
    THREADS.get().max(1) as usize
}

pub fn execution_provider() -> ExecutionProvider {
    match EXECUTION_PROVIDER.get() {
        ProviderSetting::Cpu => ExecutionProvider::Cpu,
        ProviderSetting::Cuda => ExecutionProvider::Cuda,
    }
}

pub fn max_cached_models() -> usize {
    MAX_CACHED_MODELS.get().max(1) as usize
}

pub fn max_appended() -> u64 {
    MAX_APPENDED.get().max(1) as u64
}

pub fn compact_threshold() -> f64 {
    COMPACT_THRESHOLD.get()
}

pub fn max_cached_indexes() -> usize {
    MAX_CACHED_INDEXES.get().max(1) as usize
}

pub fn scan_candidates() -> usize {
    SCAN_CANDIDATES.get().max(1) as usize
}

/// `semantic.bm25_statistics`, when set (not empty).
pub fn bm25_statistics() -> Option<String> {
    BM25_STATISTICS
        .get()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.trim().is_empty())
}

pub fn max_scan_tuples() -> usize {
    MAX_SCAN_TUPLES.get().max(1) as usize
}

pub fn hnsw_ef_search() -> usize {
    HNSW_EF_SEARCH.get().max(1) as usize
}

pub fn ivf_nprobe() -> usize {
    IVF_NPROBE.get().max(1) as usize
}
