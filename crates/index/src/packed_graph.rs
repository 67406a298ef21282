//! The page form of an HNSW graph, without FAISS's empty neighbour slots.
//!
//! FAISS serialises an HNSW index's neighbour table with a fixed number of slots per node and
//! level (2M at level 0, M above), the unused ones set to -1, after an offsets array that the
//! nodes' levels determine. The neighbour-selection heuristic leaves many slots unused: about
//! half of them on the clustered vectors of the benchmarks (16 used of 33 a node for HNSW16),
//! so the slots and offsets are about 75 bytes of the 145 a node's graph takes, written again
//! by every fold. The snapshot chain keeps the graph with each list cut to its used slots and no
//! offsets; readers put FAISS's bytes back, byte for byte, as they stream the chain, so the
//! snapshot file, its checksum and FAISS's reader see exactly what FAISS wrote.
//!
//! A packed prefix of a snapshot (the bytes before its vectors, see
//! [`crate::layout::Meta::vectors_at`]):
//!
//! ```text
//! b"SEMHNSW1"
//! u64 head_len, u64 nodes, u64 levels + 1, i32 x (levels + 1)   cum_nneighbor_per_level
//! head: FAISS's bytes up to its offsets array (the nodes' levels last)
//! for each node, for each of its levels: u16 used, then `used` i32 neighbours
//!                                        (or u16::MAX, then every slot of the level)
//! the rest of the prefix, as FAISS wrote it
//! ```
//!
//! Integers are little-endian, as FAISS writes them on the machines PostgreSQL runs on here.

use std::io::{self, BufRead, BufReader, Read};

const MAGIC: &[u8; 8] = b"SEMHNSW1";
/// FAISS's tag of an HNSW index over flat storage.
const HNSW_FLAT: &[u8; 4] = b"IHNf";
/// A list stored with every slot (one whose unused slots are not all at its end).
const RAW_LIST: u16 = u16::MAX;
/// The most levels an HNSW graph has in practice is about log_M(n); FAISS's own limit is far
/// below this. Larger counts mean the bytes are not what this module expects.
const MAX_LEVELS: u64 = 64;
const UNUSED: [u8; 4] = (-1i32).to_le_bytes();
const OUT_CHUNK: usize = 1 << 16;

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("packed HNSW graph: {what}"),
    )
}

/// Buffers output and hands it on in large pieces.
struct Out<'a> {
    buf: Vec<u8>,
    sink: &'a mut dyn FnMut(&[u8]) -> io::Result<()>,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= OUT_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            (self.sink)(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn take<R: Read>(input: &mut R, head: &mut Vec<u8>, n: usize) -> io::Result<()> {
    let at = head.len();
    head.resize(at + n, 0);
    input.read_exact(&mut head[at..])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn i32s(bytes: &[u8]) -> Vec<i32> {
    bytes
        .chunks_exact(4)
        .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect()
}

/// Reads a FAISS vector (u64 count, then `count` items of `item` bytes) into `head`; returns
/// its count, refused above `max`.
fn take_vector<R: Read>(
    input: &mut R,
    head: &mut Vec<u8>,
    item: usize,
    max: u64,
) -> io::Result<Option<usize>> {
    take(input, head, 8)?;
    let count = u64_at(head, head.len() - 8);
    if count > max {
        return Ok(None);
    }
    take(input, head, count as usize * item)?;
    Ok(Some(count as usize))
}

/// The offsets FAISS derives from the nodes' levels (`levels[i]` is node i's top level + 1),
/// or None if a level is out of the table's range.
fn offsets(levels: &[i32], cum: &[i32]) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(levels.len() + 1);
    let mut at = 0u64;
    out.push(at);
    for &level in levels {
        let slots = *cum.get(usize::try_from(level).ok().filter(|&l| l >= 1)?)?;
        at += u64::try_from(slots).ok()?;
        out.push(at);
    }
    Some(out)
}

/// Slots of level `level` of a node.
fn level_slots(cum: &[i32], level: usize) -> usize {
    (cum[level + 1] - cum[level]) as usize
}

/// Copies the `len` bytes at the start of `input` to `out`, packing the HNSW graph they begin
/// with (an HNSW index over flat storage, as FAISS serialises it); other bytes are copied as
/// they are. Consumes exactly `len` bytes. Returns whether it packed.
pub fn pack(
    input: &mut dyn Read,
    len: u64,
    out: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    let mut input = BufReader::with_capacity(OUT_CHUNK, Read::take(input, len));
    let mut out = Out {
        buf: Vec::with_capacity(OUT_CHUNK),
        sink: out,
    };
    let packed = pack_graph(&mut input, &mut out)?;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        out.put(chunk)?;
        input.consume(n);
    }
    out.flush()?;
    Ok(packed)
}

/// Packs the graph at the start of `input` into `out`, or copies what it read of it when it is
/// not one to pack; the caller copies the rest.
fn pack_graph<R: Read>(input: &mut R, out: &mut Out) -> io::Result<bool> {
    let mut head = Vec::new();
    // fourcc, then FAISS's index header: d, ntotal, two dummies, is_trained, metric_type
    // (and metric_arg for metrics past inner product and L2).
    let fixed = 4 + 4 + 8 + 8 + 8 + 1 + 4;
    if !fill_head(input, &mut head, fixed)? || &head[..4] != HNSW_FLAT {
        out.put(&head)?;
        return Ok(false);
    }
    let ntotal = u64_at(&head, 8);
    let metric = i32::from_le_bytes(head[fixed - 4..fixed].try_into().expect("4 bytes"));
    if metric > 1 {
        take(input, &mut head, 4)?;
    }
    let give_up = |out: &mut Out, head: &[u8]| out.put(head).map(|_| false);
    // assign_probas (f64), cum_nneighbor_per_level (i32), levels (i32).
    if take_vector(input, &mut head, 8, MAX_LEVELS)?.is_none() {
        return give_up(out, &head);
    }
    let Some(count) = take_vector(input, &mut head, 4, MAX_LEVELS + 1)? else {
        return give_up(out, &head);
    };
    let cum = i32s(&head[head.len() - 4 * count..]);
    let Some(nodes) = take_vector(input, &mut head, 4, ntotal)? else {
        return give_up(out, &head);
    };
    if nodes as u64 != ntotal || cum.first() != Some(&0) || cum.windows(2).any(|w| w[1] < w[0]) {
        return give_up(out, &head);
    }
    let levels = i32s(&head[head.len() - 4 * nodes..]);
    // The offsets, which must be what the levels give, and the neighbours' count.
    let mut rest = Vec::new();
    let Some(stored) = take_vector(input, &mut rest, 8, ntotal + 1)? else {
        out.put(&head)?;
        out.put(&rest)?;
        return Ok(false);
    };
    take(input, &mut rest, 8)?;
    let derived = offsets(&levels, &cum);
    let matches = derived.as_ref().is_some_and(|derived| {
        stored == derived.len()
            && rest[8..8 + 8 * stored]
                .chunks_exact(8)
                .zip(derived)
                .all(|(b, &o)| u64::from_le_bytes(b.try_into().expect("8 bytes")) == o)
            && u64_at(&rest, rest.len() - 8) == *derived.last().expect("offsets start at 0")
    });
    if !matches {
        out.put(&head)?;
        out.put(&rest)?;
        return Ok(false);
    }
    drop(rest);

    out.put(MAGIC)?;
    for n in [head.len() as u64, nodes as u64, cum.len() as u64] {
        out.put(&n.to_le_bytes())?;
    }
    for c in &cum {
        out.put(&c.to_le_bytes())?;
    }
    out.put(&head)?;
    let mut list = Vec::new();
    for &node_levels in &levels {
        for level in 0..node_levels as usize {
            let slots = level_slots(&cum, level);
            list.resize(4 * slots, 0);
            input.read_exact(&mut list)?;
            let used = list
                .chunks_exact(4)
                .position(|s| s == UNUSED)
                .unwrap_or(slots);
            let tail_unused = list[4 * used..].chunks_exact(4).all(|s| s == UNUSED);
            if tail_unused && used < RAW_LIST as usize {
                out.put(&(used as u16).to_le_bytes())?;
                out.put(&list[..4 * used])?;
            } else {
                out.put(&RAW_LIST.to_le_bytes())?;
                out.put(&list)?;
            }
        }
    }
    Ok(true)
}

/// Reads `n` bytes into `head` if the input has them; false (with what there was) if not.
fn fill_head<R: Read>(input: &mut R, head: &mut Vec<u8>, n: usize) -> io::Result<bool> {
    head.resize(n, 0);
    let mut got = 0;
    while got < n {
        match input.read(&mut head[got..])? {
            0 => {
                head.truncate(got);
                return Ok(false);
            }
            k => got += k,
        }
    }
    Ok(true)
}

enum State {
    /// The fixed part: magic, head_len, nodes, cum's count.
    Start,
    Cum,
    Head,
    /// Node `node`, level `level`.
    Lists {
        node: usize,
        level: usize,
    },
    Rest,
}

/// Turns a packed prefix back into FAISS's bytes as its pages arrive ([`Unpacker::feed`]),
/// followed by whatever the chain holds after it.
pub struct Unpacker {
    state: State,
    pending: Vec<u8>,
    head_len: usize,
    nodes: usize,
    cum: Vec<i32>,
    levels: Vec<i32>,
}

impl Default for Unpacker {
    fn default() -> Self {
        Self::new()
    }
}

impl Unpacker {
    pub fn new() -> Self {
        Unpacker {
            state: State::Start,
            pending: Vec::new(),
            head_len: 0,
            nodes: 0,
            cum: Vec::new(),
            levels: Vec::new(),
        }
    }

    /// Takes the next bytes of the packed chain, passing on FAISS's bytes as they are known.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if matches!(self.state, State::Rest) {
            return sink(bytes);
        }
        self.pending.extend_from_slice(bytes);
        let mut out = Out {
            buf: Vec::with_capacity(OUT_CHUNK),
            sink,
        };
        let mut at = 0;
        loop {
            let have = &self.pending[at..];
            match self.state {
                State::Start => {
                    if have.len() < 32 {
                        break;
                    }
                    if &have[..8] != MAGIC {
                        return Err(corrupt("bad magic"));
                    }
                    let (head_len, nodes, cum) =
                        (u64_at(have, 8), u64_at(have, 16), u64_at(have, 24));
                    if !(2..=MAX_LEVELS + 1).contains(&cum) || nodes > head_len / 4 {
                        return Err(corrupt("bad sizes"));
                    }
                    (self.head_len, self.nodes) = (head_len as usize, nodes as usize);
                    self.cum = vec![0; cum as usize];
                    at += 32;
                    self.state = State::Cum;
                }
                State::Cum => {
                    let need = 4 * self.cum.len();
                    if have.len() < need {
                        break;
                    }
                    self.cum = i32s(&have[..need]);
                    if self.cum[0] != 0 || self.cum.windows(2).any(|w| w[1] < w[0]) {
                        return Err(corrupt("bad neighbour counts"));
                    }
                    at += need;
                    self.state = State::Head;
                }
                State::Head => {
                    if have.len() < self.head_len {
                        break;
                    }
                    let head = &have[..self.head_len];
                    out.put(head)?;
                    self.levels = i32s(&head[self.head_len - 4 * self.nodes..]);
                    let offsets =
                        offsets(&self.levels, &self.cum).ok_or_else(|| corrupt("bad levels"))?;
                    out.put(&(offsets.len() as u64).to_le_bytes())?;
                    for o in &offsets {
                        out.put(&o.to_le_bytes())?;
                    }
                    out.put(&offsets[self.nodes].to_le_bytes())?;
                    at += self.head_len;
                    self.state = State::Lists { node: 0, level: 0 };
                }
                State::Lists { node, level } => {
                    if node == self.nodes {
                        self.state = State::Rest;
                        continue;
                    }
                    if level == self.levels[node] as usize {
                        self.state = State::Lists {
                            node: node + 1,
                            level: 0,
                        };
                        continue;
                    }
                    if have.len() < 2 {
                        break;
                    }
                    let slots = level_slots(&self.cum, level);
                    let used = u16::from_le_bytes([have[0], have[1]]);
                    let stored = if used == RAW_LIST {
                        slots
                    } else {
                        used as usize
                    };
                    if stored > slots {
                        return Err(corrupt("a neighbour list is too long"));
                    }
                    if have.len() < 2 + 4 * stored {
                        break;
                    }
                    out.put(&have[2..2 + 4 * stored])?;
                    for _ in stored..slots {
                        out.put(&UNUSED)?;
                    }
                    at += 2 + 4 * stored;
                    self.state = State::Lists {
                        node,
                        level: level + 1,
                    };
                }
                State::Rest => {
                    out.put(have)?;
                    at = self.pending.len();
                    break;
                }
            }
        }
        self.pending.drain(..at);
        out.flush()
    }

    /// Checks that the packed graph was whole.
    pub fn finish(self) -> io::Result<()> {
        match self.state {
            State::Rest => Ok(()),
            State::Lists { node, .. } if node == self.nodes => Ok(()),
            _ => Err(corrupt("it ends early")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::encode_snapshot;
    use crate::{Metric, VectorIndex};

    fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        // Clustered, so that the heuristic leaves slots unused as on real data.
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let centres: Vec<f32> = (0..20 * dim).map(|_| next()).collect();
        (0..n)
            .flat_map(|i| {
                let c = (i * 7) % 20;
                (0..dim)
                    .map(|j| centres[c * dim + j] + 0.2 * next())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn snapshot(factory: &str, n: usize) -> Vec<u8> {
        let dim = 16;
        let mut index = VectorIndex::new(dim, factory, Metric::L2).unwrap();
        let ids: Vec<i64> = (0..n as i64).collect();
        index.add(&ids, &vectors(n, dim, 7)).unwrap();
        encode_snapshot(&index, &[], &[3; 16]).unwrap()
    }

    fn packed(bytes: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let did = pack(&mut &bytes[..], bytes.len() as u64, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        (out, did)
    }

    /// Unpacks `packed` fed in pieces of `piece` bytes.
    fn unpacked(packed: &[u8], piece: usize) -> io::Result<Vec<u8>> {
        let mut unpacker = Unpacker::new();
        let mut out = Vec::new();
        for chunk in packed.chunks(piece) {
            unpacker.feed(chunk, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })?;
        }
        unpacker.finish()?;
        Ok(out)
    }

    #[test]
    fn hnsw_graphs_come_back_byte_for_byte() {
        for factory in ["HNSW8", "HNSW16", "HNSW32"] {
            let original = snapshot(factory, 3000);
            let (small, did) = packed(&original);
            assert!(did, "{factory}");
            assert!(small.len() < original.len(), "{factory}");
            for piece in [1, 7, 4096, 8160, usize::MAX] {
                assert!(
                    unpacked(&small, piece.min(small.len())).unwrap() == original,
                    "{factory}, pieces of {piece}"
                );
            }
        }
    }

    #[test]
    fn other_indexes_are_copied_as_they_are() {
        for factory in ["Flat", "IVF4,Flat"] {
            let mut index = VectorIndex::new(16, factory, Metric::L2).unwrap();
            let data = vectors(500, 16, 3);
            index.train(&data).unwrap();
            index.add(&(0..500).collect::<Vec<_>>(), &data).unwrap();
            let original = encode_snapshot(&index, &[], &[1; 16]).unwrap();
            assert_eq!(packed(&original), (original.clone(), false), "{factory}");
        }
        // Shorter than FAISS's header.
        assert_eq!(packed(b"IHNf"), (b"IHNf".to_vec(), false));
    }

    #[test]
    fn only_the_given_length_is_read() {
        let original = snapshot("HNSW16", 500);
        let len = find_end(&original) + 10;
        let mut input = &original[..];
        let mut out = Vec::new();
        let did = pack(&mut input, len as u64, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert!(did);
        assert_eq!(input.len(), original.len() - len);
        assert!(unpacked(&out, 999).unwrap() == original[..len]);
        // A length that cuts the graph is an error, not a partial copy.
        let mut input = &original[..];
        assert!(pack(&mut input, 100, &mut |_| Ok(())).is_err());
    }

    #[test]
    fn lists_with_gaps_are_kept_whole() {
        // A list whose unused slot is not at its end (FAISS never writes one, but a reader
        // must get back whatever was there).
        let mut original = snapshot("HNSW8", 200);
        let (small, _) = packed(&original);
        let at = find_neighbours(&original);
        original[at..at + 4].copy_from_slice(&UNUSED);
        let (with_gap, did) = packed(&original);
        assert!(did);
        assert!(with_gap.len() > small.len());
        assert!(unpacked(&with_gap, 100).unwrap() == original);
    }

    /// Where the first neighbour of node 0 lies in a snapshot of an HNSW8 index.
    fn find_neighbours(bytes: &[u8]) -> usize {
        let mut at = 4 + 4 + 8 + 8 + 8 + 1 + 4;
        for item in [8, 4, 4, 8] {
            at += 8 + item * u64_at(bytes, at) as usize;
        }
        at + 8
    }

    #[test]
    fn truncated_or_damaged_packs_are_errors() {
        let original = snapshot("HNSW16", 300);
        let (small, _) = packed(&original);
        let graph_end = small.len() - (original.len() - find_end(&original));
        assert!(unpacked(&small[..graph_end - 1], 64).is_err());
        let mut bad = small.clone();
        bad[0] = b'X';
        assert!(unpacked(&bad, 64).is_err());
    }

    /// The end of the neighbours table in an unpacked snapshot.
    fn find_end(bytes: &[u8]) -> usize {
        let mut at = 4 + 4 + 8 + 8 + 8 + 1 + 4;
        for item in [8, 4, 4, 8, 4] {
            at += 8 + item * u64_at(bytes, at) as usize;
        }
        at
    }
}
