use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::EncoderError;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The weights of the manifest's Dense layers, present only when it has some.
pub const DENSE_FILE: &str = "dense.safetensors";

/// How token vectors become one vector, as sentence-transformers' Pooling modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the tokens' vectors.
    Mean,
    /// The first token's vector.
    Cls,
    /// Each dimension's largest value over the tokens.
    Max,
    /// The tokens' sum over the square root of their count.
    MeanSqrtLen,
}

/// How manifest.json spells a graph that pools inside (no [`Pooling`] of the encoder's).
const POOLED_IN_GRAPH: &str = "in_graph";

/// The manifest's `pooling`: a [`Pooling`] mode, or [`POOLED_IN_GRAPH`] for none.
mod pooling_field {
    use serde::de::IntoDeserializer;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Pooling, POOLED_IN_GRAPH};

    pub fn serialize<S: Serializer>(pooling: &Option<Pooling>, s: S) -> Result<S::Ok, S::Error> {
        match pooling {
            Some(mode) => mode.serialize(s),
            None => s.serialize_str(POOLED_IN_GRAPH),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Pooling>, D::Error> {
        let name = String::deserialize(d)?;
        if name == POOLED_IN_GRAPH {
            return Ok(None);
        }
        Pooling::deserialize(name.into_deserializer()).map(Some)
    }
}

/// The activation of a Dense layer, as sentence-transformers' Dense modules name a torch
/// module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Identity,
    Tanh,
    Relu,
    Sigmoid,
    /// The exact GELU, `0.5 x (1 + erf(x / √2))` (torch's default).
    Gelu,
}

/// One Dense layer after pooling: `activation(W x + b)`, with `W` (`[out_features,
/// in_features]`) and `b` stored as `dense.{i}.weight` and `dense.{i}.bias` in
/// [`DENSE_FILE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseLayer {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub activation: Activation,
}

/// How the model's vectors are meant to be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Similarity {
    Cosine,
    Dot,
}

/// The number format of the graph's weight multiplications.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Float weights, as the model was published.
    #[default]
    Fp32,
    /// int8 weights, one scale per output column, inputs quantised at run time
    /// (`import-model --quantize int8`).
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

/// The description of one installed model version, stored as `manifest.json` next to
/// `model.onnx` and `tokenizer.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// Where the weights came from (a folder or a Hugging Face id), for people reading it.
    #[serde(default)]
    pub source: String,
    pub architecture: String,
    pub dimension: usize,
    /// How the encoder pools the graph's token vectors; none when the graph pools inside and
    /// gives one vector per text.
    #[serde(with = "pooling_field")]
    pub pooling: Option<Pooling>,
    /// The graph output holding the vectors, when it is not the first one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Dense layers applied after pooling and before normalisation, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dense: Vec<DenseLayer>,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub similarity: Similarity,
    /// Prepended to queries (asymmetric models such as E5 use "query: ").
    #[serde(default)]
    pub query_prefix: String,
    /// Prepended to documents.
    #[serde(default)]
    pub passage_prefix: String,
    /// The graph's weights: fp32 unless imported with `--quantize int8`. Not part of the
    /// fingerprint's fields: the graph file, which the fingerprint hashes, differs already.
    #[serde(default)]
    pub precision: Precision,
    /// `sha256:` of the files and of every field that changes the vectors; see
    /// [`compute_fingerprint`].
    pub fingerprint: String,
}

impl Manifest {
    pub fn load(model_dir: &Path) -> Result<Self, EncoderError> {
        let path = model_dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| EncoderError::MissingFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| EncoderError::InvalidManifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let invalid = |reason: &str| EncoderError::InvalidManifest {
            path: path.clone(),
            reason: reason.into(),
        };
        if manifest.dimension == 0 || manifest.max_seq_length < 2 {
            return Err(invalid(
                "dimension must be positive and max_seq_length at least 2",
            ));
        }
        let chained = manifest
            .dense
            .windows(2)
            .all(|pair| pair[0].out_features == pair[1].in_features);
        if !chained
            || manifest
                .dense
                .last()
                .map(|l| l.out_features)
                .is_some_and(|out| out != manifest.dimension)
        {
            return Err(invalid(
                "each dense layer must take the width the one before gives, and the last give the dimension",
            ));
        }
        Ok(manifest)
    }

    /// The pooling as manifest.json spells it (mean, cls, max, mean_sqrt_len, in_graph).
    pub fn pooling_name(&self) -> String {
        let name = pooling_field::serialize(&self.pooling, serde_json::value::Serializer)
            .expect("a pooling always serialises");
        name.as_str()
            .expect("a pooling serialises as a string")
            .to_string()
    }

    /// The width of the graph's vectors: the first Dense layer's input, else the dimension.
    pub fn graph_width(&self) -> usize {
        self.dense.first().map_or(self.dimension, |l| l.in_features)
    }

    /// The files of the model directory that the fingerprint covers.
    pub fn model_files(&self) -> Vec<&'static str> {
        let mut files = vec![MODEL_FILE, TOKENIZER_FILE];
        if !self.dense.is_empty() {
            files.push(DENSE_FILE);
        }
        files
    }

    pub fn save(&self, model_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a manifest always serialises");
        std::fs::write(model_dir.join(MANIFEST_FILE), text + "\n")
    }

    /// Recomputes the fingerprint from the files in `model_dir` and fails if they changed.
    pub fn verify_files(&self, model_dir: &Path) -> Result<(), EncoderError> {
        let actual = compute_fingerprint(model_dir, self)?;
        if actual != self.fingerprint {
            return Err(EncoderError::FingerprintMismatch {
                name: self.name.clone(),
                expected: self.fingerprint.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// A content fingerprint of a model version: SHA-256 over [`Manifest::model_files`] and the
/// manifest fields that change the vectors (not the name, so a renamed copy keeps its identity).
/// An index stores it, so that a model changed under an index is detected instead of silently
/// mixing two vector spaces.
pub fn compute_fingerprint(model_dir: &Path, manifest: &Manifest) -> Result<String, EncoderError> {
    let mut hasher = Sha256::new();
    for file in manifest.model_files() {
        let path = model_dir.join(file);
        let missing = |e: std::io::Error| EncoderError::MissingFile {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut reader = BufReader::new(File::open(&path).map_err(missing)?);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(missing)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    // A pooling mode is spelled as it always was (its Debug form).
    let pooling = manifest
        .pooling
        .map_or_else(|| "InGraph".to_string(), |mode| format!("{mode:?}"));
    let mut fields = format!(
        "{}|{}|{}|{}|{}|{:?}|{}|{}",
        manifest.architecture,
        manifest.dimension,
        pooling,
        manifest.normalize,
        manifest.max_seq_length,
        manifest.similarity,
        manifest.query_prefix,
        manifest.passage_prefix
    );
    // Appended only when present, so that the models without them keep the fingerprints their
    // indexes store.
    if let Some(output) = &manifest.output {
        fields.push_str(&format!("|output:{output}"));
    }
    for layer in &manifest.dense {
        fields.push_str(&format!(
            "|dense:{}x{}:{}:{:?}",
            layer.in_features, layer.out_features, layer.bias, layer.activation
        ));
    }
    hasher.update(fields.as_bytes());
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Model names are plain names, never paths: they are joined to a superuser-set directory, so
/// anything that could climb out of it is refused.
pub fn validate_model_name(name: &str) -> Result<(), EncoderError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EncoderError::InvalidModelName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_be_paths() {
        for good in ["all-MiniLM-L6-v2", "e5.small_v2", "m1"] {
            assert!(validate_model_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "../etc", "a/b", "..", ".hidden", "a..b", "x y", "/abs", "a\\b", "é",
        ] {
            assert!(validate_model_name(bad).is_err(), "{bad}");
        }
    }

    fn manifest(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            source: String::new(),
            architecture: "bert".into(),
            dimension: 4,
            pooling: Some(Pooling::Mean),
            output: None,
            dense: Vec::new(),
            normalize: true,
            max_seq_length: 16,
            similarity: Similarity::Cosine,
            query_prefix: String::new(),
            passage_prefix: String::new(),
            precision: Precision::Fp32,
            fingerprint: String::new(),
        }
    }

    #[test]
    fn fingerprint_tracks_files_and_fields_but_not_name() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join(MODEL_FILE), b"onnx bytes").unwrap();
        std::fs::write(dir.join(TOKENIZER_FILE), b"{}").unwrap();
        let mut m = manifest("a");
        m.fingerprint = compute_fingerprint(dir, &m).unwrap();
        // Indexes store fingerprints: a model without Dense layers or a named output keeps the
        // one it always had (SHA-256 of the two files and the fields, as first written).
        assert_eq!(
            m.fingerprint,
            "sha256:6254d66d63989a3331122f488594696e47040f5b5470fe88e7278c68672d4cdd"
        );
        m.verify_files(dir).unwrap();
        m.name = "b".into();
        m.verify_files(dir).unwrap();
        m.save(dir).unwrap();
        assert_eq!(Manifest::load(dir).unwrap(), m);
        let saved = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert!(
            !saved.contains("dense") && !saved.contains("output"),
            "{saved}"
        );

        m.max_seq_length = 8;
        assert!(matches!(
            m.verify_files(dir),
            Err(EncoderError::FingerprintMismatch { .. })
        ));
        m.max_seq_length = 16;
        std::fs::write(dir.join(MODEL_FILE), b"other bytes").unwrap();
        assert!(matches!(
            m.verify_files(dir),
            Err(EncoderError::FingerprintMismatch { .. })
        ));
        std::fs::remove_file(dir.join(MODEL_FILE)).unwrap();
        assert!(matches!(
            m.verify_files(dir),
            Err(EncoderError::MissingFile { .. })
        ));
    }

    #[test]
    fn fingerprint_covers_dense_layers_and_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let dir = dir.path();
        std::fs::write(dir.join(MODEL_FILE), b"onnx bytes").unwrap();
        std::fs::write(dir.join(TOKENIZER_FILE), b"{}").unwrap();
        let plain = compute_fingerprint(dir, &manifest("a")).unwrap();

        let mut pooled = manifest("a");
        pooled.pooling = None;
        pooled.output = Some("sentence_embedding".into());
        let named = compute_fingerprint(dir, &pooled).unwrap();
        pooled.output = Some("other".into());
        assert_ne!(compute_fingerprint(dir, &pooled).unwrap(), named);
        assert_ne!(named, plain);
        pooled.save(dir).unwrap();
        let saved = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert!(saved.contains(r#""pooling": "in_graph""#), "{saved}");
        assert_eq!(Manifest::load(dir).unwrap(), pooled);
        assert_eq!(pooled.pooling_name(), "in_graph");
        pooled.pooling = Some(Pooling::MeanSqrtLen);
        assert_eq!(pooled.pooling_name(), "mean_sqrt_len");

        let mut m = manifest("a");
        m.dimension = 2;
        m.dense = vec![DenseLayer {
            in_features: 4,
            out_features: 2,
            bias: true,
            activation: Activation::Tanh,
        }];
        assert!(
            matches!(
                compute_fingerprint(dir, &m),
                Err(EncoderError::MissingFile { .. })
            ),
            "the weights are part of the model"
        );
        std::fs::write(dir.join(DENSE_FILE), b"weights").unwrap();
        m.fingerprint = compute_fingerprint(dir, &m).unwrap();
        m.save(dir).unwrap();
        assert_eq!(Manifest::load(dir).unwrap(), m);
        let saved = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert!(saved.contains(r#""activation": "tanh""#), "{saved}");

        std::fs::write(dir.join(DENSE_FILE), b"other weights").unwrap();
        assert!(matches!(
            m.verify_files(dir),
            Err(EncoderError::FingerprintMismatch { .. })
        ));
        std::fs::write(dir.join(DENSE_FILE), b"weights").unwrap();
        m.verify_files(dir).unwrap();
        m.dense[0].activation = Activation::Relu;
        assert!(matches!(
            m.verify_files(dir),
            Err(EncoderError::FingerprintMismatch { .. })
        ));

        // The layers must chain up to the dimension.
        m.dimension = 3;
        m.save(dir).unwrap();
        assert!(matches!(
            Manifest::load(dir),
            Err(EncoderError::InvalidManifest { .. })
        ));
    }
}
