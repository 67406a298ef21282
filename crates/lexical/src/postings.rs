//! One term's posting list: its documents in increasing order with their term frequencies, in
//! blocks of [`BLOCK`]. Each block has a fixed header followed by LEB128 varints (document
//! gaps, then frequencies). The header holds the last document, the count, the payload size and
//! two bounds on the term-frequency part of any score in the block: the exact maximum under the
//! snapshot's own k1, b and average length, and (largest tf, shortest document), which bounds
//! it under any parameters, since scores grow with tf and shrink with length. Varints are written here because the
//! format is ten lines of code and a crate would add a dependency for them alone.

pub const BLOCK: usize = 128;
pub(crate) const HEADER: usize = 24;

/// A block's bounds and extent, as its header gives them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockHeader {
    pub last_doc: u32,
    pub count: u32,
    pub max_tf: u32,
    pub min_length: u32,
    /// The largest tf part in the block under the snapshot's own parameters.
    pub max_tf_part: f32,
    payload: u32,
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(data: &[u8], at: &mut usize) -> u32 {
    let mut v = 0u32;
    let mut shift = 0;
    loop {
        let byte = data[*at];
        *at += 1;
        v |= ((byte & 0x7f) as u32) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"))
}

/// What a posting list stores of document `doc` after document `previous`.
pub(crate) fn gap(previous: Option<u32>, doc: u32) -> u32 {
    match previous {
        Some(p) => doc - p - 1,
        None => doc,
    }
}

/// Appends the posting list of `postings` ((document, tf), documents increasing) to `out`;
/// `length` gives each document's length, `tf_part` the tf part of a (tf, length).
pub fn encode(
    postings: &[(u32, u32)],
    length: impl Fn(u32) -> u32,
    tf_part: impl Fn(u32, u32) -> f32,
    out: &mut Vec<u8>,
) {
    let mut previous: Option<u32> = None;
    for block in postings.chunks(BLOCK) {
        let mut payload = Vec::with_capacity(block.len() * 3);
        for &(doc, _) in block {
            put_varint(&mut payload, gap(previous, doc));
            previous = Some(doc);
        }
        for &(_, tf) in block {
            put_varint(&mut payload, tf);
        }
        let header = [
            block.last().expect("chunks are not empty").0,
            block.len() as u32,
            block.iter().map(|p| p.1).max().unwrap_or(0),
            block.iter().map(|p| length(p.0)).min().unwrap_or(0),
            block
                .iter()
                .map(|&(doc, tf)| tf_part(tf, length(doc)))
                .fold(0.0f32, f32::max)
                .to_bits(),
            payload.len() as u32,
        ];
        for v in header {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&payload);
    }
}

/// Checks that `data` is a well-formed posting list of `df` documents below `documents`.
pub fn validate(data: &[u8], df: u32, documents: u32) -> bool {
    let mut at = 0;
    let mut seen = 0u64;
    let mut previous: Option<u32> = None;
    while at < data.len() {
        if data.len() - at < HEADER {
            return false;
        }
        let h = read_header(data, at);
        let start = at + HEADER;
        let Some(end) = start.checked_add(h.payload as usize) else {
            return false;
        };
        if h.count == 0 || h.count as usize > BLOCK || end > data.len() {
            return false;
        }
        // Every varint must end inside the payload and the documents must increase.
        let payload = &data[start..end];
        let mut p = 0;
        let mut last = 0;
        for i in 0..2 * h.count as usize {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let Some(&byte) = payload.get(p) else {
                    return false;
                };
                p += 1;
                v |= ((byte & 0x7f) as u64) << shift;
                if byte < 0x80 {
                    break;
                }
                shift += 7;
                if shift > 28 {
                    return false;
                }
            }
            if i < h.count as usize {
                let doc = match previous {
                    Some(prev) => prev as u64 + 1 + v,
                    None => v,
                };
                if doc >= documents as u64 {
                    return false;
                }
                previous = Some(doc as u32);
                last = doc as u32;
            }
        }
        if p != payload.len() || last != h.last_doc {
            return false;
        }
        seen += h.count as u64;
        at = end;
    }
    seen == df as u64
}

fn read_header(data: &[u8], at: usize) -> BlockHeader {
    BlockHeader {
        last_doc: u32_at(data, at),
        count: u32_at(data, at + 4),
        max_tf: u32_at(data, at + 8),
        min_length: u32_at(data, at + 12),
        max_tf_part: f32::from_bits(u32_at(data, at + 16)),
        payload: u32_at(data, at + 20),
    }
}

/// The list's bounds over all its blocks: (largest tf, shortest document, largest tf part).
pub fn list_bounds(data: &[u8]) -> (u32, u32, f32) {
    let mut at = 0;
    let (mut max_tf, mut min_length, mut max_tf_part) = (0, u32::MAX, 0.0f32);
    while at < data.len() {
        let h = read_header(data, at);
        max_tf = max_tf.max(h.max_tf);
        min_length = min_length.min(h.min_length);
        max_tf_part = max_tf_part.max(h.max_tf_part);
        at += HEADER + h.payload as usize;
    }
    (max_tf, min_length, max_tf_part)
}

/// A reading position in one posting list. Exhausted, it stands on [`Cursor::END`].
pub struct Cursor<'a> {
    data: &'a [u8],
    /// Offset of the current block's header.
    block_at: usize,
    header: BlockHeader,
    /// The decoded block, once needed.
    decoded: bool,
    docs: [u32; BLOCK],
    tfs: [u32; BLOCK],
    pos: usize,
    /// The document before the current block (gaps count from it).
    base: Option<u32>,
    doc: u32,
}

impl<'a> Cursor<'a> {
    pub const END: u32 = u32::MAX;

    /// A cursor on the first document of a (validated) posting list.
    pub fn new(data: &'a [u8]) -> Cursor<'a> {
        let mut c = Cursor {
            data,
            block_at: 0,
            header: BlockHeader {
                last_doc: 0,
                count: 0,
                max_tf: 0,
                min_length: 0,
                max_tf_part: 0.0,
                payload: 0,
            },
            decoded: false,
            docs: [0; BLOCK],
            tfs: [0; BLOCK],
            pos: 0,
            base: None,
            doc: Self::END,
        };
        if !data.is_empty() {
            c.header = read_header(data, 0);
            c.decode();
        }
        c
    }

    pub fn doc(&self) -> u32 {
        self.doc
    }

    /// The header of the current block.
    pub fn block(&self) -> &BlockHeader {
        &self.header
    }

    /// The term frequency at the current document.
    pub fn tf(&self) -> u32 {
        self.tfs[self.pos]
    }

    fn decode(&mut self) {
        let mut at = self.block_at + HEADER;
        let n = self.header.count as usize;
        let mut previous = self.base;
        for i in 0..n {
            let gap = get_varint(self.data, &mut at);
            let doc = match previous {
                Some(p) => p + 1 + gap,
                None => gap,
            };
            self.docs[i] = doc;
            previous = Some(doc);
        }
        for i in 0..n {
            self.tfs[i] = get_varint(self.data, &mut at);
        }
        self.decoded = true;
        self.pos = 0;
        self.doc = self.docs[0];
    }

    /// Moves to the next block without decoding it; false at the end of the list.
    fn next_block(&mut self) -> bool {
        let next = self.block_at + HEADER + self.header.payload as usize;
        self.base = Some(self.header.last_doc);
        if next >= self.data.len() {
            self.doc = Self::END;
            return false;
        }
        self.block_at = next;
        self.header = read_header(self.data, next);
        self.decoded = false;
        true
    }

    pub fn next(&mut self) {
        if self.doc == Self::END {
            return;
        }
        if self.pos + 1 < self.header.count as usize {
            self.pos += 1;
            self.doc = self.docs[self.pos];
        } else if self.next_block() {
            self.decode();
        }
    }

    /// Moves to the first document >= `target`.
    pub fn advance(&mut self, target: u32) {
        if self.doc >= target {
            return;
        }
        while self.header.last_doc < target {
            if !self.next_block() {
                return;
            }
        }
        if !self.decoded {
            self.decode();
        }
        while self.docs[self.pos] < target {
            self.pos += 1;
        }
        self.doc = self.docs[self.pos];
    }
}
