//! The smallest executor that honours the runner/executor contract, for the
//! benchmark suite (`benches/suite.rs`). Standard library only, so its own
//! start-up cost is as small as a Rust program's can be.
//!
//! * `--version` anywhere on the command line: prints `noop-executor 0.1.0`.
//! * `--manifest FILE`: writes `{}` to FILE (relative to the working directory).
//! * Otherwise run mode, with the runner's arguments (`--path F --id ID
//!   --flow FLO ...`, any order, unknown ones ignored): reads the flow file
//!   named by `--path` (default `execution.flow`); when it holds
//!   `"print_lines": N` (and optionally `"line_bytes": B`, default 100), prints
//!   N lines of B bytes (newline not counted) to stdout as fast as it can.
//!   Line `i` (from 0) starts with `i` as 10 zero-padded digits and a space,
//!   padded with `x`, so the order of delivery can be checked. With
//!   `"sleep_ms": M` it then sleeps M milliseconds. Then writes
//!   `state.json` in the working directory:
//!   `{"id":ID,"flow_id":FLO,"status":0,"duration":0,"billing_duration":0,"outputs":{}}`
//!   and exits 0.

use std::fs;
use std::io::{self, Write};
use std::process;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("noop-executor 0.1.0");
        return;
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(file) = value("--manifest") {
        if let Err(e) = fs::write(&file, b"{}") {
            eprintln!("noop-executor: cannot write {file}: {e}");
            process::exit(1);
        }
        return;
    }
    let id = value("--id").unwrap_or_default();
    let flow_id = value("--flow").unwrap_or_default();
    let path = value("--path").unwrap_or_else(|| "execution.flow".to_string());
    let flow = fs::read_to_string(&path).unwrap_or_default();
    if let Some(lines) = number_after(&flow, "\"print_lines\"") {
        let bytes = number_after(&flow, "\"line_bytes\"").unwrap_or(100);
        print_lines(lines, bytes as usize);
    }
    if let Some(ms) = number_after(&flow, "\"sleep_ms\"") {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    let state = format!(
        "{{\"id\":{},\"flow_id\":{},\"status\":0,\"duration\":0,\"billing_duration\":0,\"outputs\":{{}}}}",
        json_string(&id),
        json_string(&flow_id)
    );
    if let Err(e) = fs::write("state.json", state) {
        eprintln!("noop-executor: cannot write state.json: {e}");
        process::exit(1);
    }
}

/// The unsigned integer after `key` and a colon, if any (a tiny scan, enough
/// for the flat flows the benchmark writes).
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Prints `count` numbered lines of `bytes` bytes each, through one large
/// buffer; output errors (a closed pipe) end the printing.
fn print_lines(count: u64, bytes: usize) {
    let width = bytes.max(11);
    let mut line = vec![b'x'; width + 1];
    line[10] = b' ';
    line[width] = b'\n';
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
    for i in 0..count {
        let mut n = i;
        for d in line[..10].iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        if out.write_all(&line).is_err() {
            return;
        }
    }
    let _ = out.flush();
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
