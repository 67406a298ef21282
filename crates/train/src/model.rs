use std::path::Path;

use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use semantic_encoder::Pooling;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{Bert, Dropout, TokenBatch};
use crate::loss::mnrl_loss;
use crate::pairs::Pair;

/// A BERT-family encoder with its tokenizer and pooling: texts in, sentence embeddings out.
pub struct SentenceEncoder {
    bert: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    dtype: DType,
}

impl SentenceEncoder {
    /// Loads the Transformer module in `transformer_dir` (config.json, model.safetensors,
    /// tokenizer.json); texts are cut to `max_seq_length` tokens and pooled as `pooling` says.
    pub fn load(
        transformer_dir: &Path,
        max_seq_length: usize,
        pooling: Pooling,
        dtype: DType,
    ) -> Result<Self> {
        let bert = Bert::load(transformer_dir, dtype)?;
        let path = transformer_dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| {
            anyhow!(
                "cannot load {} (a fast tokenizer is needed): {e}",
                path.display()
            )
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length.min(bert.max_positions()),
                ..Default::default()
            }))
            .map_err(|e| anyhow!("{e}"))?;
        Ok(SentenceEncoder {
            bert,
            tokenizer,
            pooling,
            dtype,
        })
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// Token ids of each text, special tokens included.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Unit-length sentence embeddings `[texts, hidden]`, padded to the batch's longest text
    /// as sentence-transformers does.
    pub fn embed(&self, texts: &[&str], dropout: &mut Dropout) -> Result<Tensor> {
        let rows = self.tokenize(texts)?;
        self.bert
            .embed(&TokenBatch::new(&rows, self.pooling, self.dtype)?, dropout)
    }

    /// MultipleNegativesRankingLoss of a batch. Each column (queries, positives, negatives)
    /// goes through the model as its own batch, as in sentence-transformers; the negatives of
    /// the pairs that have one follow the positives among the candidates.
    pub fn mnrl_loss(&self, batch: &[&Pair], scale: f64, dropout: &mut Dropout) -> Result<Tensor> {
        let queries: Vec<&str> = batch.iter().map(|p| p.query.as_str()).collect();
        let positives: Vec<&str> = batch.iter().map(|p| p.positive.as_str()).collect();
        let negatives: Vec<&str> = batch.iter().filter_map(|p| p.negative.as_deref()).collect();
        let anchors = self.embed(&queries, dropout)?;
        let mut candidates = self.embed(&positives, dropout)?;
        if !negatives.is_empty() {
            candidates = Tensor::cat(&[candidates, self.embed(&negatives, dropout)?], 0)?;
        }
        Ok(mnrl_loss(&anchors, &candidates, scale)?)
    }
}
