//! Streams: raw bytes on the API connection, for `vol.upload` and `vol.download`.
//!
//! A streaming call is answered twice. The first response is either the final one (an
//! error, or a result when there was nothing to move) or the acceptance
//! `{"stream":true}`; after an acceptance the bytes follow as *frames*, then the final
//! response (with the same `id`) says how it went. A frame is a header line and a body:
//!
//! ```text
//! 65536\n<65536 bytes>      data (1 ..= MAX_FRAME bytes)
//! 0\n                       end of stream
//! abort\n                   the sender gave up (e.g. it could not read its file)
//! ```
//!
//! Uploads: the client sends frames after the acceptance, ending with `0` (or `abort`);
//! the daemon reads them all even when writing fails part-way, then answers.
//! Downloads: the daemon sends the frames right after the acceptance (no event
//! notification comes in between), ending with `0`, then the final response.

use std::io::{self, BufRead, Read, Write};

use serde_json::Value;

use crate::framing;

/// Largest data frame either side sends or accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// The `result` of a response that accepts a stream.
pub fn acceptance() -> Value {
    serde_json::json!({ "stream": true })
}

/// Whether a result is a stream acceptance (rather than a final result).
pub fn is_acceptance(result: &Value) -> bool {
    result.get("stream").and_then(Value::as_bool) == Some(true)
}

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    Data(usize),
    End,
    Abort,
}

fn protocol(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one frame header.
pub fn read_header<R: BufRead>(r: &mut R) -> io::Result<Header> {
    let mut line = Vec::new();
    if !framing::read_line(r, &mut line, 32)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream ended without an end frame",
        ));
    }
    if line == b"abort" {
        return Ok(Header::Abort);
    }
    let text = std::str::from_utf8(&line).unwrap_or("");
    match text.parse::<usize>() {
        Ok(0) => Ok(Header::End),
        Ok(n) if n <= MAX_FRAME => Ok(Header::Data(n)),
        Ok(n) => Err(protocol(format!(
            "stream frame of {n} bytes is larger than {MAX_FRAME}"
        ))),
        Err(_) => Err(protocol(format!(
            "bad stream frame header '{}'",
            String::from_utf8_lossy(&line).escape_debug()
        ))),
    }
}

/// Writes `data` as one or more data frames.
pub fn write_data<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(MAX_FRAME) {
        w.write_all(format!("{}\n", chunk.len()).as_bytes())?;
        w.write_all(chunk)?;
    }
    Ok(())
}

pub fn write_end<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(b"0\n")?;
    w.flush()
}

pub fn write_abort<W: Write>(w: &mut W) -> io::Result<()> {
    w.write_all(b"abort\n")?;
    w.flush()
}

/// The bytes of an incoming stream as a [`Read`]: `Ok(0)` after the end frame, an error
/// for an `abort` frame or a malformed stream.
pub struct FrameReader<R> {
    inner: R,
    left: usize,
    state: ReadState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    Ended,
    Aborted,
    /// The stream cannot be followed any more (bad header, connection lost).
    Broken,
}

impl<R: BufRead> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            left: 0,
            state: ReadState::Open,
        }
    }

    /// The end (or abort) frame has been read: the connection is in step again.
    pub fn finished(&self) -> bool {
        matches!(self.state, ReadState::Ended | ReadState::Aborted)
    }

    /// The connection is out of step (malformed stream or I/O error): close it.
    pub fn broken(&self) -> bool {
        self.state == ReadState::Broken
    }

    /// Reads and discards the rest of the stream (after the consumer stopped early).
    pub fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        while self.state == ReadState::Open {
            match self.read(&mut buf) {
                Ok(_) => {}
                Err(_) if self.state == ReadState::Aborted => break,
                Err(e) => return Err(e),
            }
        }
        if self.state == ReadState::Broken {
            return Err(protocol("stream broken".into()));
        }
        Ok(())
    }
}

impl<R: BufRead> Read for FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            ReadState::Open => {}
            ReadState::Ended => return Ok(0),
            ReadState::Aborted => return Err(io::Error::other("the sender aborted the stream")),
            ReadState::Broken => return Err(protocol("stream broken".into())),
        }
        if buf.is_empty() {
            return Ok(0);
        }
        while self.left == 0 {
            match read_header(&mut self.inner) {
                Ok(Header::Data(n)) => self.left = n,
                Ok(Header::End) => {
                    self.state = ReadState::Ended;
                    return Ok(0);
                }
                Ok(Header::Abort) => {
                    self.state = ReadState::Aborted;
                    return Err(io::Error::other("the sender aborted the stream"));
                }
                Err(e) => {
                    self.state = ReadState::Broken;
                    return Err(e);
                }
            }
        }
        let want = buf.len().min(self.left);
        loop {
            return match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    self.state = ReadState::Broken;
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a stream frame",
                    ))
                }
                Ok(n) => {
                    self.left -= n;
                    Ok(n)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.state = ReadState::Broken;
                    Err(e)
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let data: Vec<u8> = (0..(MAX_FRAME + 10)).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        write_data(&mut wire, &data).unwrap();
        write_data(&mut wire, b"").unwrap();
        write_end(&mut wire).unwrap();
        wire.extend_from_slice(b"{\"next\":1}\n");
        let mut cursor = io::Cursor::new(wire);
        let mut r = FrameReader::new(&mut cursor);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
        assert!(r.finished());
        // The connection is in step: the next line follows.
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "{\"next\":1}\n");
    }

    #[test]
    fn bad_streams_are_errors() {
        for (wire, what) in [
            (&b"abc\n"[..], "bad stream frame header"),
            (&b"99999999\n"[..], "larger than"),
            (&b"5\nab"[..], "middle of a stream frame"),
            (&b"2\nab"[..], "without an end frame"),
            (&b"abort\n"[..], "aborted"),
        ] {
            let mut r = FrameReader::new(wire);
            let mut got = Vec::new();
            let e = r.read_to_end(&mut got).unwrap_err();
            assert!(e.to_string().contains(what), "{wire:?}: {e}");
        }
        let mut r = FrameReader::new(&b"2\nab0\n"[..]);
        r.drain().unwrap();
        assert!(r.finished());
        let mut r = FrameReader::new(&b"2\nababort\n"[..]);
        r.drain().unwrap();
        assert!(r.finished() && !r.broken());
    }
}
