//! The one line splitter: a byte stream in, `\n`-terminated lines out, each
//! kept to at most `cap` bytes so memory stays bounded however long a line
//! is. Agents' stdout and stderr and both ends of the local socket read
//! through it.

use std::io::{self, Read};

/// What one line turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// A whole line (without its newline, or a trailing `\r`).
    Line,
    /// A line of this many bytes, longer than the cap: only its first `cap`
    /// bytes are given.
    TooLong(usize),
}

/// A splitter fed chunks as they arrive.
#[derive(Debug)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    cap: usize,
    total: usize,
}

impl Lines {
    pub(crate) fn new(cap: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            cap,
            total: 0,
        }
    }

    fn push(&mut self, d: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&d[..d.len().min(room)]);
        self.total = self.total.saturating_add(d.len());
    }

    fn emit<B>(&mut self, out: &mut dyn FnMut(LineRead, &[u8]) -> Flow<B>) -> Flow<B> {
        let kind = if self.total > self.cap {
            LineRead::TooLong(self.total)
        } else {
            LineRead::Line
        };
        let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        let flow = out(kind, line);
        self.buf.clear();
        self.total = 0;
        // A huge line's buffer is not kept around.
        if self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::new();
        }
        flow
    }

    /// Splits `data` (any chunk of the stream) and hands each completed line
    /// to `out`, which may stop the feed.
    pub(crate) fn feed<B>(
        &mut self,
        mut data: &[u8],
        out: &mut dyn FnMut(LineRead, &[u8]) -> Flow<B>,
    ) -> Flow<B> {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            self.push(&data[..i]);
            if let Flow::Break(b) = self.emit(out) {
                return Flow::Break(b);
            }
            data = &data[i + 1..];
        }
        self.push(data);
        Flow::Continue
    }

    /// At the end of the stream: a last line without a newline still
    /// counts.
    pub(crate) fn finish<B>(&mut self, out: &mut dyn FnMut(LineRead, &[u8]) -> Flow<B>) -> Flow<B> {
        if self.total > 0 {
            self.emit(out)
        } else {
            Flow::Continue
        }
    }
}

/// Whether a reader of lines goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow<B = ()> {
    Continue,
    Break(B),
}

/// Reads `r` to its end (or an error), handing each line of at most `cap`
/// bytes to `out` until it says stop. A read that times out (a socket with
/// a read timeout) asks `idle` whether to go on. Returns how the reading
/// ended: `Ok` at end of file or when told to stop, the read error
/// otherwise.
pub(crate) fn read_lines<R: Read>(
    mut r: R,
    cap: usize,
    out: &mut dyn FnMut(LineRead, &[u8]) -> Flow,
    idle: &mut dyn FnMut() -> Flow,
) -> io::Result<()> {
    let mut lines = Lines::new(cap);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) => {
                lines.finish(out);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                match idle() {
                    Flow::Continue => continue,
                    Flow::Break(()) => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        };
        if let Flow::Break(()) = lines.feed(&chunk[..n], out) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_lines_are_split_and_capped_across_chunks() {
        let mut got = Vec::new();
        let mut l = Lines::new(5);
        let mut out = |r, b: &[u8]| -> Flow {
            got.push((r, b.to_vec()));
            Flow::Continue
        };
        for chunk in [&b"ab\n012"[..], b"3456789\n", b"\nla", b"st"] {
            l.feed(chunk, &mut out);
        }
        l.finish(&mut out);
        assert_eq!(
            got,
            vec![
                (LineRead::Line, b"ab".to_vec()),
                (LineRead::TooLong(10), b"01234".to_vec()),
                (LineRead::Line, b"".to_vec()),
                (LineRead::Line, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn a_reader_is_read_to_its_end_or_until_told_to_stop() {
        let mut got = Vec::new();
        read_lines(
            &b"one\r\ntwo\nthree"[..],
            100,
            &mut |_, b| {
                got.push(String::from_utf8_lossy(b).into_owned());
                Flow::Continue
            },
            &mut || Flow::Break(()),
        )
        .unwrap();
        assert_eq!(got, ["one", "two", "three"]);
        let mut first = None;
        read_lines(
            &b"a\nb\nc\n"[..],
            100,
            &mut |_, b| {
                first = Some(b.to_vec());
                Flow::Break(())
            },
            &mut || Flow::Break(()),
        )
        .unwrap();
        assert_eq!(first.as_deref(), Some(&b"a"[..]));
    }
}
