//! Newline-delimited messages with a size bound: one JSON value per line, both directions.

use std::io::{self, BufRead};

/// Largest message either side accepts (a domain XML is far smaller; a list of thousands
/// of domains is a few hundred KiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Reads one line (without the newline) into `buf`. `Ok(false)` at a clean end of stream;
/// an error for a line longer than `max` bytes (the rest of the stream is then unusable)
/// or a stream ending in the middle of a line.
pub fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
    buf.clear();
    read_line_into(reader, buf, max)
}

/// As [`read_line`], but keeps what `buf` holds: a read interrupted by a timeout resumes
/// where it stopped when called again with the same buffer.
pub fn read_line_into<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            if buf.is_empty() {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed in the middle of a message",
            ));
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message longer than {max} bytes"),
            ));
        }
        buf.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_bounded() {
        let mut r = io::BufReader::with_capacity(4, &b"abc\nlonger line\r\n\ntail"[..]);
        let mut buf = Vec::new();
        assert!(read_line(&mut r, &mut buf, 100).unwrap());
        assert_eq!(buf, b"abc");
        assert!(read_line(&mut r, &mut buf, 100).unwrap());
        assert_eq!(buf, b"longer line");
        assert!(read_line(&mut r, &mut buf, 100).unwrap());
        assert_eq!(buf, b"");
        assert!(read_line(&mut r, &mut buf, 100).is_err());
        let mut r = io::BufReader::new(&b"0123456789\n"[..]);
        let e = read_line(&mut r, &mut buf, 5).unwrap_err();
        assert!(e.to_string().contains("longer than 5"));
        let mut r = io::BufReader::new(&b""[..]);
        assert!(!read_line(&mut r, &mut buf, 5).unwrap());
    }
}
