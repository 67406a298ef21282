use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::EncoderError;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const MODEL_FILE: &str = "model.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

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

/// How the model's vectors are meant to be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Similarity {
    Cosine,
    Dot,
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
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub similarity: Similarity,
    /// Prepended to queries (asymmetric models such as E5 use "query: ").
    #[serde(default)]
    pub query_prefix: String,
    /// Prepended to documents.
    #[serde(default)]
    pub passage_prefix: String,
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
        if manifest.dimension == 0 || manifest.max_seq_length < 2 {
            return Err(EncoderError::InvalidManifest {
                path,
                reason: "dimension must be positive and max_seq_length at least 2".into(),
            });
        }
        Ok(manifest)
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

/// A content fingerprint of a model version: SHA-256 over model.onnx, tokenizer.json and the
/// manifest fields that change the vectors (not the name, so a renamed copy keeps its identity).
/// An index stores it, so that a model changed under an index is detected instead of silently
/// mixing two vector spaces.
pub fn compute_fingerprint(model_dir: &Path, manifest: &Manifest) -> Result<String, EncoderError> {
    let mut hasher = Sha256::new();
    for file in [MODEL_FILE, TOKENIZER_FILE] {
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
    let fields = format!(
        "{}|{}|{:?}|{}|{}|{:?}|{}|{}",
        manifest.architecture,
        manifest.dimension,
        manifest.pooling,
        manifest.normalize,
        manifest.max_seq_length,
        manifest.similarity,
        manifest.query_prefix,
        manifest.passage_prefix
    );
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

    #[test]
    fn fingerprint_tracks_files_and_fields_but_not_name() {
        let dir = std::env::temp_dir().join(format!("semantic-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MODEL_FILE), b"onnx bytes").unwrap();
        std::fs::write(dir.join(TOKENIZER_FILE), b"{}").unwrap();
        let mut m = Manifest {
            name: "a".into(),
            source: String::new(),
            architecture: "bert".into(),
            dimension: 4,
            pooling: Pooling::Mean,
            normalize: true,
            max_seq_length: 16,
            similarity: Similarity::Cosine,
            query_prefix: String::new(),
            passage_prefix: String::new(),
            fingerprint: String::new(),
        };
        m.fingerprint = compute_fingerprint(&dir, &m).unwrap();
        m.verify_files(&dir).unwrap();
        m.name = "b".into();
        m.verify_files(&dir).unwrap();
        m.save(&dir).unwrap();
        assert_eq!(Manifest::load(&dir).unwrap(), m);

        m.max_seq_length = 8;
        assert!(matches!(
            m.verify_files(&dir),
            Err(EncoderError::FingerprintMismatch { .. })
        ));
        m.max_seq_length = 16;
        std::fs::write(dir.join(MODEL_FILE), b"other bytes").unwrap();
        assert!(matches!(
            m.verify_files(&dir),
            Err(EncoderError::FingerprintMismatch { .. })
        ));
        std::fs::remove_file(dir.join(MODEL_FILE)).unwrap();
        assert!(matches!(
            m.verify_files(&dir),
            Err(EncoderError::MissingFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
