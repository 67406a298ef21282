use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use semantic_encoder::Pooling;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{Bert, Dropout, Parameter, TokenBatch};
use crate::dense::DenseHead;
use crate::loss::{cosine_margins, margin_mse_loss, mnrl_loss, normalize};
use crate::pairs::Pair;
use crate::st_folder::SentenceTransformerFolder;

/// A sentence-transformers model as training runs it: the BERT-family encoder, its tokenizer,
/// pooling and Dense modules. Texts in, sentence embeddings out.
pub struct SentenceEncoder {
    bert: Bert,
    head: DenseHead,
    tokenizer: Tokenizer,
    pooling: Pooling,
    dtype: DType,
}

impl SentenceEncoder {
    /// Loads the model of `folder` (the Transformer module's config.json, model.safetensors
    /// and tokenizer.json, and the Dense modules' weights) with weights of `dtype`; texts are
    /// cut to `max_seq_length` tokens.
    pub fn load(
        folder: &SentenceTransformerFolder,
        max_seq_length: usize,
        dtype: DType,
    ) -> Result<Self> {
        let transformer_dir = folder.transformer_dir();
        let bert = Bert::load(transformer_dir, dtype)
            .with_context(|| format!("cannot load {}", transformer_dir.display()))?;
        let head = DenseHead::load(folder.dense(), dtype)?;
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
            head,
            tokenizer,
            pooling: folder.pooling(),
            dtype,
        })
    }

    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    pub fn head(&self) -> &DenseHead {
        &self.head
    }

    /// Every trainable weight: the encoder's, then the Dense modules'.
    pub fn parameters(&self) -> impl Iterator<Item = &Parameter> {
        self.bert.parameters().iter().chain(self.head.parameters())
    }

    /// Token ids of each text, special tokens included.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("cannot tokenize: {e}"))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Already tokenised texts packed for this model's pooling.
    pub fn batch(&self, rows: &[Vec<u32>]) -> Result<TokenBatch> {
        TokenBatch::new(rows, self.pooling, self.dtype)
    }

    /// Unit-length sentence embeddings `[texts, width]` of a batch: pooled, through the Dense
    /// modules, L2-normalised (the loss compares them by cosine, so a model without a
    /// Normalize module trains the same).
    pub fn embed_batch(&self, batch: &TokenBatch, dropout: &mut Dropout) -> Result<Tensor> {
        let pooled = self.bert.pooled(batch, dropout)?;
        Ok(normalize(&self.head.forward(&pooled)?)?)
    }

    /// [`SentenceEncoder::embed_batch`] of texts.
    pub fn embed(&self, texts: &[&str], dropout: &mut Dropout) -> Result<Tensor> {
        let rows = self.tokenize(texts)?;
        self.embed_batch(&self.batch(&rows)?, dropout)
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

    /// MarginMSE of a batch whose pairs all have a negative and a teacher's margin; the
    /// margins are multiplied by `margin_scale` (see [`SentenceEncoder::margin_scale`]).
    pub fn margin_mse_loss(
        &self,
        batch: &[&Pair],
        margin_scale: f64,
        dropout: &mut Dropout,
    ) -> Result<Tensor> {
        let (queries, positives, negatives) = self.embed_triplets(batch, dropout)?;
        let margins: Vec<f32> = batch
            .iter()
            .map(|p| p.margin.map(|m| (m as f64 * margin_scale) as f32))
            .collect::<Option<_>>()
            .ok_or_else(|| anyhow!("MarginMSE needs a margin in every pair"))?;
        let margins = Tensor::new(margins, &Device::Cpu)?.to_dtype(self.dtype)?;
        Ok(margin_mse_loss(&queries, &positives, &negatives, &margins)?)
    }

    /// The factor that puts a teacher's margins on this model's cosine scale: the model's
    /// mean margin (cosine with the positive minus cosine with the negative, no dropout) over
    /// `sample` divided by the teacher's. A fused score's units are arbitrary (min-max
    /// normalised scores give margins near 2), and pulling cosine margins towards them would
    /// tear the embedding space apart; matching the means keeps the teacher's judgement of
    /// which pairs are clear and which are close.
    pub fn margin_scale(&self, sample: &[&Pair]) -> Result<f64> {
        let (mut student, mut teacher) = (0.0, 0.0);
        for chunk in sample.chunks(32) {
            let (queries, positives, negatives) =
                self.embed_triplets(chunk, &mut Dropout::off())?;
            student += cosine_margins(&queries, &positives, &negatives)?
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            teacher += chunk
                .iter()
                .filter_map(|p| p.margin)
                .map(f64::from)
                .sum::<f64>();
        }
        if student <= 0.0 || teacher <= 0.0 {
            bail!(
                "cannot put the teacher's margins on the model's scale: mean margins {:.4} \
                 (model) and {:.4} (teacher) must both be positive",
                student / sample.len() as f64,
                teacher / sample.len() as f64
            );
        }
        Ok(student / teacher)
    }

    /// Unit-length embeddings of the batch's queries, positives and negatives.
    fn embed_triplets(
        &self,
        batch: &[&Pair],
        dropout: &mut Dropout,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let mut columns: [Vec<&str>; 3] = Default::default();
        for pair in batch {
            let Some(negative) = &pair.negative else {
                bail!("MarginMSE needs a negative in every pair");
            };
            columns[0].push(&pair.query);
            columns[1].push(&pair.positive);
            columns[2].push(negative);
        }
        let [queries, positives, negatives] = columns.map(|texts| self.embed(&texts, dropout));
        Ok((queries?, positives?, negatives?))
    }
}
