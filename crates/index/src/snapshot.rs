//! The snapshot: a FAISS index with the row id (and text hash) of each of its vectors, as one
//! byte string that is the server's cache file and, but for the vectors kept in segments and the
//! HNSW graph kept packed (see [`crate::packed_graph`]), what the index pages hold.
//!
//! ```text
//! offset                size      field
//!      0                f         FAISS's own serialisation of the bare index (labels = positions)
//!      f                0-7       zero padding to a multiple of 8
//!      align8(f)        8 * n     row id of each position (i64 LE)
//!      ... + 8n         8 * h     text hash of each position (u64 LE; h = n for text indexes, else 0)
//!      ... + 8h         64        footer:
//!                                   0  8  magic b"SEMSNAP1"
//!                                   8  4  format version (u32 LE) = 1
//!                                  12  4  reserved, 0
//!                                  16 16  cache key (unique per index generation)
//!                                  32  8  f (u64 LE)
//!                                  40  8  n (u64 LE)
//!                                  48  8  h (u64 LE)
//!                                  56  8  xxh3-64 of every byte before this field
//! ```
//!
//! FAISS's payload comes first because FAISS maps a file from its start (see
//! [`crate::io`]); everything this crate needs to check comes last, so that a truncated file
//! has no footer. FAISS's reader trusts the contents of what it reads, so the checksum is
//! verified before FAISS sees a byte (for a mapped file: see [`Snapshot::open_file`]).

use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::index::Faiss;
use crate::{IndexError, Metric, SearchParams, VectorIndex};

/// Names one generation of one index, across servers (a primary and its standbys share it):
/// random, so that neither restarting generation numbers nor reused relfilenodes can make two
/// different snapshots share a name.
pub type CacheKey = [u8; 16];

/// The cache key of an index generation: the generation number first (big-endian, so that
/// keys and their file names order as generations do), then random bytes, which tell apart two
/// writes of the same generation number (one of them rolled back or lost in a crash).
pub fn generation_key(generation: u64, random: [u8; 8]) -> CacheKey {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&generation.to_be_bytes());
    key[8..].copy_from_slice(&random);
    key
}

/// The generation a [`generation_key`] was made for.
pub fn key_generation(key: &CacheKey) -> u64 {
    u64::from_be_bytes(key[..8].try_into().expect("16-byte key"))
}

/// A key in hexadecimal, as the metapage and file names hold it.
pub fn key_hex(key: &CacheKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

const MAGIC: &[u8; 8] = b"SEMSNAP1";
const VERSION: u32 = 1;
pub const FOOTER_LEN: usize = 64;

/// What a snapshot's footer says about its layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub key: CacheKey,
    faiss_len: u64,
    vectors: u64,
    hashes: u64,
    checksum: u64,
}

fn align8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

impl Layout {
    fn ids_at(&self) -> u64 {
        align8(self.faiss_len)
    }

    fn hashes_at(&self) -> u64 {
        self.ids_at() + 8 * self.vectors
    }

    fn footer_at(&self) -> u64 {
        self.hashes_at() + 8 * self.hashes
    }

    /// Number of vectors in the snapshot.
    pub fn vectors(&self) -> u64 {
        self.vectors
    }

    /// Reads and checks the footer of a snapshot of `total_len` bytes whose last
    /// [`FOOTER_LEN`] bytes are `footer`: magic, version and sizes (not the checksum).
    pub fn parse(total_len: u64, footer: &[u8]) -> Result<Layout, IndexError> {
        let corrupt = |m: &str| Err(IndexError::Corrupt(format!("snapshot {m}")));
        if total_len < FOOTER_LEN as u64 || footer.len() != FOOTER_LEN {
            return corrupt("is shorter than its footer (truncated?)");
        }
        if &footer[..8] != MAGIC {
            return corrupt("has no footer (truncated or not a snapshot)");
        }
        let u32_at = |at: usize| u32::from_le_bytes(footer[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(footer[at..at + 8].try_into().expect("8"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(IndexError::Corrupt(format!(
                "snapshot format version {version} is not supported (expected {VERSION})"
            )));
        }
        let layout = Layout {
            key: footer[16..32].try_into().expect("16"),
            faiss_len: u64_at(32),
            vectors: u64_at(40),
            hashes: u64_at(48),
            checksum: u64_at(56),
        };
        if layout.faiss_len == 0 || (layout.hashes != 0 && layout.hashes != layout.vectors) {
            return corrupt("footer is inconsistent");
        }
        let expected = layout
            .vectors
            .checked_mul(8 + 8 * u64::from(layout.hashes != 0))
            .and_then(|t| t.checked_add(align8(layout.faiss_len)))
            .and_then(|t| t.checked_add(FOOTER_LEN as u64));
        if expected != Some(total_len) {
            return corrupt("size does not match its footer (truncated?)");
        }
        Ok(layout)
    }

    /// Checks the checksum over the whole snapshot.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), IndexError> {
        let body = bytes
            .len()
            .checked_sub(8)
            .ok_or_else(|| IndexError::Corrupt("snapshot is shorter than its footer".into()))?;
        if xxhash_rust::xxh3::xxh3_64(&bytes[..body]) != self.checksum {
            return Err(IndexError::Corrupt("snapshot checksum mismatch".into()));
        }
        Ok(())
    }
}

/// A writer that counts and checksums what goes through it, for the footer.
struct Summing<'a> {
    out: &'a mut dyn Write,
    len: u64,
    hash: xxhash_rust::xxh3::Xxh3,
}

impl Write for Summing<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(bytes)?;
        self.hash.update(&bytes[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

impl<'a> Summing<'a> {
    fn new(out: &'a mut dyn Write) -> Self {
        Summing {
            out,
            len: 0,
            hash: xxhash_rust::xxh3::Xxh3::new(),
        }
    }

    /// Zeros up to the next multiple of 8 bytes.
    fn pad(&mut self) -> std::io::Result<()> {
        let padding = (align8(self.len) - self.len) as usize;
        self.write_all(&[0u8; 8][..padding])
    }

    /// Ends a snapshot whose payload (`payload_len` bytes, padded) and tables went through.
    fn footer(
        mut self,
        key: &CacheKey,
        payload_len: u64,
        ids: u64,
        hashes: u64,
    ) -> std::io::Result<()> {
        self.write_all(MAGIC)?;
        self.write_all(&VERSION.to_le_bytes())?;
        self.write_all(&0u32.to_le_bytes())?;
        self.write_all(key)?;
        for v in [payload_len, ids, hashes] {
            self.write_all(&v.to_le_bytes())?;
        }
        let checksum = self.hash.digest();
        self.out.write_all(&checksum.to_le_bytes())
    }
}

fn write_error(e: std::io::Error) -> IndexError {
    IndexError::faiss("write snapshot", e.to_string())
}

/// Serialises `index` with its ids, the text hash of each vector (`text_hashes` empty for
/// real[] indexes, else one per vector) and the cache key of the generation it belongs to,
/// into `out` as it goes (nothing of the size of the index is copied in memory).
pub fn encode_snapshot_into(
    index: &VectorIndex,
    text_hashes: &[u64],
    key: &CacheKey,
    out: &mut dyn Write,
) -> Result<(), IndexError> {
    let n = index.len();
    if !text_hashes.is_empty() && text_hashes.len() != n {
        return Err(IndexError::invalid(format!(
            "{} text hashes for {n} vectors",
            text_hashes.len()
        )));
    }
    let mut out = Summing::new(out);
    index.faiss.write_into(&mut out)?;
    let faiss_len = out.len;
    out.pad().map_err(write_error)?;
    for id in &index.ids {
        out.write_all(&id.to_le_bytes()).map_err(write_error)?;
    }
    for hash in text_hashes {
        out.write_all(&hash.to_le_bytes()).map_err(write_error)?;
    }
    out.footer(key, faiss_len, n as u64, text_hashes.len() as u64)
        .map_err(write_error)
}

/// [`encode_snapshot_into`] a new buffer.
pub fn encode_snapshot(
    index: &VectorIndex,
    text_hashes: &[u64],
    key: &CacheKey,
) -> Result<Vec<u8>, IndexError> {
    let mut out = Vec::new();
    encode_snapshot_into(index, text_hashes, key, &mut out)?;
    Ok(out)
}

/// Where the vectors of a snapshot of `total_len` bytes lie in it, when its FAISS index keeps
/// them as flat codes of `dim` floats (Flat, HNSW over Flat: FAISS's serialisation ends with
/// them, after their count): (start, bytes). `read_at` reads the snapshot at an offset. None
/// when the bytes there are not such codes (another kind of index).
pub fn flat_vectors_range(
    total_len: u64,
    dim: usize,
    read_at: impl Fn(u64, &mut [u8]) -> std::io::Result<()>,
) -> Option<(u64, u64)> {
    let mut footer = [0u8; FOOTER_LEN];
    read_at(total_len.checked_sub(FOOTER_LEN as u64)?, &mut footer).ok()?;
    let layout = Layout::parse(total_len, &footer).ok()?;
    let floats = layout.vectors.checked_mul(dim as u64)?;
    let len = floats.checked_mul(4)?;
    let at = layout.faiss_len.checked_sub(len)?;
    let mut count = [0u8; 8];
    read_at(at.checked_sub(8)?, &mut count).ok()?;
    (len > 0 && u64::from_le_bytes(count) == floats).then_some((at, len))
}

/// A snapshot of another kind of index (a lexical one): its own non-empty payload (the
/// concatenation of `parts`) in place of FAISS's, no id or hash tables, the same footer, into
/// `out`. The same pages, files, checks and file protocol then serve it.
pub fn seal_into(parts: &[&[u8]], key: &CacheKey, out: &mut dyn Write) -> Result<(), IndexError> {
    let mut out = Summing::new(out);
    let mut len = 0u64;
    for part in parts {
        out.write_all(part).map_err(write_error)?;
        len += part.len() as u64;
    }
    out.pad().map_err(write_error)?;
    out.footer(key, len, 0, 0).map_err(write_error)
}

/// [`seal_into`] a new buffer.
pub fn seal(payload: &[u8], key: &CacheKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(align8(payload.len() as u64) as usize + FOOTER_LEN);
    seal_into(&[payload], key, &mut out).expect("writing to memory does not fail");
    out
}

/// Maps the snapshot file `path` read-only and checks its footer (and, when asked, the
/// checksum over the whole file).
fn map_checked(
    path: &Path,
    verify_checksum: bool,
) -> Result<(File, memmap2::Mmap, Layout), IndexError> {
    let io_error = |e: std::io::Error| IndexError::Corrupt(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len < FOOTER_LEN as u64 {
        return Err(IndexError::Corrupt(format!(
            "{}: snapshot is shorter than its footer (truncated?)",
            path.display()
        )));
    }
    // SAFETY: the file is never written once published (new snapshots get new files), so
    // the mapping does not change under us.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error)?;
    let layout = Layout::parse(len, &map[map.len() - FOOTER_LEN..])?;
    if verify_checksum {
        layout.verify(&map)?;
    }
    Ok((file, map, layout))
}

enum SealedBytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

/// A [`seal`]ed snapshot, checked: held in private memory, or mapped from its file.
pub struct Sealed {
    bytes: SealedBytes,
    layout: Layout,
}

impl Sealed {
    fn checked(bytes: SealedBytes, layout: Layout) -> Result<Sealed, IndexError> {
        if layout.vectors != 0 || layout.hashes != 0 {
            return Err(IndexError::Corrupt(
                "snapshot holds a faiss index, not a sealed payload".into(),
            ));
        }
        Ok(Sealed { bytes, layout })
    }

    /// A sealed snapshot read from the index pages (footer and checksum checked).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Sealed, IndexError> {
        let layout = check_snapshot(&bytes)?;
        Self::checked(SealedBytes::Owned(bytes), layout)
    }

    /// Maps a sealed snapshot's file (see [`Snapshot::open_file`] for what is checked when).
    pub fn open_file(path: &Path, verify_checksum: bool) -> Result<Sealed, IndexError> {
        let (_file, map, layout) = map_checked(path, verify_checksum)?;
        Self::checked(SealedBytes::Mapped(map), layout)
    }

    /// The payload, as given to [`seal`].
    pub fn payload(&self) -> &[u8] {
        let len = self.layout.faiss_len as usize;
        match &self.bytes {
            SealedBytes::Owned(b) => &b[..len],
            SealedBytes::Mapped(m) => &m[..len],
        }
    }

    pub fn key(&self) -> &CacheKey {
        &self.layout.key
    }

    /// Whether it is mapped from the server's file (else a private copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, SealedBytes::Mapped(_))
    }
}

/// Checks a whole snapshot held in memory (footer, sizes, checksum) and returns its layout.
pub fn check_snapshot(bytes: &[u8]) -> Result<Layout, IndexError> {
    let footer = bytes
        .len()
        .checked_sub(FOOTER_LEN)
        .map(|at| &bytes[at..])
        .unwrap_or(&[]);
    let layout = Layout::parse(bytes.len() as u64, footer)?;
    layout.verify(bytes)?;
    Ok(layout)
}

/// `faiss`, checked to hold as many vectors as the snapshot's footer says.
fn counted(faiss: Faiss, layout: &Layout) -> Result<Faiss, IndexError> {
    if faiss.len() as u64 != layout.vectors {
        return Err(IndexError::Corrupt(
            "snapshot footer and faiss index disagree on the vector count".into(),
        ));
    }
    Ok(faiss)
}

/// A whole snapshot held in memory, checked, with its FAISS index read into private memory.
fn read_private(bytes: &[u8]) -> Result<(Layout, Faiss), IndexError> {
    let layout = check_snapshot(bytes)?;
    let faiss = counted(
        Faiss::from_bytes(&bytes[..layout.faiss_len as usize])?,
        &layout,
    )?;
    Ok((layout, faiss))
}

fn words(bytes: &[u8]) -> impl Iterator<Item = [u8; 8]> + '_ {
    bytes
        .chunks_exact(8)
        .map(|c| c.try_into().expect("8 bytes"))
}

impl VectorIndex {
    /// A mutable private copy of a snapshot (to add to it, or to read its vectors back), with
    /// its text hashes (empty for real[] indexes).
    pub fn from_snapshot(bytes: &[u8]) -> Result<(VectorIndex, Vec<u64>), IndexError> {
        let (layout, faiss) = read_private(bytes)?;
        let ids = words(&bytes[layout.ids_at() as usize..layout.hashes_at() as usize])
            .map(i64::from_le_bytes)
            .collect();
        let hashes = words(&bytes[layout.hashes_at() as usize..layout.footer_at() as usize])
            .map(u64::from_le_bytes)
            .collect();
        Ok((VectorIndex { faiss, ids }, hashes))
    }
}

/// Where a [`Snapshot`]'s ids and text hashes are read from.
enum Table {
    /// Private memory: the ids and hashes, copied.
    Owned(Vec<u8>),
    /// The cache file, mapped read-only and shared with every other process that maps it.
    Mapped(memmap2::Mmap),
}

/// A search-only snapshot: FAISS can search it but nothing can add to it (adding to a mapped
/// FAISS index aborts the process, so this type has no way to).
pub struct Snapshot {
    faiss: Faiss,
    table: Table,
    layout: Layout,
}

/// One search result of a [`Snapshot`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SnapshotHit {
    pub id: i64,
    /// FAISS's score (see [`VectorIndex::search`]).
    pub score: f32,
    /// The row's text hash, for text indexes.
    pub text_hash: Option<u64>,
}

impl Snapshot {
    /// Loads a snapshot held in memory into private memory (checksum checked first).
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, IndexError> {
        let (layout, faiss) = read_private(bytes)?;
        let table =
            Table::Owned(bytes[layout.ids_at() as usize..layout.footer_at() as usize].to_vec());
        Ok(Snapshot {
            faiss,
            table,
            layout,
        })
    }

    /// Maps the snapshot file `path` read-only: FAISS's vectors and graph, and the ids and
    /// hashes, stay in the page cache, one copy for every process. The footer and sizes are
    /// always checked; the checksum, which reads the whole file, only when `verify_checksum`
    /// (see [`crate::cache_file`] for when that is needed). FAISS maps the very file that was
    /// checked (through /proc/self/fd), even if another process renames a new one over it.
    pub fn open_file(path: &Path, verify_checksum: bool) -> Result<Snapshot, IndexError> {
        let (file, map, layout) = map_checked(path, verify_checksum)?;
        let faiss = {
            use std::os::fd::AsRawFd;
            counted(
                Faiss::mapped(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?,
                &layout,
            )?
        };
        Ok(Snapshot {
            faiss,
            table: Table::Mapped(map),
            layout,
        })
    }

    fn table(&self, from: u64, to: u64) -> &[u8] {
        match &self.table {
            Table::Owned(bytes) => {
                let base = self.layout.ids_at();
                &bytes[(from - base) as usize..(to - base) as usize]
            }
            Table::Mapped(map) => &map[from as usize..to as usize],
        }
    }

    fn word(&self, from: u64, pos: usize) -> [u8; 8] {
        let at = from + 8 * pos as u64;
        self.table(at, at + 8).try_into().expect("8 bytes")
    }

    pub fn key(&self) -> &CacheKey {
        &self.layout.key
    }

    /// Whether the snapshot is mapped from the cache file (else it is a private copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.table, Table::Mapped(_))
    }

    pub fn len(&self) -> usize {
        self.layout.vectors as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.faiss.dim()
    }

    pub fn metric(&self) -> Metric {
        self.faiss.metric()
    }

    /// The row id of every vector, in position order.
    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        words(self.table(self.layout.ids_at(), self.layout.hashes_at())).map(i64::from_le_bytes)
    }

    /// The `k` nearest vectors to `query` whose positions are not `dead`, best first (see
    /// [`VectorIndex::search`]).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
        dead: Option<&crate::DeadPositions>,
    ) -> Result<Vec<SnapshotHit>, IndexError> {
        let has_hashes = self.layout.hashes != 0;
        Ok(self
            .faiss
            .search(query, k, params, dead)?
            .into_iter()
            .map(|(pos, score)| SnapshotHit {
                id: i64::from_le_bytes(self.word(self.layout.ids_at(), pos)),
                score,
                text_hash: has_hashes
                    .then(|| u64::from_le_bytes(self.word(self.layout.hashes_at(), pos))),
            })
            .collect())
    }
}
