//! Executor output: split into bounded lines, keep a bounded tail for the
//! result's `state.logs`, and a capped copy in `output.log`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

/// Longest line kept; the rest of a longer line is cut with a marker, so one
/// endless line never stalls the reader or grows memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Room kept in `state.logs` for the "cut" marker line.
const MARKER_ROOM: usize = 160;

/// Reads `source` line by line as output arrives, calling `emit` for each line
/// (invalid UTF-8 replaced, `\n` removed, over-long lines cut). Memory is one
/// 64 KiB buffer plus one line, whatever the executor prints.
pub fn read_lines<R: Read>(source: R, mut emit: impl FnMut(String)) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, source);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut: u64 = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !line.is_empty() || cut > 0 {
                    emit(finish(&mut line, &mut cut));
                }
                return Err(e);
            }
        };
        if buf.is_empty() {
            if !line.is_empty() || cut > 0 {
                emit(finish(&mut line, &mut cut));
            }
            return Ok(());
        }
        let (chunk, used, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = MAX_LINE_BYTES.saturating_sub(line.len());
        let keep = room.min(chunk.len());
        line.extend_from_slice(&chunk[..keep]);
        cut += (chunk.len() - keep) as u64;
        reader.consume(used);
        if complete {
            emit(finish(&mut line, &mut cut));
        }
    }
}

fn finish(line: &mut Vec<u8>, cut: &mut u64) -> String {
    let mut text = String::from_utf8_lossy(line).into_owned();
    if *cut > 0 {
        text.push_str(&format!(
            " [flo-runner: line cut, {cut} more bytes dropped]"
        ));
    }
    line.clear();
    *cut = 0;
    text
}

/// The last `cap` bytes of output, in whole lines.
pub struct LogTail {
    budget: usize,
    lines: VecDeque<String>,
    bytes: usize,
    cut_lines: u64,
    cut_bytes: u64,
    total_lines: u64,
}

impl LogTail {
    pub fn new(cap: usize) -> Self {
        Self {
            budget: cap.saturating_sub(MARKER_ROOM).max(1),
            lines: VecDeque::new(),
            bytes: 0,
            cut_lines: 0,
            cut_bytes: 0,
            total_lines: 0,
        }
    }

    pub fn push(&mut self, line: &str) {
        self.total_lines += 1;
        let mut line = line;
        if line.len() + 1 > self.budget {
            // Keep the end of a line that alone exceeds the budget.
            let mut start = line.len() + 1 - self.budget;
            while !line.is_char_boundary(start) {
                start += 1;
            }
            self.cut_bytes += start as u64;
            line = &line[start..];
        }
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.bytes > self.budget {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.len() + 1;
                    self.cut_lines += 1;
                    self.cut_bytes += old.len() as u64 + 1;
                }
                None => break,
            }
        }
    }

    pub fn total_lines(&self) -> u64 {
        self.total_lines
    }

    /// All kept lines joined with `\n`, after a marker if anything was cut.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.bytes + MARKER_ROOM);
        if self.cut_lines > 0 || self.cut_bytes > 0 {
            out.push_str(&format!(
                "[flo-runner: output cut, {} lines and {} bytes dropped from the start]",
                self.cut_lines, self.cut_bytes
            ));
            if !self.lines.is_empty() {
                out.push('\n');
            }
        }
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(l);
        }
        out
    }
}

/// `output.log` in the execution directory, capped at `cap` bytes.
pub struct OutputFile {
    file: Option<BufWriter<File>>,
    written: u64,
    cap: u64,
    capped: bool,
}

impl OutputFile {
    pub fn create(path: &Path, cap: u64) -> Self {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::fsutil::FILE_MODE)
            .open(path)
            .map_err(|e| log::warn!("cannot write {}: {e}", path.display()))
            .ok()
            .map(BufWriter::new);
        Self {
            file,
            written: 0,
            cap,
            capped: false,
        }
    }

    pub fn write_line(&mut self, line: &str) {
        let Some(f) = self.file.as_mut() else { return };
        if self.capped {
            return;
        }
        let len = line.len() as u64 + 1;
        let result = if self.written + len > self.cap {
            self.capped = true;
            writeln!(
                f,
                "[flo-runner: output.log reached its {} byte cap; the rest was not written]",
                self.cap
            )
        } else {
            self.written += len;
            f.write_all(line.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
        };
        if let Err(e) = result {
            log::warn!("writing output.log failed, giving up on it: {e}");
            self.file = None;
        }
    }

    pub fn close(&mut self) {
        if let Some(mut f) = self.file.take() {
            let _ = f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, |l| out.push(l)).unwrap();
        out
    }

    #[test]
    fn splits_lines_and_keeps_a_last_partial_line() {
        assert_eq!(lines(b"a\nb\n\nc"), vec!["a", "b", "", "c"]);
        assert_eq!(lines(b""), Vec::<String>::new());
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(lines(b"ok \xff\xfe\n"), vec!["ok \u{fffd}\u{fffd}"]);
    }

    #[test]
    fn long_lines_are_cut_with_a_marker() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\nnext\n");
        let out = lines(&input);
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with(&"x".repeat(100)));
        assert!(
            out[0].ends_with("10 more bytes dropped]"),
            "{}",
            &out[0][MAX_LINE_BYTES..]
        );
        assert_eq!(out[1], "next");
    }

    #[test]
    fn tail_keeps_the_end_within_the_cap() {
        let mut t = LogTail::new(1000);
        for i in 0..1000 {
            t.push(&format!("line {i:04}"));
        }
        let r = t.render();
        assert!(r.len() <= 1000, "{}", r.len());
        assert!(r.starts_with("[flo-runner: output cut,"));
        assert!(r.ends_with("line 0999"));
        let mut small = LogTail::new(1000);
        small.push("a");
        small.push("b");
        assert_eq!(small.render(), "a\nb");
    }
}
