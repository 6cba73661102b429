//! Executor output: split into bounded lines, keep a bounded tail for the
//! result's `state.logs`, and a capped copy in `output.log`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::sync::Arc;

use crate::flowdir::FlowDir;

/// The executor's output, as lines, in its execution directory.
pub const OUTPUT_FILE: &str = "output.log";

/// Longest line kept; the rest of a longer line is cut with a marker, so one
/// endless line never stalls the reader or grows memory.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Room kept in `state.logs` for the "cut" marker line.
const MARKER_ROOM: usize = 160;

/// What a reader of executor output hands on.
pub enum Output {
    /// One line: invalid UTF-8 replaced, `\n` removed, over-long lines cut.
    Line(String),
    /// Everything read so far has been handed on, and the next read may
    /// wait: the moment to flush what was buffered (`output.log`), so that
    /// the file is current whenever the executor is quiet (crash recovery
    /// reads its tail).
    CaughtUp,
}

/// Reads `source` line by line as output arrives, calling `emit` for each
/// line and whenever it has caught up. Memory is one 64 KiB buffer plus one
/// line, whatever the executor prints.
pub fn read_lines<R: Read>(source: R, mut emit: impl FnMut(Output)) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, source);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut: u64 = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !line.is_empty() || cut > 0 {
                    emit(Output::Line(finish(&mut line, &mut cut)));
                }
                return Err(e);
            }
        };
        if buf.is_empty() {
            if !line.is_empty() || cut > 0 {
                emit(Output::Line(finish(&mut line, &mut cut)));
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
            emit(Output::Line(finish(&mut line, &mut cut)));
        }
        if reader.buffer().is_empty() {
            emit(Output::CaughtUp);
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

/// `output.log` in the execution directory, capped at `cap` bytes. The file
/// is created on the first line, so an execution that prints nothing costs
/// no inode (creating one is the dearest thing the runner does on a busy
/// ext4; see BENCHMARKS.md).
pub struct OutputFile {
    dir: Arc<FlowDir>,
    file: Sink,
    written: u64,
    cap: u64,
    capped: bool,
    /// The last line once the cap is reached.
    marker: String,
}

enum Sink {
    NotYet,
    Open(BufWriter<File>),
    Off,
}

impl OutputFile {
    pub fn new(dir: Arc<FlowDir>, cap: u64) -> Self {
        Self {
            dir,
            file: Sink::NotYet,
            written: 0,
            cap,
            capped: false,
            marker: format!(
                "[flo-runner: output.log reached its {cap} byte cap; the rest was not written]\n"
            ),
        }
    }

    pub fn write_line(&mut self, line: &str) {
        if self.capped {
            return;
        }
        if let Sink::NotYet = self.file {
            // Created only now, with the executor running: never through
            // what it may have left at that name (see FlowDir::create_new).
            self.file = match self.dir.create_new(OUTPUT_FILE) {
                Ok(f) => Sink::Open(BufWriter::new(f)),
                Err(e) => {
                    log::warn!(
                        "cannot write {}: {e}",
                        self.dir.path().join(OUTPUT_FILE).display()
                    );
                    Sink::Off
                }
            };
        }
        let Sink::Open(f) = &mut self.file else {
            return;
        };
        let len = line.len() as u64 + 1;
        // Room is kept for the marker, so the file never exceeds the cap.
        let room = self.cap.saturating_sub(self.marker.len() as u64);
        let result = if self.written + len > room {
            self.capped = true;
            f.write_all(self.marker.as_bytes())
        } else {
            self.written += len;
            f.write_all(line.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
        };
        if let Err(e) = result {
            log::warn!("writing output.log failed, giving up on it: {e}");
            self.file = Sink::Off;
        }
    }

    /// Writes out what is buffered (see [`Output::CaughtUp`]).
    pub fn flush(&mut self) {
        if let Sink::Open(f) = &mut self.file {
            if let Err(e) = f.flush() {
                log::warn!("writing output.log failed, giving up on it: {e}");
                self.file = Sink::Off;
            }
        }
    }

    pub fn close(&mut self) {
        if let Sink::Open(mut f) = std::mem::replace(&mut self.file, Sink::Off) {
            let _ = f.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        read_lines(input, |o| {
            if let Output::Line(l) = o {
                out.push(l)
            }
        })
        .unwrap();
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
        small.push("");
        small.push("b");
        assert_eq!(small.render(), "a\n\nb");
        assert_eq!(LogTail::new(1000).render(), "");
        // A line longer than the whole budget keeps its end, at a char boundary.
        let mut long = LogTail::new(MARKER_ROOM + 10);
        long.push("first");
        long.push(&"é".repeat(20));
        let r = long.render();
        assert!(r.ends_with("ééé"), "{r}");
        assert!(r.starts_with("[flo-runner: output cut, 1 lines"), "{r}");
        assert!(!r.contains('\u{FFFD}'), "{r}");
    }

    #[test]
    fn output_file_appears_with_the_first_line_and_never_writes_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let fd = Arc::new(FlowDir::create(root.path(), "f", "e").unwrap());
        let dir = fd.path().to_path_buf();
        let path = dir.join("output.log");
        let mut quiet = OutputFile::new(fd.clone(), 1 << 20);
        quiet.close();
        assert!(!path.exists(), "no output, no file");

        let outside = root.path().join("outside");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        let mut f = OutputFile::new(fd, 1 << 20);
        f.write_line("hello");
        f.close();
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn output_file_never_exceeds_its_cap() {
        let root = tempfile::tempdir().unwrap();
        let fd = Arc::new(FlowDir::create(root.path(), "f", "e").unwrap());
        let path = fd.path().join("output.log");
        let mut f = OutputFile::new(fd, 300);
        for i in 0..100 {
            f.write_line(&format!("line {i:04}"));
        }
        f.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 300, "{} bytes", text.len());
        assert!(text.starts_with("line 0000\n"));
        assert!(
            text.ends_with("byte cap; the rest was not written]\n"),
            "{text}"
        );
    }
}
