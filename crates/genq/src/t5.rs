//! Queries sampled from a T5 doc2query model (BEIR GenQ, e.g. BeIR/query-gen-msmarco-t5-base-v1)
//! with candle-transformers' T5: the passage is encoded once, its samples are decoded together
//! with a key/value cache, each drawing from the top-k / top-p distribution.
//!
//! candle's T5 takes no attention mask, so padded passages would read their padding: only
//! passages with the same token count share a batch, which keeps batched output equal to
//! unbatched output. Each (passage, sample) row draws from its own random stream
//! ([`passage_rng`]), so the seed alone fixes the queries.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::t5::{Config, T5ForConditionalGeneration};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tokenizers::{Tokenizer, TruncationParams};

use crate::sampling::{sample, top_k_top_p};
use crate::{passage_rng, Pair, Passage};

/// How queries are sampled; the defaults are BEIR GenQ's.
#[derive(Clone, Debug)]
pub struct T5Settings {
    pub queries_per_passage: usize,
    pub top_k: usize,
    pub top_p: f32,
    /// Passage tokens the encoder sees (longer passages are truncated, keeping `</s>`).
    pub max_passage_tokens: usize,
    /// Decoder length including the start token, as Hugging Face's `max_length`.
    pub max_query_tokens: usize,
    /// (passage, sample) rows decoded together.
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for T5Settings {
    fn default() -> Self {
        T5Settings {
            queries_per_passage: 5,
            top_k: 25,
            top_p: 0.95,
            max_passage_tokens: 512,
            max_query_tokens: 64,
            batch_size: 16,
            seed: 42,
        }
    }
}

/// A loaded checkpoint folder: config.json, model.safetensors, tokenizer.json.
pub struct T5QueryGenerator {
    model: T5ForConditionalGeneration,
    tokenizer: Tokenizer,
    decoder_start: u32,
    eos: u32,
    pad: u32,
    device: Device,
}

/// One decoder row: which passage, which of its samples.
#[derive(Clone, Copy)]
struct Row {
    passage: usize,
    sample: usize,
}

impl T5QueryGenerator {
    pub fn load(dir: &Path) -> Result<Self> {
        let device = Device::Cpu;
        let config_path = dir.join("config.json");
        let config_text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let mut config: Config = serde_json::from_str(&config_text)
            .with_context(|| format!("{} is not a T5 config", config_path.display()))?;
        // Decoding feeds one token per step and relies on the key/value cache.
        config.use_cache = true;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            anyhow::bail!(
                "{} is missing (convert pytorch_model.bin to safetensors first)",
                weights.display()
            );
        }
        // SAFETY: the file is mapped read-only and not modified while the model lives.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
        let model = T5ForConditionalGeneration::load(vb, &config)
            .with_context(|| format!("cannot load the T5 weights in {}", weights.display()))?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow!("cannot read {}: {e}", tokenizer_path.display()))?;
        Ok(T5QueryGenerator {
            model,
            tokenizer,
            decoder_start: config.decoder_start_token_id.unwrap_or(config.pad_token_id) as u32,
            eos: config.eos_token_id as u32,
            pad: config.pad_token_id as u32,
            device,
        })
    }

    /// The encoder input of a passage: its full text, truncated to `max_tokens` with the
    /// tokenizer's special tokens (T5 appends `</s>`).
    pub fn passage_token_ids(&mut self, passage: &Passage, max_tokens: usize) -> Result<Vec<u32>> {
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?;
        self.tokenizer.with_padding(None);
        let encoding = self
            .tokenizer
            .encode(passage.full_text(), true)
            .map_err(|e| anyhow!("cannot tokenize passage {}: {e}", passage.id))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Up to `queries_per_passage` pairs per passage, in passage then sample order (empty
    /// queries are left out); `progress` hears how many rows are done after each batch.
    pub fn generate(
        &mut self,
        passages: &[Passage],
        settings: &T5Settings,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Pair>> {
        let inputs = passages
            .iter()
            .map(|p| self.passage_token_ids(p, settings.max_passage_tokens))
            .collect::<Result<Vec<_>>>()?;
        // An empty text with no special tokens gives the encoder nothing to read.
        let mut by_length: Vec<usize> = (0..passages.len())
            .filter(|&i| !inputs[i].is_empty())
            .collect();
        by_length.sort_by_key(|&i| (inputs[i].len(), i));
        let rows: Vec<Row> = by_length
            .iter()
            .flat_map(|&passage| {
                (0..settings.queries_per_passage).map(move |sample| Row { passage, sample })
            })
            .collect();

        let mut queries = vec![vec![String::new(); settings.queries_per_passage]; passages.len()];
        let mut done = 0;
        for same_length in rows.chunk_by(|a, b| inputs[a.passage].len() == inputs[b.passage].len())
        {
            for batch in same_length.chunks(settings.batch_size.max(1)) {
                let generated = self.decode_batch(batch, passages, &inputs, settings)?;
                for (row, ids) in batch.iter().zip(generated) {
                    queries[row.passage][row.sample] = self
                        .tokenizer
                        .decode(&ids, true)
                        .map_err(|e| anyhow!("cannot decode a query: {e}"))?
                        .trim()
                        .to_string();
                }
                done += batch.len();
                progress(done);
            }
        }
        Ok(passages
            .iter()
            .zip(queries)
            .flat_map(|(passage, samples)| {
                samples
                    .into_iter()
                    .filter(|q| !q.is_empty())
                    .map(|query| Pair {
                        query,
                        passage_id: passage.id.clone(),
                        positive: passage.full_text(),
                        negative: None,
                        margin: None,
                    })
            })
            .collect())
    }

    /// Samples one query (token ids, without start and end tokens) per row; all rows' passages
    /// have the same token count.
    fn decode_batch(
        &mut self,
        rows: &[Row],
        passages: &[Passage],
        inputs: &[Vec<u32>],
        settings: &T5Settings,
    ) -> Result<Vec<Vec<u32>>> {
        // Encode each passage once and give every row its passage's encoder states.
        let mut unique: Vec<usize> = rows.iter().map(|r| r.passage).collect();
        unique.dedup();
        let length = inputs[unique[0]].len();
        let input_ids: Vec<u32> = unique.iter().flat_map(|&p| inputs[p].clone()).collect();
        let input_ids = Tensor::from_vec(input_ids, (unique.len(), length), &self.device)?;
        let encoded = self.model.encode(&input_ids)?;
        let row_states: Vec<u32> = rows
            .iter()
            .map(|r| unique.iter().position(|&p| p == r.passage).unwrap() as u32)
            .collect();
        let encoded = encoded.index_select(&Tensor::new(row_states, &self.device)?, 0)?;

        self.model.clear_kv_cache();
        let mut rngs: Vec<ChaCha8Rng> = rows
            .iter()
            .map(|r| passage_rng(settings.seed, &passages[r.passage].id, r.sample as u64))
            .collect();
        let mut generated = vec![Vec::new(); rows.len()];
        let mut finished = vec![false; rows.len()];
        let mut next = vec![self.decoder_start; rows.len()];
        for _ in 1..settings.max_query_tokens {
            let step_input = Tensor::new(next.as_slice(), &self.device)?.unsqueeze(1)?;
            let logits: Vec<Vec<f32>> = self
                .model
                .decode(&step_input, &encoded)?
                .to_dtype(DType::F32)?
                .to_vec2()?;
            for (r, row_logits) in logits.iter().enumerate() {
                // Finished rows feed padding and draw nothing, so a row's stream only ever
                // serves its own tokens.
                if finished[r] {
                    next[r] = self.pad;
                    continue;
                }
                let distribution = top_k_top_p(row_logits, settings.top_k, settings.top_p);
                let token = sample(&distribution, rngs[r].random::<f32>());
                if token == self.eos {
                    finished[r] = true;
                    next[r] = self.pad;
                } else {
                    generated[r].push(token);
                    next[r] = token;
                }
            }
            if finished.iter().all(|&f| f) {
                break;
            }
        }
        Ok(generated)
    }
}
