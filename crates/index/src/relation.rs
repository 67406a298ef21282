//! What the page protocol ([`crate::chain`]) needs of an index relation, and nothing more: pinned
//! and locked buffers, new pages, and changes to several pages logged as one WAL record. The
//! extension implements it with PostgreSQL's buffer manager and GenericXLog; tests implement it
//! in memory. Pages use PostgreSQL's standard layout (a 24-byte header, contents from there up
//! to `pd_lower`, a special area at the end), which GenericXLog relies on.

/// PostgreSQL's block size (BLCKSZ, the default build).
pub const BLOCK_SIZE: usize = 8192;
/// The page header (PageHeaderData without line pointers).
pub const PAGE_HEADER: usize = 24;
/// PG_PAGE_LAYOUT_VERSION.
const LAYOUT_VERSION: u16 = 4;

/// How a buffer is locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lock {
    Share,
    Exclusive,
}

/// How a changed page is logged: as a delta, or as a full image (new or reinitialised pages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    Delta,
    Full,
}

pub trait Relation {
    /// A pinned and locked buffer.
    type Buffer: Copy;

    /// Pins and locks `block`.
    fn lock(&self, block: u32, lock: Lock) -> Self::Buffer;
    /// A new page at the end of the relation, pinned and locked exclusively.
    fn extend(&self) -> Self::Buffer;
    fn block(&self, buffer: Self::Buffer) -> u32;
    /// The page of a locked buffer ([`BLOCK_SIZE`] bytes).
    fn page(&self, buffer: Self::Buffer) -> &[u8];
    /// Unlocks and unpins.
    fn release(&self, buffer: Self::Buffer);
    /// Changes exclusively locked buffers as one WAL record: `change` gets a working copy of
    /// each page, in the order given, and what it leaves there is applied and logged at once.
    fn log(&self, pages: &[(Self::Buffer, Image)], change: &mut dyn FnMut(&mut [&mut [u8]]));
    /// Stops for a pending query cancel (long loops call it between pages).
    fn check_interrupts(&self);
}

/// A locked buffer, released when dropped (also when an error unwinds through its holder).
pub struct Locked<'r, R: Relation> {
    rel: &'r R,
    pub buffer: R::Buffer,
}

impl<'r, R: Relation> Locked<'r, R> {
    pub fn new(rel: &'r R, block: u32, lock: Lock) -> Self {
        Locked {
            rel,
            buffer: rel.lock(block, lock),
        }
    }

    pub fn extend(rel: &'r R) -> Self {
        Locked {
            rel,
            buffer: rel.extend(),
        }
    }

    pub fn block(&self) -> u32 {
        self.rel.block(self.buffer)
    }

    pub fn page(&self) -> &[u8] {
        self.rel.page(self.buffer)
    }
}

impl<R: Relation> Drop for Locked<'_, R> {
    fn drop(&mut self) {
        self.rel.release(self.buffer);
    }
}

fn u16_at(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

fn set_u16(page: &mut [u8], at: usize, v: u16) {
    page[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// PageInit: an empty page with `special` bytes of special area.
pub fn init_page(page: &mut [u8], special: usize) {
    page.fill(0);
    let size = page.len();
    set_u16(page, 12, PAGE_HEADER as u16); // pd_lower
    set_u16(page, 14, (size - special) as u16); // pd_upper
    set_u16(page, 16, (size - special) as u16); // pd_special
    set_u16(page, 18, size as u16 | LAYOUT_VERSION); // pd_pagesize_version
}

/// pd_lower: where the page's contents end.
pub fn lower(page: &[u8]) -> usize {
    u16_at(page, 12) as usize
}

pub fn set_lower(page: &mut [u8], lower: usize) {
    set_u16(page, 12, lower as u16);
}

/// pd_special: where the special area starts.
pub fn special_at(page: &[u8]) -> usize {
    u16_at(page, 16) as usize
}
