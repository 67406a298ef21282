use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{ExecutionProvider as _, CPU, CUDA};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use crate::batching::plan_batches;
use crate::dense::DenseLayers;
use crate::error::EncoderError;
use crate::manifest::{Manifest, Precision, MODEL_FILE, TOKENIZER_FILE};
use crate::model_cache::{
    copy_settings, model_file_identities, ModelCache, COPY_GRAPH_FILE, COPY_WEIGHTS_FILE,
};
use crate::pooling::pool;
use crate::runtime::{environment, ExecutionProvider};

/// How an [`Encoder`] runs.
#[derive(Clone, Debug)]
pub struct EncoderOptions {
    /// ONNX Runtime intra-op threads (inter-op parallelism stays off: one graph at a time).
    pub threads: usize,
    pub provider: ExecutionProvider,
    /// Texts per inference call.
    pub batch_size: usize,
    /// Recompute the content fingerprint at load (detects files changed after installation).
    pub verify_fingerprint: bool,
    /// A directory this process may write, shared by all the processes that load models (the
    /// extension gives one under the data directory), where loads keep what the next ones can
    /// reuse: see [`Encoder::load`]. Created if missing; `None`, or a directory that cannot be
    /// used, loads every time from the model files alone. What is in it is trusted as the
    /// model, so only the server's own user may be able to write there.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            threads: 1,
            provider: ExecutionProvider::Cpu,
            batch_size: 32,
            verify_fingerprint: true,
            cache_dir: None,
        }
    }
}

/// How [`Encoder::load`] made a model ready: for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadReport {
    pub fingerprint: FingerprintCheck,
    pub graph: GraphSource,
    /// What went wrong with the cache directory, if anything; the load fell back to the model
    /// files for that part and succeeded.
    pub cache_problems: Vec<String>,
}

/// How the files were checked against the manifest fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FingerprintCheck {
    /// Hashed.
    Hashed,
    /// Not hashed: a stamp in the cache directory vouches for them, unchanged since they were.
    Stamped,
    /// Not at all ([`EncoderOptions::verify_fingerprint`] off and no stamp).
    Skipped,
}

/// Where the inference session's graph and weights came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphSource {
    /// model.onnx, optimised into this process's own memory.
    ModelFile,
    /// The optimised copy in the cache directory, its weights mapped from the page cache;
    /// `created` when this load made it.
    OptimizedCopy { created: bool },
}

/// Which side of an asymmetric model a text is on: it selects the manifest's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextKind {
    Query,
    Passage,
}

/// One loaded model version: tokenizer + ONNX Runtime session + pooling settings.
pub struct Encoder {
    manifest: Manifest,
    dir: PathBuf,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, for long-text chunks; made on first use, since
    /// only bulk loads chunk and the copy costs a query backend time and memory.
    full_tokenizer: OnceLock<Tokenizer>,
    session: Session,
    /// Run options for every batch but the last of a call, and for the last one.
    keep_arena: RunOptions,
    shrink_arena: RunOptions,
    takes_token_type_ids: bool,
    /// The graph output holding the vectors (the manifest's `output`, else the first).
    output_index: usize,
    /// The id batches are padded with: the tokenizer's own (RoBERTa-style models derive
    /// position ids from it).
    pad_id: i64,
    dense: DenseLayers,
    batch_size: usize,
    load_report: LoadReport,
}

impl Encoder {
    /// Loads the model directory `dir` (manifest.json, tokenizer.json, model.onnx, and
    /// dense.safetensors when the manifest has Dense layers).
    /// [`crate::init_runtime`] must have succeeded first.
    ///
    /// With [`EncoderOptions::cache_dir`], the first load of a model version hashes its files
    /// and leaves a stamp, and (on the CPU) saves ONNX Runtime's optimised graph there; later
    /// loads of unchanged files skip the hashing and open that copy, whose weights ONNX Runtime
    /// maps from the file instead of copying: fast, and shared by all processes through the page
    /// cache. Problems with the cache directory never fail a load (see
    /// [`LoadReport::cache_problems`]); changed model files are still refused.
    pub fn load(dir: &Path, options: &EncoderOptions) -> Result<Self, EncoderError> {
        // The threads the load starts must not take the process's signals (semantic-signals).
        semantic_signals::with_signals_blocked(|| Self::load_blocked(dir, options))
    }

    fn load_blocked(dir: &Path, options: &EncoderOptions) -> Result<Self, EncoderError> {
        let environment = environment().expect("init_runtime must succeed before Encoder::load");
        let manifest = Manifest::load(dir)?;
        let mut cache_problems = Vec::new();
        let cache = options.cache_dir.as_deref().and_then(|cache_dir| {
            ModelCache::open(cache_dir, &manifest.fingerprint)
                .map_err(|problem| cache_problems.push(problem))
                .ok()
        });
        let fingerprint = check_fingerprint(
            dir,
            &manifest,
            options.verify_fingerprint,
            cache.as_ref(),
            &mut cache_problems,
        )?;
        // The tokenizer's JSON parse (about 20 ms) overlaps the session's creation. The thread
        // only parses; an early return below leaves it to finish on its own.
        let tokenizer_path = dir.join(TOKENIZER_FILE);
        let max_len = manifest.max_seq_length;
        let tokenizer = std::thread::spawn(move || load_tokenizer(&tokenizer_path, max_len));

        let dense = DenseLayers::load(dir, &manifest.dense)?;
        let model_path = dir.join(MODEL_FILE);
        if !model_path.is_file() {
            return Err(EncoderError::MissingFile {
                path: model_path.clone(),
                reason: "no such file".into(),
            });
        }
        let sessions = Sessions {
            environment,
            options,
            model_path: &model_path,
        };
        // A copy is named by the fingerprint, so it may stand in for model.onnx only once the
        // files are known to match it. It holds CPU kernels' fused operators and pre-packed
        // weights, so CUDA sessions keep optimising model.onnx.
        let copy_cache = cache.filter(|_| {
            fingerprint != FingerprintCheck::Skipped && options.provider == ExecutionProvider::Cpu
        });
        let (session, graph) = match copy_cache {
            Some(cache) => sessions.through_cache(&cache, &mut cache_problems)?,
            None => (sessions.open_model_file()?, GraphSource::ModelFile),
        };
        let invalid = |e: ort::Error| EncoderError::InvalidModel {
            path: model_path.clone(),
            reason: e.to_string(),
        };
        let mut shrink_arena = RunOptions::new().map_err(invalid)?;
        shrink_arena
            .set("memory.enable_memory_arena_shrinkage", "cpu:0")
            .map_err(invalid)?;
        let keep_arena = RunOptions::new().map_err(invalid)?;

        let input_names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !input_names.contains(&required) {
                return Err(EncoderError::InvalidModel {
                    path: model_path.clone(),
                    reason: format!(
                        "the graph has no input named {required} (inputs: {input_names:?})"
                    ),
                });
            }
        }
        let takes_token_type_ids = input_names.contains(&"token_type_ids");
        let output_names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let output_index = match &manifest.output {
            Some(name) => output_names.iter().position(|o| o == name),
            None => (!output_names.is_empty()).then_some(0),
        }
        .ok_or_else(|| EncoderError::InvalidModel {
            path: model_path.clone(),
            reason: format!(
                "the graph has no output {} (outputs: {output_names:?})",
                manifest.output.as_deref().unwrap_or("at all")
            ),
        })?;
        let (tokenizer, pad_id) = tokenizer
            .join()
            .map_err(|_| EncoderError::Tokenizer("loading tokenizer.json panicked".into()))??;
        // Dynamic quantisation scales each run's inputs as a whole, so an int8 model runs one
        // text at a time: a text's vector must not depend on the texts encoded with it (and
        // sorted batches gain little over single texts, which need no padding).
        let batch_size = match manifest.precision {
            Precision::Int8 => 1,
            Precision::Fp32 => options.batch_size.max(1),
        };
        Ok(Encoder {
            manifest,
            dir: dir.to_path_buf(),
            tokenizer,
            full_tokenizer: OnceLock::new(),
            session,
            keep_arena,
            shrink_arena,
            takes_token_type_ids,
            output_index,
            pad_id: i64::from(pad_id),
            dense,
            batch_size,
            load_report: LoadReport {
                fingerprint,
                graph,
                cache_problems,
            },
        })
    }

    /// How this encoder was loaded.
    pub fn load_report(&self) -> &LoadReport {
        &self.load_report
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Texts a run of the graph takes at most (1 for int8 models, see [`Encoder::load`]).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Token ids of `text` as the model sees it (prefix added, truncated to the model's limit).
    pub fn tokenize(&self, text: &str, kind: TextKind) -> Result<Vec<u32>, EncoderError> {
        let texts = [text];
        Ok(self.tokenize_all(&texts, kind)?.pop().unwrap_or_default())
    }

    /// Token windows covering all of `text`: windows of the model's length overlapping by an
    /// eighth of it, each framed by the model's special tokens. A text that fits gives one
    /// window, equal to [`Encoder::tokenize`]'s. (The tokenizers crate's own overflow windows
    /// stop after the first overflow, so the windows are cut here.)
    pub fn tokenize_chunks(
        &self,
        text: &str,
        kind: TextKind,
    ) -> Result<Vec<Vec<u32>>, EncoderError> {
        let full_tokenizer = self.full_tokenizer.get_or_init(|| {
            let mut full = self.tokenizer.clone();
            full.with_truncation(None)
                .expect("turning truncation off cannot fail");
            full
        });
        let encode = |input: String| {
            full_tokenizer
                .encode(input, true)
                .map_err(|e| EncoderError::Tokenizer(e.to_string()))
        };
        let full = encode(format!("{}{text}", self.prefix(kind)))?;
        let max_len = self.manifest.max_seq_length;
        if full.get_ids().len() <= max_len {
            return Ok(vec![full.get_ids().to_vec()]);
        }
        // The special tokens framing a text, read off a one-word text.
        let probe = encode("a".to_string())?;
        let mask = probe.get_special_tokens_mask();
        let first = mask.iter().position(|&m| m == 0).unwrap_or(mask.len());
        let last = mask
            .iter()
            .rposition(|&m| m == 0)
            .map_or(mask.len(), |i| i + 1);
        let (head, tail) = (&probe.get_ids()[..first], &probe.get_ids()[last..]);

        let content: Vec<u32> = full
            .get_ids()
            .iter()
            .zip(full.get_special_tokens_mask())
            .filter(|(_, &m)| m == 0)
            .map(|(&id, _)| id)
            .collect();
        let width = max_len.saturating_sub(head.len() + tail.len()).max(1);
        let step = width.saturating_sub(chunk_overlap(max_len)).max(1);
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + width).min(content.len());
            windows.push([head, &content[start..end], tail].concat());
            if end == content.len() {
                break;
            }
            start += step;
        }
        Ok(windows)
    }

    fn prefix(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Query => &self.manifest.query_prefix,
            TextKind::Passage => &self.manifest.passage_prefix,
        }
    }

    fn tokenize_all<S: AsRef<str>>(
        &self,
        texts: &[S],
        kind: TextKind,
    ) -> Result<Vec<Vec<u32>>, EncoderError> {
        let prefix = self.prefix(kind);
        let inputs: Vec<String> = texts
            .iter()
            .map(|t| format!("{prefix}{}", t.as_ref()))
            .collect();
        let encodings = self
            .tokenizer
            .encode_batch(inputs, true)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// Embeds one text.
    pub fn encode_one(&mut self, text: &str, kind: TextKind) -> Result<Vec<f32>, EncoderError> {
        Ok(self
            .encode(&[text], kind)?
            .pop()
            .expect("one text gives one vector"))
    }

    /// Embeds `texts`, returning one vector per text in input order. Texts are tokenised, grouped
    /// into length-sorted batches padded only to their own longest text, run, pooled, put
    /// through the manifest's Dense layers and (if the manifest says so) L2-normalised.
    pub fn encode<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        kind: TextKind,
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        let ids = self.tokenize_all(texts, kind)?;
        self.encode_token_ids(&ids)
    }

    /// Embeds already tokenised texts (ids as the tokenizer gives them, special tokens included).
    pub fn encode_token_ids(&mut self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EncoderError> {
        self.encode_token_ids_with(ids, |_| {})
    }

    /// Like [`Encoder::encode_token_ids`], calling `between_batches` with the number of
    /// inputs encoded so far before every batch: a database backend checks for query
    /// cancellation and reports progress there.
    pub fn encode_token_ids_with(
        &mut self,
        ids: &[Vec<u32>],
        mut between_batches: impl FnMut(usize),
    ) -> Result<Vec<Vec<f32>>, EncoderError> {
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); ids.len()];
        let mut done = 0;
        let batches = plan_batches(&lengths, self.batch_size);
        let count = batches.len();
        for (n, batch) in batches.into_iter().enumerate() {
            between_batches(done);
            done += batch.len();
            let rows: Vec<&[u32]> = batch.iter().map(|&i| ids[i].as_slice()).collect();
            let vectors = self.run_batch(&rows, n + 1 == count)?;
            for (i, v) in batch.into_iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// The largest magnitude each feature of the graph's tensors `names` reaches on `texts`
    /// (passages, one at a time), by name: what int8 quantisation smooths with (see
    /// `semantic_bert_export::activation_probe`, which writes a graph that gives them out).
    pub fn input_ranges<S: AsRef<str>>(
        &mut self,
        texts: &[S],
        names: &[String],
    ) -> Result<HashMap<String, Vec<f32>>, EncoderError> {
        let failed = |e: ort::Error| EncoderError::Inference(e.to_string());
        let mut ranges: HashMap<String, Vec<f32>> = HashMap::new();
        for text in texts {
            let ids = self.tokenize(text.as_ref(), TextKind::Passage)?;
            let (inputs, _, _) = self.batch_inputs(&[&ids])?;
            let outputs = self
                .session
                .run_with_options(inputs, &self.shrink_arena)
                .map_err(failed)?;
            for name in names {
                let value = outputs.get(name.as_str()).ok_or_else(|| {
                    EncoderError::Inference(format!("the graph gives out no tensor {name}"))
                })?;
                let (shape, values) = value.try_extract_tensor::<f32>().map_err(failed)?;
                let width = shape.last().map_or(1, |&d| d.max(1) as usize);
                let range = ranges
                    .entry(name.clone())
                    .or_insert_with(|| vec![0.0; width]);
                if range.len() != width {
                    return Err(EncoderError::Inference(format!(
                        "tensor {name} changed width between texts"
                    )));
                }
                for row in values.chunks_exact(width) {
                    for (r, v) in range.iter_mut().zip(row) {
                        *r = r.max(v.abs());
                    }
                }
            }
        }
        Ok(ranges)
    }

    /// The graph's inputs for `rows` of token ids, padded to the longest, with the attention
    /// mask and the padded length.
    #[allow(clippy::type_complexity)]
    fn batch_inputs(
        &self,
        rows: &[&[u32]],
    ) -> Result<
        (
            Vec<(Cow<'static, str>, SessionInputValue<'static>)>,
            Vec<i64>,
            usize,
        ),
        EncoderError,
    > {
        let batch = rows.len();
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut input_ids = vec![self.pad_id; batch * seq];
        let mut mask = vec![0i64; batch * seq];
        for (b, row) in rows.iter().enumerate() {
            for (t, &id) in row.iter().enumerate() {
                input_ids[b * seq + t] = i64::from(id);
                mask[b * seq + t] = 1;
            }
        }
        let shape = [batch as i64, seq as i64];
        let failed = |e: ort::Error| EncoderError::Inference(e.to_string());
        let mut inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape, input_ids)).map_err(failed)?,
            "attention_mask" => Tensor::from_array((shape, mask.clone())).map_err(failed)?,
        ];
        if self.takes_token_type_ids {
            let token_types =
                Tensor::from_array((shape, vec![0i64; batch * seq])).map_err(failed)?;
            inputs.push(("token_type_ids".into(), token_types.into()));
        }
        Ok((inputs, mask, seq))
    }

    fn run_batch(&mut self, rows: &[&[u32]], last: bool) -> Result<Vec<Vec<f32>>, EncoderError> {
        let batch = rows.len();
        let (inputs, mask, seq) = self.batch_inputs(rows)?;
        let failed = |e: ort::Error| EncoderError::Inference(e.to_string());
        let run_options = if last {
            &self.shrink_arena
        } else {
            &self.keep_arena
        };
        let outputs = self
            .session
            .run_with_options(inputs, run_options)
            .map_err(failed)?;
        let (out_shape, vectors) = outputs[self.output_index]
            .try_extract_tensor::<f32>()
            .map_err(failed)?;
        let pooling = self.manifest.pooling;
        let width = self.manifest.graph_width();
        // A graph that pools inside gives one vector per text, else one per token.
        let (expected, rows_per_text, what) = match pooling {
            Some(_) => (vec![batch, seq, width], seq, "token vectors"),
            None => (vec![batch, width], 1, "pooled vectors"),
        };
        if !out_shape
            .iter()
            .map(|&d| d as usize)
            .eq(expected.iter().copied())
        {
            return Err(EncoderError::Inference(format!(
                "the model returned shape {out_shape:?}, expected {expected:?} ({what} {width} wide, as the manifest says)"
            )));
        }
        let text_len = rows_per_text * width;
        Ok((0..batch)
            .map(|b| {
                let rows = &vectors[b * text_len..(b + 1) * text_len];
                let pooled = match pooling {
                    Some(mode) => pool(mode, rows, &mask[b * seq..(b + 1) * seq], width),
                    None => rows.to_vec(),
                };
                self.dense.sentence_vector(pooled, self.manifest.normalize)
            })
            .collect())
    }
}

/// Checks the files in `dir` against the manifest fingerprint: by a stamp in the cache if one
/// vouches for them, else by hashing them (when `verify`), leaving a stamp for the next load.
fn check_fingerprint(
    dir: &Path,
    manifest: &Manifest,
    verify: bool,
    cache: Option<&ModelCache>,
    cache_problems: &mut Vec<String>,
) -> Result<FingerprintCheck, EncoderError> {
    let before = cache.and_then(|_| model_file_identities(dir).ok());
    if let (Some(cache), Some(files)) = (cache, &before) {
        if cache.is_verified(files) {
            return Ok(FingerprintCheck::Stamped);
        }
    }
    if !verify {
        return Ok(FingerprintCheck::Skipped);
    }
    manifest.verify_files(dir)?;
    // Only if nothing changed while hashing does the hash belong to these identities.
    if let (Some(cache), Some(files)) = (cache, before) {
        if model_file_identities(dir).is_ok_and(|after| after == files) {
            if let Err(e) = cache.record_verified(&files) {
                cache_problems.push(format!(
                    "cannot write {}: {e}",
                    cache.stamp_path().display()
                ));
            }
        }
    }
    Ok(FingerprintCheck::Hashed)
}

/// Makes the inference sessions of one load.
struct Sessions<'a> {
    environment: &'a Environment,
    options: &'a EncoderOptions,
    model_path: &'a Path,
}

impl Sessions<'_> {
    fn invalid(&self, e: ort::Error) -> EncoderError {
        EncoderError::InvalidModel {
            path: self.model_path.to_path_buf(),
            reason: e.to_string(),
        }
    }

    /// A session builder with the options' threads and execution provider.
    fn builder(
        &self,
        optimization: GraphOptimizationLevel,
    ) -> Result<SessionBuilder, EncoderError> {
        let builder = Session::builder(self.environment)
            .map_err(|e| self.invalid(e))?
            .with_optimization_level(optimization)
            .map_err(|e| self.invalid(e.into()))?
            .with_intra_threads(self.options.threads.max(1))
            .map_err(|e| self.invalid(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| self.invalid(e.into()))?;
        match self.options.provider {
            // The arena (ONNX Runtime's default, which the ort crate turns off) reuses memory for
            // the activations instead of fresh pages for every operator: 0.80-0.85x -> about
            // 1.0x of Python onnxruntime on batches of 32 x 256 tokens (BENCHMARKS.md). The last
            // batch of each call runs with `shrink_arena`, so a backend does not keep the peak
            // of a bulk build.
            ExecutionProvider::Cpu => builder
                .with_execution_providers([CPU::default().with_arena_allocator(true).build()])
                .map_err(|e| self.invalid(e.into())),
            ExecutionProvider::Cuda => {
                let unavailable = |reason: String| EncoderError::ProviderUnavailable {
                    provider: "cuda",
                    reason,
                };
                match CUDA::is_available() {
                    Ok(true) => {}
                    Ok(false) => return Err(unavailable("this ONNX Runtime library was built without CUDA support (use the onnxruntime-gpu build)".into())),
                    Err(e) => return Err(unavailable(e.to_string())),
                }
                builder
                    .with_execution_providers([CUDA::default().build().error_on_failure()])
                    .map_err(|e| unavailable(e.to_string()))
            }
        }
    }

    /// model.onnx, optimised in memory.
    fn open_model_file(&self) -> Result<Session, EncoderError> {
        self.builder(MODEL_OPTIMIZATION)?
            .commit_from_file(self.model_path)
            .map_err(|e| self.invalid(e))
    }

    /// model.onnx, optimised in memory, also saving the optimised graph into `folder`: the
    /// weights go to their own file, pre-packed ones included, which ONNX Runtime maps when the
    /// copy is loaded.
    fn open_model_file_saving_copy(&self, folder: &Path) -> Result<Session, EncoderError> {
        let mut builder = self
            .builder(MODEL_OPTIMIZATION)?
            .with_optimized_model_path(folder.join(COPY_GRAPH_FILE))
            .map_err(|e| self.invalid(e.into()))?;
        for (key, value) in [
            (
                "session.optimized_model_external_initializers_file_name",
                COPY_WEIGHTS_FILE,
            ),
            // Small tensors stay in the graph file: mapping them would save nothing.
            (
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            ),
            // Without this, every process would pre-pack the weights into private memory.
            ("session.save_external_prepacked_constant_initializers", "1"),
        ] {
            builder = builder
                .with_config_entry(key, value)
                .map_err(|e| self.invalid(e.into()))?;
        }
        builder
            .commit_from_file(self.model_path)
            .map_err(|e| self.invalid(e))
    }

    /// An optimised copy: already optimised, so no graph optimisation runs again.
    fn open_copy(&self, copy: &Path) -> Result<Session, EncoderError> {
        let graph = copy.join(COPY_GRAPH_FILE);
        self.builder(GraphOptimizationLevel::Disable)?
            .commit_from_file(&graph)
            .map_err(|e| EncoderError::InvalidModel {
                path: graph,
                reason: e.to_string(),
            })
    }

    /// Opens the cache's optimised copy, making it first if there is none (or only a damaged
    /// one); falls back to model.onnx alone when the cache cannot provide one.
    fn through_cache(
        &self,
        cache: &ModelCache,
        cache_problems: &mut Vec<String>,
    ) -> Result<(Session, GraphSource), EncoderError> {
        let copy = cache.optimized_copy(&copy_settings(&format!("{MODEL_OPTIMIZATION:?}")));
        if copy.is_dir() {
            match self.open_copy(&copy) {
                Ok(session) => return Ok((session, GraphSource::OptimizedCopy { created: false })),
                Err(e) => {
                    cache_problems.push(format!("discarded the optimised copy: {e}"));
                    cache.discard(&copy);
                }
            }
        }
        let folder = match cache.new_copy_folder(&copy) {
            Ok(folder) => folder,
            Err(e) => {
                cache_problems.push(format!("cannot write {}: {e}", copy.display()));
                return Ok((self.open_model_file()?, GraphSource::ModelFile));
            }
        };
        let session = match self.open_model_file_saving_copy(&folder) {
            Ok(session) => session,
            Err(e) => {
                cache.discard(&folder);
                cache_problems.push(format!("could not save {}: {e}", copy.display()));
                return Ok((self.open_model_file()?, GraphSource::ModelFile));
            }
        };
        if let Err(e) = cache.publish(&folder, &copy) {
            cache_problems.push(format!("could not save {}: {e}", copy.display()));
            return Ok((session, GraphSource::ModelFile));
        }
        // Opened again at once, so that this process too shares the mapped weights, and a copy
        // that does not load is found now rather than by the next process.
        match self.open_copy(&copy) {
            Ok(mapped) => Ok((mapped, GraphSource::OptimizedCopy { created: true })),
            Err(e) => {
                cache_problems.push(format!("discarded the new optimised copy: {e}"));
                cache.discard(&copy);
                Ok((session, GraphSource::ModelFile))
            }
        }
    }
}

/// The graph optimisation of every session made from model.onnx, so an optimised copy is the
/// same graph as a session without one.
const MODEL_OPTIMIZATION: GraphOptimizationLevel = GraphOptimizationLevel::All;

/// Tokens shared by consecutive chunks of a long text, so that no sentence is only ever seen cut.
fn chunk_overlap(max_len: usize) -> usize {
    max_len / 8
}

/// Loads tokenizer.json with truncation at the model's own limit and no padding (batches are
/// padded here, to their own longest text). Published tokenizer.json files often carry other
/// settings (all-MiniLM-L6-v2's says 128 while the model is trained for 256). Returns the
/// tokenizer and its pad id: the padding settings' if the file has some, else the id of
/// `[PAD]` or `<pad>` (RoBERTa, XLM-R and MPNet have `<pad>` = 1), else 0.
fn load_tokenizer(path: &Path, max_len: usize) -> Result<(Tokenizer, u32), EncoderError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| EncoderError::MissingFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let pad_id = tokenizer
        .get_padding()
        .map(|padding| padding.pad_id)
        .or_else(|| tokenizer.token_to_id("[PAD]"))
        .or_else(|| tokenizer.token_to_id("<pad>"))
        .unwrap_or(0);
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
    Ok((tokenizer, pad_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer.json over `vocab` (ids in order), with `padding` as written.
    fn tokenizer_file(dir: &Path, vocab: &[&str], padding: serde_json::Value) -> PathBuf {
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": padding,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": vocab.keys().next()},
        });
        let path = dir.join(TOKENIZER_FILE);
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn batches_are_padded_with_the_tokenizers_pad_id() {
        let dir = tempfile::tempdir().unwrap();
        let pad_id = |vocab: &[&str], padding| {
            let path = tokenizer_file(dir.path(), vocab, padding);
            let (tokenizer, pad_id) = load_tokenizer(&path, 16).unwrap();
            assert!(tokenizer.get_padding().is_none(), "batches pad themselves");
            pad_id
        };
        let null = serde_json::Value::Null;
        assert_eq!(pad_id(&["[PAD]", "[UNK]", "hello"], null.clone()), 0);
        assert_eq!(pad_id(&["<s>", "<pad>", "</s>", "<unk>"], null.clone()), 1);
        assert_eq!(pad_id(&["<unk>", "hello"], null), 0);
        let padding = serde_json::json!({
            "strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": null,
            "pad_id": 3, "pad_type_id": 0, "pad_token": "<blank>",
        });
        assert_eq!(pad_id(&["<s>", "<pad>", "</s>", "<blank>"], padding), 3);
    }
}
