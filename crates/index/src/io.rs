//! (De)serialisation of FAISS indexes: to and from memory, and read-only mapped from a file.
//!
//! The FAISS C API only serialises through a `FILE*` (`faiss_write_index` /
//! `faiss_read_index`), a file name, or a `FaissCustomIOWriter/Reader` whose
//! callbacks take no context pointer (so they would need thread-local
//! buffers). glibc's `open_memstream` / `fmemopen` (through the `libc` crate)
//! give a `FILE*` over memory, which keeps this stateless and needs no
//! temporary files: that is what is used here.
//!
//! FAISS's reader checks the structure it reads, but not the *contents*: a
//! flipped byte inside an HNSW neighbour list or an IVF list id is read
//! happily and crashes (or silently misbehaves) at search time. So nothing
//! reaches these readers before the snapshot's checksum has been checked
//! (see the `snapshot` module).

use crate::IndexError;
use faiss_sys::{FaissIndex, FILE};
use libc::{c_char, c_void, fclose, fflush, fmemopen, free, open_memstream};

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

/// Serialises `index` in FAISS's format.
///
/// # Safety
/// `index` must point to a live FAISS index.
pub(crate) unsafe fn write(index: *const FaissIndex) -> Result<Vec<u8>, IndexError> {
    let mut buf: *mut c_char = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: glibc keeps `buf`/`size` up to date while the stream lives.
    let f = unsafe { open_memstream(&mut buf, &mut size) };
    if f.is_null() {
        return Err(IndexError::faiss(
            "write_index",
            format!("open_memstream: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: the caller's live index, an open stream.
    let rc = unsafe { faiss_sys::faiss_write_index(index, f as *mut FILE) };
    let msg = if rc != 0 {
        Some(last_faiss_error())
    } else {
        None
    };
    // SAFETY: the stream opened above, closed once; after fclose, buf/size hold the final
    // buffer, which we must free().
    let (flushed, closed) = unsafe { (fflush(f) == 0, fclose(f) == 0) };
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
            // SAFETY: glibc's buffer of `size` bytes, freed only below.
            unsafe { std::slice::from_raw_parts(buf as *const u8, size) }
        };
        Ok(payload.to_vec())
    };
    if !buf.is_null() {
        // SAFETY: the buffer glibc allocated for the stream.
        unsafe { free(buf as *mut c_void) };
    }
    result
}

/// Reads a FAISS index from bytes written by [`write`]. The caller owns the
/// returned pointer.
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

/// FAISS's flag for reading through a read-only shared mapping of the file
/// (`faiss::IO_FLAG_MMAP_IFC`; the C header's `FAISS_IO_FLAG_MMAP` is another
/// flag). Flat codes and HNSW neighbour lists then point into the mapping,
/// so every process that maps the file shares one copy in the page cache.
const IO_FLAG_MMAP_IFC: i32 = 1 << 9;

/// Reads the FAISS index at the start of the file `path` through a shared
/// read-only mapping (bytes after the index are ignored by FAISS). The
/// caller owns the returned pointer and must never add to it: the mapped
/// arrays cannot grow (FAISS aborts the process).
pub(crate) fn read_mapped(path: &std::path::Path) -> Result<*mut FaissIndex, IndexError> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| IndexError::invalid("a file name with a NUL byte"))?;
    let mut out: *mut FaissIndex = std::ptr::null_mut();
    // SAFETY: a NUL-terminated name; `out` receives a new index or stays null.
    let rc =
        unsafe { faiss_sys::faiss_read_index_fname(name.as_ptr(), IO_FLAG_MMAP_IFC, &mut out) };
    if rc != 0 {
        if !out.is_null() {
            // SAFETY: FAISS handed it to us.
            unsafe { faiss_sys::faiss_Index_free(out) };
        }
        return Err(IndexError::Corrupt(format!(
            "faiss could not map {}: {}",
            path.display(),
            last_faiss_error()
        )));
    }
    if out.is_null() {
        return Err(IndexError::Corrupt("faiss returned no index".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_bytes_are_errors() {
        assert!(matches!(read(b""), Err(IndexError::Corrupt(_))));
        assert!(matches!(read(b"abc"), Err(IndexError::Corrupt(_))));
    }
}
