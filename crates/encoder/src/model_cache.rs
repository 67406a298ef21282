//! The cache directory of [`crate::EncoderOptions::cache_dir`]: what one process worked out about
//! a model version, kept for the processes that load it next. Everything is named by the
//! manifest fingerprint, and two things are kept:
//!
//! - a *stamp*: "these exact files (by size, times, inode and device) hashed to the
//!   fingerprint", so that a later load of unchanged files skips hashing them;
//! - an *optimised copy*: ONNX Runtime's optimised graph, with the weights (and the weights
//!   pre-packed for the CPU kernels) in a separate file that ONNX Runtime memory-maps, so every
//!   process shares one copy through the page cache instead of optimising model.onnx into
//!   private memory of its own.
//!
//! Files are written under temporary names, flushed, then renamed into place, so no process
//! ever reads half a file; a stamp that cannot be read counts as absent, and a copy that ONNX
//! Runtime cannot load is discarded and made again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::{DENSE_FILE, MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE};

/// The graph file of an optimised copy, and the file holding its weights.
pub(crate) const COPY_GRAPH_FILE: &str = "model.onnx";
pub(crate) const COPY_WEIGHTS_FILE: &str = "weights.bin";

/// Temporary files older than this are left behind by a process that died while writing.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// What a file is, as far as can be told without reading it: writing, truncating or replacing
/// it changes at least one of these (short of a same-size rewrite within the file system's
/// clock tick of the previous write, which installed models do not see).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileIdentity {
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: u64,
    device: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileIdentity {
            size: m.size(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
            inode: m.ino(),
            device: m.dev(),
        })
    }

    /// Without inode numbers and change times a copy or an in-place rewrite could go unseen,
    /// so stamps are never trusted there.
    #[cfg(not(unix))]
    fn of(_path: &Path) -> std::io::Result<Self> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The identities of the files a fingerprint covers (and of the manifest, whose fields it
/// covers too), keyed by file name.
pub(crate) type ModelFiles = BTreeMap<String, FileIdentity>;

/// The identities of a model directory's files, dense.safetensors among them where there is
/// one (only models with Dense layers have it).
pub(crate) fn model_file_identities(model_dir: &Path) -> std::io::Result<ModelFiles> {
    let dense = Some(DENSE_FILE).filter(|file| model_dir.join(file).exists());
    [MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE]
        .into_iter()
        .chain(dense)
        .map(|name| Ok((name.to_string(), FileIdentity::of(&model_dir.join(name))?)))
        .collect()
}

/// A stamp's contents.
#[derive(Serialize, Deserialize)]
struct VerifiedStamp {
    fingerprint: String,
    files: ModelFiles,
}

/// The cache directory, for one model version.
pub(crate) struct ModelCache {
    dir: PathBuf,
    /// The fingerprint's hex digits: the first part of every file name.
    stem: String,
    fingerprint: String,
}

impl ModelCache {
    /// Creates `dir` if needed. Fails (with a reason for the log) when it cannot be created or
    /// the fingerprint is not the `sha256:<hex>` that [`crate::compute_fingerprint`] writes (a
    /// hand-edited one must never become a path).
    pub(crate) fn open(dir: &Path, fingerprint: &str) -> Result<Self, String> {
        let stem = fingerprint
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| format!("unusable fingerprint {fingerprint:?}"))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(ModelCache {
            dir: dir.to_path_buf(),
            stem: stem.to_ascii_lowercase(),
            fingerprint: fingerprint.to_string(),
        })
    }

    pub(crate) fn stamp_path(&self) -> PathBuf {
        self.dir.join(format!("{}.verified.json", self.stem))
    }

    /// Whether a stamp says that files with exactly these identities match the fingerprint.
    pub(crate) fn is_verified(&self, files: &ModelFiles) -> bool {
        let Ok(text) = std::fs::read(self.stamp_path()) else {
            return false;
        };
        serde_json::from_slice::<VerifiedStamp>(&text)
            .is_ok_and(|stamp| stamp.fingerprint == self.fingerprint && stamp.files == *files)
    }

    /// Records that files with these identities were hashed and matched the fingerprint.
    pub(crate) fn record_verified(&self, files: &ModelFiles) -> std::io::Result<()> {
        let stamp = VerifiedStamp {
            fingerprint: self.fingerprint.clone(),
            files: files.clone(),
        };
        let text = serde_json::to_vec_pretty(&stamp).expect("a stamp always serialises");
        let final_path = self.stamp_path();
        let temp = temporary_name(&final_path);
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temp, &final_path)?;
            sync_dir(&self.dir)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// The folder of the optimised copy made with `settings` (see [`copy_settings`]).
    pub(crate) fn optimized_copy(&self, settings: &str) -> PathBuf {
        self.dir.join(format!("{}-{settings}", self.stem))
    }

    /// A new empty folder to write an optimised copy into before [`ModelCache::publish`]; also
    /// removes what earlier copies of this model version left behind.
    pub(crate) fn new_copy_folder(&self, copy: &Path) -> std::io::Result<PathBuf> {
        self.remove_leftovers(copy);
        let temp = temporary_name(copy);
        std::fs::create_dir(&temp)?;
        Ok(temp)
    }

    /// Flushes the finished copy in `temp` and renames it to `copy`. A copy that another
    /// process published first is kept, and `temp` removed.
    pub(crate) fn publish(&self, temp: &Path, copy: &Path) -> std::io::Result<()> {
        // Every file ONNX Runtime wrote: a graph without large tensors has no weights file.
        let flushed = (|| {
            for entry in std::fs::read_dir(temp)? {
                File::open(entry?.path())?.sync_all()?;
            }
            sync_dir(temp)
        })();
        if let Err(e) = flushed {
            self.discard(temp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(temp, copy) {
            self.discard(temp);
            if !copy.is_dir() {
                return Err(e);
            }
        }
        sync_dir(&self.dir)
    }

    /// Removes a copy (or an unfinished one). It is renamed first, so that no process can
    /// open it half deleted; processes that have it open or mapped keep their files.
    pub(crate) fn discard(&self, folder: &Path) {
        let doomed = temporary_name(folder);
        if std::fs::rename(folder, &doomed).is_ok() {
            let _ = std::fs::remove_dir_all(&doomed);
        }
    }

    /// Copies of this model version made with other settings (another ONNX Runtime build or
    /// another CPU), and temporary folders abandoned by processes that died while writing.
    fn remove_leftovers(&self, copy: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}-", self.stem);
        let current = copy.file_name();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                continue;
            };
            if !name_str.starts_with(&prefix) || Some(name.as_os_str()) == current {
                continue;
            }
            let abandoned = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > ABANDONED_AFTER);
            if !is_temporary(name_str) || abandoned {
                self.discard(&entry.path());
            }
        }
    }
}

/// What an optimised copy depends on besides the model: the ONNX Runtime build (its graph
/// format and fused operators) and the CPU (optimisations may pick layouts for its vector
/// width). A short hash of them names the copy, so a change of either makes a new one.
pub(crate) fn copy_settings(optimization: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [
        "semantic optimised copy v1",
        ort::info(),
        optimization,
        &cpu_features(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn cpu_features() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detected {
            ($($feature:tt),*) => {
                [$((($feature), std::arch::is_x86_feature_detected!($feature))),*]
            };
        }
        detected!(
            "sse4.1",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avx512bf16",
            "avx512fp16",
            "avxvnni"
        )
        .iter()
        .filter(|(_, present)| *present)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(",")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// A name next to `path` that no other process or thread uses.
fn temporary_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".tmp-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

fn is_temporary(name: &str) -> bool {
    name.contains(".tmp-")
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str =
        "sha256:e65620d1277009b4becc5957a4d73b61f3e7c8d6f9a5286a04558fff9ccf5edf";

    fn model_dir(root: &Path) -> PathBuf {
        let dir = root.join("model");
        std::fs::create_dir_all(&dir).unwrap();
        for file in [MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE] {
            std::fs::write(dir.join(file), file).unwrap();
        }
        dir
    }

    #[test]
    fn fingerprints_that_are_not_hashes_never_become_paths() {
        let root = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "sha256:",
            "sha256:../../etc",
            "md5:abc",
            &FINGERPRINT[..70],
        ] {
            assert!(ModelCache::open(root.path(), bad).is_err(), "{bad}");
        }
        assert!(ModelCache::open(root.path(), FINGERPRINT).is_ok());
    }

    #[test]
    fn a_stamp_holds_while_the_files_are_unchanged() {
        let root = tempfile::tempdir().unwrap();
        let dir = model_dir(root.path());
        let cache = ModelCache::open(&root.path().join("cache"), FINGERPRINT).unwrap();
        let files = model_file_identities(&dir).unwrap();
        assert!(!cache.is_verified(&files));
        cache.record_verified(&files).unwrap();
        assert!(cache.is_verified(&model_file_identities(&dir).unwrap()));

        // Touched: no longer known.
        File::options()
            .write(true)
            .open(dir.join(TOKENIZER_FILE))
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH)
            .unwrap();
        assert!(!cache.is_verified(&model_file_identities(&dir).unwrap()));
        cache
            .record_verified(&model_file_identities(&dir).unwrap())
            .unwrap();
        assert!(cache.is_verified(&model_file_identities(&dir).unwrap()));

        // Replaced by a copy with the same size, contents and times: no longer known either.
        let copy = root.path().join("copy");
        std::fs::copy(dir.join(MODEL_FILE), &copy).unwrap();
        let modified = std::fs::metadata(dir.join(MODEL_FILE))
            .unwrap()
            .modified()
            .unwrap();
        File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        std::fs::rename(&copy, dir.join(MODEL_FILE)).unwrap();
        assert!(!cache.is_verified(&model_file_identities(&dir).unwrap()));

        // Another fingerprint's stamp does not count.
        let files = model_file_identities(&dir).unwrap();
        cache.record_verified(&files).unwrap();
        let other = ModelCache {
            fingerprint: "sha256:other".into(),
            ..ModelCache::open(&root.path().join("cache"), FINGERPRINT).unwrap()
        };
        assert!(!other.is_verified(&files));

        // A damaged stamp is no stamp.
        std::fs::write(cache.stamp_path(), b"{\"fingerprint\": ").unwrap();
        assert!(!cache.is_verified(&files));
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| is_temporary(n))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_stamp_covers_the_dense_layers_weights() {
        let root = tempfile::tempdir().unwrap();
        let dir = model_dir(root.path());
        let cache = ModelCache::open(&root.path().join("cache"), FINGERPRINT).unwrap();
        std::fs::write(dir.join(DENSE_FILE), b"weights").unwrap();
        let files = model_file_identities(&dir).unwrap();
        assert!(files.contains_key(DENSE_FILE));
        cache.record_verified(&files).unwrap();
        std::fs::write(dir.join(DENSE_FILE), b"other weights").unwrap();
        assert!(!cache.is_verified(&model_file_identities(&dir).unwrap()));
    }

    #[test]
    fn new_copies_clear_out_copies_for_other_settings_and_abandoned_ones() {
        let root = tempfile::tempdir().unwrap();
        let cache = ModelCache::open(root.path(), FINGERPRINT).unwrap();
        let current = cache.optimized_copy("current");
        let old = cache.optimized_copy("old");
        std::fs::create_dir(&old).unwrap();
        let fresh_temp = cache.new_copy_folder(&current).unwrap();
        assert!(!old.exists());
        // Another process's copy in progress is left alone...
        let second = cache.new_copy_folder(&current).unwrap();
        assert!(fresh_temp.is_dir());
        // ...until it is old enough to be abandoned.
        File::open(&fresh_temp)
            .unwrap()
            .set_modified(SystemTime::now() - 2 * ABANDONED_AFTER)
            .unwrap();
        cache.new_copy_folder(&current).unwrap();
        assert!(!fresh_temp.exists());
        assert!(second.is_dir());
    }
}
