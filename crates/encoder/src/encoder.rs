use std::path::{Path, PathBuf};

use ort::ep::{ExecutionProvider as _, CPU, CUDA};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use crate::batching::plan_batches;
use crate::error::EncoderError;
use crate::manifest::{Manifest, MODEL_FILE, TOKENIZER_FILE};
use crate::pooling::{l2_normalize, pool};
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
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            threads: 1,
            provider: ExecutionProvider::Cpu,
            batch_size: 32,
            verify_fingerprint: true,
        }
    }
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
    /// The same tokenizer without truncation, for long-text chunks.
    full_tokenizer: Tokenizer,
    session: Session,
    /// Run options for every batch but the last of a call, and for the last one.
    keep_arena: RunOptions,
    shrink_arena: RunOptions,
    takes_token_type_ids: bool,
    batch_size: usize,
}

impl Encoder {
    /// Loads the model directory `dir` (manifest.json, tokenizer.json, model.onnx).
    /// [`crate::init_runtime`] must have succeeded first.
    pub fn load(dir: &Path, options: &EncoderOptions) -> Result<Self, EncoderError> {
        let environment = environment().expect("init_runtime must succeed before Encoder::load");
        let manifest = Manifest::load(dir)?;
        if options.verify_fingerprint {
            manifest.verify_files(dir)?;
        }
        let tokenizer = load_tokenizer(&dir.join(TOKENIZER_FILE), manifest.max_seq_length)?;
        let mut full_tokenizer = tokenizer.clone();
        full_tokenizer
            .with_truncation(None)
            .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;

        let model_path = dir.join(MODEL_FILE);
        let invalid = |e: ort::Error| EncoderError::InvalidModel {
            path: model_path.clone(),
            reason: e.to_string(),
        };
        let mut builder = Session::builder(environment)
            .map_err(invalid)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| invalid(e.into()))?
            .with_intra_threads(options.threads.max(1))
            .map_err(|e| invalid(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| invalid(e.into()))?;
        builder = match options.provider {
            // The arena (ONNX Runtime's default, which the ort crate turns off) reuses memory for
            // the activations instead of fresh pages for every operator: 0.80-0.85x -> about
            // 1.0x of Python onnxruntime on batches of 32 x 256 tokens (BENCHMARKS.md). The last
            // batch of each call runs with `shrink_arena`, so a backend does not keep the peak
            // of a bulk build.
            ExecutionProvider::Cpu => builder
                .with_execution_providers([CPU::default().with_arena_allocator(true).build()]),
            ExecutionProvider::Cuda => {
                let cuda = CUDA::default();
                match CUDA::is_available() {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(EncoderError::ProviderUnavailable {
                            provider: "cuda",
                            reason: "this ONNX Runtime library was built without CUDA support (use the onnxruntime-gpu build)".into(),
                        })
                    }
                    Err(e) => {
                        return Err(EncoderError::ProviderUnavailable { provider: "cuda", reason: e.to_string() })
                    }
                }
                builder.with_execution_providers([cuda.build().error_on_failure()])
            }
        }
        .map_err(|e| match options.provider {
            ExecutionProvider::Cuda => {
                EncoderError::ProviderUnavailable { provider: "cuda", reason: e.to_string() }
            }
            ExecutionProvider::Cpu => invalid(e.into()),
        })?;
        if !model_path.is_file() {
            return Err(EncoderError::MissingFile {
                path: model_path.clone(),
                reason: "no such file".into(),
            });
        }
        let session = builder.commit_from_file(&model_path).map_err(invalid)?;
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
        Ok(Encoder {
            manifest,
            dir: dir.to_path_buf(),
            tokenizer,
            full_tokenizer,
            session,
            keep_arena,
            shrink_arena,
            takes_token_type_ids,
            batch_size: options.batch_size.max(1),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
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
        let encode = |input: String| {
            self.full_tokenizer
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
    /// into length-sorted batches padded only to their own longest text, run, pooled and (if the
    /// manifest says so) L2-normalised.
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

    fn run_batch(&mut self, rows: &[&[u32]], last: bool) -> Result<Vec<Vec<f32>>, EncoderError> {
        let batch = rows.len();
        let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut input_ids = vec![0i64; batch * seq];
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
        let run_options = if last {
            &self.shrink_arena
        } else {
            &self.keep_arena
        };
        let outputs = self
            .session
            .run_with_options(inputs, run_options)
            .map_err(failed)?;
        let (out_shape, hidden) = outputs[0].try_extract_tensor::<f32>().map_err(failed)?;
        let dim = self.manifest.dimension;
        if out_shape.len() != 3
            || out_shape[0] as usize != batch
            || out_shape[1] as usize != seq
            || out_shape[2] as usize != dim
        {
            return Err(EncoderError::Inference(format!(
                "the model returned shape {out_shape:?}, expected [{batch}, {seq}, {dim}] (token vectors of the manifest's dimension)"
            )));
        }
        let pooling = self.manifest.pooling;
        let normalize = self.manifest.normalize;
        Ok((0..batch)
            .map(|b| {
                let rows = &hidden[b * seq * dim..(b + 1) * seq * dim];
                let mut v = pool(pooling, rows, &mask[b * seq..(b + 1) * seq], dim);
                if normalize {
                    l2_normalize(&mut v);
                }
                v
            })
            .collect())
    }
}

/// Tokens shared by consecutive chunks of a long text, so that no sentence is only ever seen cut.
fn chunk_overlap(max_len: usize) -> usize {
    max_len / 8
}

/// Loads tokenizer.json with truncation at the model's own limit and no padding (batches are
/// padded here, to their own longest text). Published tokenizer.json files often carry other
/// settings (all-MiniLM-L6-v2's says 128 while the model is trained for 256).
fn load_tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer, EncoderError> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| EncoderError::MissingFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| EncoderError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}
