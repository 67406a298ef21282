//! What distinguishes the BERT-family architectures from one another: weight names, position
//! numbering, token types. The exporter builds its graph from it, and fine-tuning its
//! trainable network, so the two cannot disagree about a family.

use crate::BertConfig;

/// MPNet's hard-wired padding index (`MPNetEmbeddings.padding_idx`).
const MPNET_PADDING_IDX: i64 = 1;
/// RoBERTa's padding index when config.json does not give `pad_token_id`.
const ROBERTA_DEFAULT_PADDING_IDX: i64 = 1;

/// The BERT-family architectures the exporter and fine-tuning know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Bert,
    DistilBert,
    /// RoBERTa, XLM-RoBERTa and CamemBERT: BERT's layers, RoBERTa's positions.
    Roberta,
    MPNet,
}

/// How position ids are numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// `0..sequence_length`.
    FromZero,
    /// `padding_idx + 1, padding_idx + 2, ...` over the non-padding tokens
    /// (`create_position_ids_from_input_ids`).
    AfterPadding(i64),
}

impl Positions {
    /// The position id of a text's first token when nothing pads it on the left.
    pub fn first(self) -> usize {
        match self {
            Positions::FromZero => 0,
            Positions::AfterPadding(padding_idx) => padding_idx as usize + 1,
        }
    }
}

/// How token types enter the embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenTypes {
    /// A `token_type_ids` graph input (BERT).
    Input,
    /// Always type 0: the table's first row, no input (RoBERTa; optimum's
    /// export has no such input either).
    FirstRow,
    /// No token type table at all.
    Absent,
}

/// Weight names of one layer, relative to `{layers}.{i}.`.
pub struct LayerNames {
    pub layers: &'static str,
    pub query: &'static str,
    pub key: &'static str,
    pub value: &'static str,
    pub attention_output: &'static str,
    pub attention_norm: &'static str,
    pub ffn_in: &'static str,
    pub ffn_out: &'static str,
    pub output_norm: &'static str,
}

const BERT_LAYER: LayerNames = LayerNames {
    layers: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    output_norm: "output.LayerNorm",
};

impl Arch {
    pub fn from_model_type(model_type: &str) -> Option<Arch> {
        match model_type {
            "bert" => Some(Arch::Bert),
            "distilbert" => Some(Arch::DistilBert),
            "roberta" | "xlm-roberta" | "camembert" => Some(Arch::Roberta),
            "mpnet" => Some(Arch::MPNet),
            _ => None,
        }
    }

    /// Prefixes accepted in front of the base-model weight names (a
    /// `*ForMaskedLM` checkpoint keeps the encoder under its family's name).
    pub fn prefixes(self) -> &'static [&'static str] {
        match self {
            Arch::Bert => &["", "bert."],
            Arch::DistilBert => &["", "distilbert."],
            Arch::Roberta => &["", "roberta."],
            Arch::MPNet => &["", "mpnet."],
        }
    }

    pub fn layer_names(self) -> LayerNames {
        match self {
            Arch::Bert | Arch::Roberta => BERT_LAYER,
            Arch::MPNet => LayerNames {
                query: "attention.attn.q",
                key: "attention.attn.k",
                value: "attention.attn.v",
                attention_output: "attention.attn.o",
                attention_norm: "attention.LayerNorm",
                ..BERT_LAYER
            },
            Arch::DistilBert => LayerNames {
                layers: "transformer.layer",
                query: "attention.q_lin",
                key: "attention.k_lin",
                value: "attention.v_lin",
                attention_output: "attention.out_lin",
                attention_norm: "sa_layer_norm",
                ffn_in: "ffn.lin1",
                ffn_out: "ffn.lin2",
                output_norm: "output_layer_norm",
            },
        }
    }

    pub fn positions(self, cfg: &BertConfig) -> Positions {
        match self {
            Arch::Bert | Arch::DistilBert => Positions::FromZero,
            Arch::Roberta => {
                Positions::AfterPadding(cfg.pad_token_id.unwrap_or(ROBERTA_DEFAULT_PADDING_IDX))
            }
            Arch::MPNet => Positions::AfterPadding(MPNET_PADDING_IDX),
        }
    }

    pub fn token_types(self) -> TokenTypes {
        match self {
            Arch::Bert => TokenTypes::Input,
            Arch::Roberta => TokenTypes::FirstRow,
            Arch::DistilBert | Arch::MPNet => TokenTypes::Absent,
        }
    }
}

/// DistilBERT's fixed position table: for position `p` and column `j`,
/// `p / 10000^(2 * (j / 2) / dim)`, sine in even columns and cosine in odd ones
/// (computed in f64 and rounded, as transformers does with numpy).
pub fn sinusoidal_positions(rows: usize, dim: usize) -> Vec<f32> {
    let mut table = Vec::with_capacity(rows * dim);
    for p in 0..rows {
        for j in 0..dim {
            let angle = p as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            table.push(if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32);
        }
    }
    table
}

/// Buckets and distance of MPNet's `relative_position_bucket` (fixed in HF).
pub const MPNET_NUM_BUCKETS: usize = 32;
const MPNET_MAX_DISTANCE: usize = 128;

/// MPNet's `relative_position_bucket` for `n = query_pos - key_pos`, with
/// the float32 arithmetic PyTorch uses.
pub fn mpnet_bucket(n: i64) -> i64 {
    let half = (MPNET_NUM_BUCKETS / 2) as i64;
    let mut ret = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    ret += if n < max_exact {
        n
    } else {
        let log_ratio = (n as f32 / max_exact as f32).ln();
        let denom = (MPNET_MAX_DISTANCE as f64 / max_exact as f64).ln() as f32;
        let large = max_exact + (log_ratio / denom * (half - max_exact) as f32) as i64;
        large.min(half - 1)
    };
    ret
}

#[cfg(test)]
mod tests {
    use super::mpnet_bucket;

    #[test]
    fn mpnet_buckets_match_transformers() {
        // n = query_pos - key_pos; values worked out from
        // transformers' MPNetEncoder.relative_position_bucket.
        let expected = [
            (0, 0),
            (1, 1),
            (7, 7),
            (8, 8),
            (9, 8),
            (12, 9),
            (16, 10),
            (20, 10),
            (32, 12),
            (64, 14),
            (100, 15),
            (128, 15),
            (1000, 15),
            (-1, 17),
            (-8, 24),
            (-16, 26),
            (-64, 30),
            (-200, 31),
        ];
        for (n, b) in expected {
            assert_eq!(mpnet_bucket(n), b, "n = {n}");
        }
    }
}
