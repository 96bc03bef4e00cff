//! HTTP/1.1 chunked framing gathered for one `writev`.
//!
//! A stream's batch is many shared, pre-rendered records; copying them into
//! one buffer per subscriber would be the only per-subscriber cost per
//! event. [`gather`] instead lists the size line, each record and the
//! closing CRLF as slices for a vectored write, so the kernel does the one
//! copy it has to do anyway.

use std::io::{IoSlice, Write as _};

/// Room for a chunk-size line: 16 hex digits and CRLF.
pub const SIZE_LINE_MAX: usize = 18;

/// Frames `parts` as one HTTP/1.1 chunk into `out` (cleared first): the
/// size line, rendered into `size`, each part as it is, then `\r\n`.
/// Returns the chunk's payload length; with nothing to send it returns 0
/// and leaves `out` empty, since an empty chunk would end the body.
pub fn gather<'a>(
    parts: impl IntoIterator<Item = &'a [u8]>,
    size: &'a mut [u8; SIZE_LINE_MAX],
    out: &mut Vec<IoSlice<'a>>,
) -> usize {
    out.clear();
    // The size line's slot, filled once the length is known.
    out.push(IoSlice::new(&[]));
    let mut len = 0;
    for part in parts {
        len += part.len();
        out.push(IoSlice::new(part));
    }
    if len == 0 {
        out.clear();
        return 0;
    }
    let free = {
        let mut cursor = &mut size[..];
        // 16 hex digits cover any usize: the write cannot run out of room.
        let _ = write!(cursor, "{len:x}\r\n");
        cursor.len()
    };
    let size: &'a [u8] = size;
    out[0] = IoSlice::new(&size[..SIZE_LINE_MAX - free]);
    out.push(IoSlice::new(b"\r\n"));
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(out: &[IoSlice<'_>]) -> Vec<u8> {
        out.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn frames_parts_as_one_chunk_without_copying_them() {
        let a = b"id: 1\ndata: {}\n\n".to_vec();
        let b = b": keep-alive\n\n".to_vec();
        let mut size = [0u8; SIZE_LINE_MAX];
        let mut out = Vec::new();
        let len = gather([&a[..], &b[..]], &mut size, &mut out);
        assert_eq!(len, a.len() + b.len());
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[1].as_ptr(),
            a.as_ptr(),
            "parts are borrowed, not copied"
        );
        assert_eq!(
            joined(&out),
            b"1e\r\nid: 1\ndata: {}\n\n: keep-alive\n\n\r\n".to_vec()
        );
    }

    #[test]
    fn nothing_to_send_is_no_chunk_at_all() {
        let mut size = [0u8; SIZE_LINE_MAX];
        let mut out = vec![IoSlice::new(b"stale")];
        assert_eq!(gather([&b""[..]], &mut size, &mut out), 0);
        assert!(out.is_empty(), "a zero-length chunk would end the response");
    }

    #[test]
    fn largest_length_fits_the_size_line() {
        let mut size = [0u8; SIZE_LINE_MAX];
        let len = {
            let mut cursor = &mut size[..];
            write!(cursor, "{:x}\r\n", usize::MAX).unwrap();
            SIZE_LINE_MAX - cursor.len()
        };
        assert_eq!(len, SIZE_LINE_MAX);
    }
}
