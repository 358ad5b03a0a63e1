//! The CRI container log format kubelet reads:
//! `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`, one record per line of
//! output; a line longer than [`MAX_LINE`] is cut into partial (`P`) records
//! and ends with a full (`F`) one.

use std::io::Write;

/// The longest record body, as containerd and CRI-O cut them.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Buffers one stream's bytes and turns them into records.
#[derive(Debug)]
pub struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    /// A splitter for `stream`.
    pub fn new(stream: Stream) -> LineSplitter {
        LineSplitter { stream, pending: Vec::with_capacity(1024) }
    }

    /// Feeds bytes; writes every complete record to `out` stamped with `ts`.
    pub fn feed(&mut self, mut bytes: &[u8], ts: &str, out: &mut impl Write) -> std::io::Result<()> {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(i) if self.pending.len() + i <= MAX_LINE => {
                    self.pending.extend_from_slice(&bytes[..i]);
                    self.emit(b'F', ts, out)?;
                    bytes = &bytes[i + 1..];
                }
                _ => {
                    let room = MAX_LINE - self.pending.len();
                    let take = room.min(bytes.len());
                    self.pending.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.pending.len() == MAX_LINE {
                        // A line ending exactly at the limit is still a full one.
                        if bytes.first() == Some(&b'\n') {
                            self.emit(b'F', ts, out)?;
                            bytes = &bytes[1..];
                        } else {
                            self.emit(b'P', ts, out)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// At end of stream: a last line without a newline is written as partial,
    /// as containerd does.
    pub fn finish(&mut self, ts: &str, out: &mut impl Write) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.emit(b'P', ts, out)?;
        }
        Ok(())
    }

    fn emit(&mut self, tag: u8, ts: &str, out: &mut impl Write) -> std::io::Result<()> {
        let mut rec = Vec::with_capacity(ts.len() + self.pending.len() + 12);
        rec.extend_from_slice(ts.as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(self.stream.name().as_bytes());
        rec.push(b' ');
        rec.push(tag);
        rec.push(b' ');
        rec.extend_from_slice(&self.pending);
        rec.push(b'\n');
        self.pending.clear();
        out.write_all(&rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> String {
        let mut s = LineSplitter::new(Stream::Stdout);
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, "T", &mut out).unwrap();
        }
        s.finish("T", &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(run(&[b"hel", b"lo\nwor", b"ld\n"]), "T stdout F hello\nT stdout F world\n");
        assert_eq!(run(&[b"\n\n"]), "T stdout F \nT stdout F \n");
        assert_eq!(run(&[b"tail"]), "T stdout P tail\n");
    }

    #[test]
    fn long_lines_become_partials() {
        let line = vec![b'x'; MAX_LINE * 2 + 5];
        let mut input = line.clone();
        input.push(b'\n');
        let out = run(&[&input]);
        let recs: Vec<&str> = out.lines().collect();
        assert_eq!(recs.len(), 3);
        assert!(recs[0].starts_with("T stdout P ") && recs[0].len() == 11 + MAX_LINE);
        assert!(recs[1].starts_with("T stdout P "));
        assert_eq!(recs[2], format!("T stdout F {}", "x".repeat(5)));
    }

    #[test]
    fn exact_limit_line_is_full() {
        let mut input = vec![b'y'; MAX_LINE];
        input.push(b'\n');
        let out = run(&[&input[..100], &input[100..]]);
        assert_eq!(out.lines().count(), 1);
        assert!(out.starts_with("T stdout F "));
    }
}
