//! (De)serialisation of FAISS indexes: to and from memory, and read-only mapped from a file.
//!
//! The FAISS C API only serialises through a `FILE*` (`faiss_write_index` /
//! `faiss_read_index`), a file name, or a `FaissCustomIOWriter/Reader` whose
//! callbacks take no context pointer (so they would need thread-local
//! buffers). glibc gives a `FILE*` over anything: `fopencookie` forwards
//! FAISS's writes to a Rust writer as they come (no copy of the whole index
//! in memory), and `fmemopen` reads from bytes.
//!
//! FAISS's reader checks the structure it reads, but not the *contents*: a
//! flipped byte inside an HNSW neighbour list or an IVF list id is read
//! happily and crashes (or silently misbehaves) at search time. So nothing
//! reaches these readers before the snapshot's checksum has been checked
//! (see the `snapshot` module).

use crate::IndexError;
use faiss_sys::{FaissIndex, FILE};
use std::io::Write;

use libc::{c_char, c_int, c_void, fclose, fmemopen};

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

/// glibc's `cookie_io_functions_t` and `fopencookie` (GNU extensions the `libc` crate does
/// not declare).
#[repr(C)]
struct CookieFunctions {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> isize>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> isize>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

unsafe extern "C" {
    fn fopencookie(
        cookie: *mut c_void,
        mode: *const c_char,
        functions: CookieFunctions,
    ) -> *mut libc::FILE;
}

/// Where a cookie stream's bytes go, and the first error they met.
struct Sink<'a> {
    out: &'a mut dyn Write,
    error: Option<std::io::Error>,
}

/// The stream's write function: all of `len` bytes or, on an error (kept for the caller), 0.
unsafe extern "C" fn sink_write(cookie: *mut c_void, buf: *const c_char, len: usize) -> isize {
    // SAFETY: `cookie` is the Sink that `write_into` gave fopencookie, alive while the stream
    // is open; glibc passes `len` readable bytes.
    let (sink, bytes) = unsafe {
        (
            &mut *(cookie as *mut Sink),
            std::slice::from_raw_parts(buf as *const u8, len),
        )
    };
    if sink.error.is_some() {
        return 0;
    }
    // A panic must not unwind into C.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.out.write_all(bytes))) {
        Ok(Ok(())) => len as isize,
        Ok(Err(e)) => {
            sink.error = Some(e);
            0
        }
        Err(_) => {
            sink.error = Some(std::io::Error::other("the writer panicked"));
            0
        }
    }
}

/// Serialises `index` in FAISS's format into `out`, as FAISS writes it.
///
/// # Safety
/// `index` must point to a live FAISS index.
pub(crate) unsafe fn write_into(
    index: *const FaissIndex,
    out: &mut dyn Write,
) -> Result<(), IndexError> {
    let mut sink = Sink { out, error: None };
    let functions = CookieFunctions {
        read: None,
        write: Some(sink_write),
        seek: None,
        close: None,
    };
    // SAFETY: the stream is closed below, before `sink` goes out of scope.
    let f = unsafe { fopencookie(&raw mut sink as *mut c_void, c"wb".as_ptr(), functions) };
    if f.is_null() {
        return Err(IndexError::faiss(
            "write_index",
            format!("fopencookie: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: the caller's live index, an open stream.
    let rc = unsafe { faiss_sys::faiss_write_index(index, f as *mut FILE) };
    let msg = (rc != 0).then(last_faiss_error);
    // SAFETY: the stream opened above, closed once (flushing what glibc buffered).
    let closed = unsafe { fclose(f) } == 0;
    match (msg, sink.error) {
        (_, Some(e)) => Err(IndexError::faiss("write_index", e.to_string())),
        (Some(msg), None) => Err(IndexError::faiss("write_index", msg)),
        (None, None) if !closed => Err(IndexError::faiss(
            "write_index",
            format!("closing the stream: {}", std::io::Error::last_os_error()),
        )),
        (None, None) => Ok(()),
    }
}

/// Reads a FAISS index from bytes written by [`write_into`]. The caller owns the
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
