//! In-memory (de)serialisation of FAISS indexes.
//!
//! The FAISS C API only serialises through a `FILE*` (`faiss_write_index` /
//! `faiss_read_index`), a file name, or a `FaissCustomIOWriter/Reader` whose
//! callbacks take no context pointer (so they would need thread-local
//! buffers). glibc's `open_memstream` / `fmemopen` give a `FILE*` over
//! memory, which keeps this stateless, needs no temporary files and no extra
//! crate: that is what is used here.
//!
//! FAISS's reader checks the structure it reads, but not the *contents*: a
//! flipped byte inside an HNSW neighbour list or an IVF list id is read
//! happily and crashes (or silently misbehaves) at search time. So the
//! FAISS payload is framed by a small header with a length and a CRC-32,
//! checked before FAISS sees a byte:
//!
//! ```text
//! offset  size  field
//!      0     8  magic  b"SEMFAISS"
//!      8     4  format version (u32 LE) = 1
//!     12     4  CRC-32 (IEEE) of the payload (u32 LE)
//!     16     8  payload length in bytes (u64 LE)
//!     24     n  payload: faiss::write_index output
//! ```

use crate::IndexError;
use faiss_sys::{FaissIndex, FILE};
use std::ffi::{c_char, c_int, c_void};

extern "C" {
    // glibc stdio.
    fn open_memstream(ptr: *mut *mut c_char, sizeloc: *mut usize) -> *mut c_void;
    fn fmemopen(buf: *mut c_void, size: usize, mode: *const c_char) -> *mut c_void;
    fn fflush(stream: *mut c_void) -> c_int;
    fn fclose(stream: *mut c_void) -> c_int;
    fn free(ptr: *mut c_void);
}

pub(crate) const MAGIC: &[u8; 8] = b"SEMFAISS";
pub(crate) const VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 24;

pub(crate) fn last_faiss_error() -> String {
    // SAFETY: returns null or a NUL-terminated string owned by FAISS
    // (thread-local last exception).
    unsafe {
        let p = faiss_sys::faiss_get_last_error();
        if p.is_null() {
            "unknown error".to_string()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

/// Serialises `index` (FAISS format) and frames it with the header.
///
/// # Safety
/// `index` must point to a live FAISS index.
pub(crate) unsafe fn write(index: *const FaissIndex) -> Result<Vec<u8>, IndexError> {
    let mut buf: *mut c_char = std::ptr::null_mut();
    let mut size: usize = 0;
    let f = open_memstream(&mut buf, &mut size);
    if f.is_null() {
        return Err(IndexError::faiss(
            "write_index",
            format!("open_memstream: {}", std::io::Error::last_os_error()),
        ));
    }
    let rc = faiss_sys::faiss_write_index(index, f as *mut FILE);
    let msg = if rc != 0 {
        Some(last_faiss_error())
    } else {
        None
    };
    let flushed = fflush(f) == 0;
    // After fclose, buf/size hold the final buffer, which we must free().
    let closed = fclose(f) == 0;
    let result = if let Some(msg) = msg {
        Err(IndexError::faiss("write_index", msg))
    } else if !flushed || !closed || (buf.is_null() && size > 0) {
        Err(IndexError::faiss(
            "write_index",
            "memory stream could not be completed (out of memory?)",
        ))
    } else {
        let payload: &[u8] = if size == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(buf as *const u8, size)
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&crc32(payload).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(payload);
        Ok(out)
    };
    if !buf.is_null() {
        free(buf as *mut c_void);
    }
    result
}

/// Checks the header and returns the FAISS payload.
pub(crate) fn payload(bytes: &[u8]) -> Result<&[u8], IndexError> {
    if bytes.len() < HEADER_LEN {
        return Err(IndexError::Corrupt(format!(
            "{} bytes is shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(IndexError::Corrupt(
            "bad magic (not written by semantic-index)".into(),
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(IndexError::Corrupt(format!(
            "unsupported format version {version} (expected {VERSION})"
        )));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let body = &bytes[HEADER_LEN..];
    if len != body.len() as u64 {
        return Err(IndexError::Corrupt(format!(
            "payload is {} bytes, header says {len} (truncated?)",
            body.len()
        )));
    }
    if body.is_empty() {
        return Err(IndexError::Corrupt("empty payload".into()));
    }
    if crc32(body) != crc {
        return Err(IndexError::Corrupt("checksum mismatch".into()));
    }
    Ok(body)
}

/// Reads a FAISS index from a payload returned by [`payload`]. The caller
/// owns the returned pointer.
pub(crate) fn read(payload: &[u8]) -> Result<*mut FaissIndex, IndexError> {
    if payload.is_empty() {
        return Err(IndexError::Corrupt("empty payload".into()));
    }
    // SAFETY: fmemopen in read mode never writes to the buffer; the FILE is
    // closed before `payload` goes out of scope.
    unsafe {
        let f = fmemopen(
            payload.as_ptr() as *mut c_void,
            payload.len(),
            c"rb".as_ptr(),
        );
        if f.is_null() {
            return Err(IndexError::faiss(
                "read_index",
                format!("fmemopen: {}", std::io::Error::last_os_error()),
            ));
        }
        let mut out: *mut FaissIndex = std::ptr::null_mut();
        let rc = faiss_sys::faiss_read_index(f as *mut FILE, 0, &mut out);
        let msg = if rc != 0 {
            Some(last_faiss_error())
        } else {
            None
        };
        fclose(f);
        match msg {
            Some(msg) => {
                if !out.is_null() {
                    faiss_sys::faiss_Index_free(out);
                }
                Err(IndexError::Corrupt(format!(
                    "faiss could not read it: {msg}"
                )))
            }
            None if out.is_null() => Err(IndexError::Corrupt("faiss returned no index".into())),
            None => Ok(out),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib/PNG).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn header_checks() {
        assert!(matches!(payload(b""), Err(IndexError::Corrupt(_))));
        assert!(matches!(payload(&[0u8; 40]), Err(IndexError::Corrupt(_))));
        let mut ok = Vec::new();
        ok.extend_from_slice(MAGIC);
        ok.extend_from_slice(&VERSION.to_le_bytes());
        ok.extend_from_slice(&crc32(b"abc").to_le_bytes());
        ok.extend_from_slice(&3u64.to_le_bytes());
        ok.extend_from_slice(b"abc");
        assert_eq!(payload(&ok).unwrap(), b"abc");
        let mut bad = ok.clone();
        bad[HEADER_LEN] ^= 1;
        assert!(matches!(payload(&bad), Err(IndexError::Corrupt(_))));
        assert!(matches!(
            payload(&ok[..ok.len() - 1]),
            Err(IndexError::Corrupt(_))
        ));
        // A payload that passes the header but is not FAISS data.
        assert!(matches!(read(b"abc"), Err(IndexError::Corrupt(_))));
    }
}
