//! A stand-alone example executor implementing the runner/executor contract
//! (PROTOCOL.md §7 and §8). It runs the demo and drives the runner's
//! integration tests, so every behaviour below is exact and stable.
//!
//! It deliberately does not use the `flo_runner` library: an executor is a
//! separate program, and this one only needs std and `serde_json`.
//!
//! # Modes
//!
//! * `--version` anywhere on the command line: print `example-executor 0.1.0`
//!   and a newline on stdout, exit 0. Other arguments are ignored (the runner
//!   may prepend leading arguments from `executable_name`).
//! * `--manifest FILE`: write the action manifest (JSON, see [`manifest`]) to
//!   FILE (relative to the working directory), exit 0. It is an object of
//!   action definitions keyed by node type (`{"log": {"name": "log",
//!   "description": ..., "version": ..., "inputs": {...}}, ...}`), the shape
//!   a real Flomation API accepts.
//! * Otherwise run mode. The arguments the runner passes are
//!   `--output json --path execution.flow --entry E --id ID --flow FLO
//!   --api URL --runner NAME [--environment ENV] [--trigger-data F]
//!   [--context F] [--key PATH]`, accepted in any order, also as `--flag=value`.
//!   A known flag always takes the next argument as its value (even an empty
//!   one); unknown flags and stray words are ignored.
//!
//! # Run mode
//!
//! 1. Before anything else, `argv.json` is written in the working directory:
//!    `{"argv": [every argument after argv[0], in order], "cwd": "<absolute
//!    cwd>", "pid": <pid>, "pgid": <process group id, from /proc/self/stat;
//!    null where that is unavailable>}`.
//! 2. The flow file (`--path`) is read: `{"nodes": [...], "edges": [...]}`.
//!    A missing `--path`, or a flow file that cannot be read or is not JSON,
//!    prints a message on stderr and exits 2 without writing `state.json`.
//!    A flow without a `nodes` array has no nodes. Edges are ignored.
//! 3. Nodes run in array order, starting at the node whose `id` equals
//!    `--entry` when that is non-empty and found (otherwise at the first).
//!    A node's id is its `id` field (a string, or any JSON value rendered as
//!    JSON), or `#<index>` when it has none. Node types:
//!
//!    | node | behaviour |
//!    |---|---|
//!    | `{"type":"log","message":M}` | stdout line `[node <id>] M` |
//!    | `{"type":"stderr","message":M}` | stderr line `[node <id>] M` |
//!    | `{"type":"print","count":N,"bytes":B,"stream":S}` | N lines (default 1) on S (`stdout`, the default, or `stderr`); line i (from 1) is `line 000001 ` padded with `x` to B bytes (default 80; never shorter than the prefix), newline not counted; buffered, flushed at the end of the node |
//!    | `{"type":"binary","bytes":N,"stream":S}` | N bytes (default 16) cycling `ff fe fd fc` (never valid UTF-8), then `\n` |
//!    | `{"type":"longline","bytes":N,"stream":S}` | N bytes (default 100000) of `a`, with NO newline after them; output from later nodes continues the same line |
//!    | `{"type":"sleep","ms":N}` | sleeps N ms (default 0) |
//!    | `{"type":"fail","message":M}` | stderr line `[node <id>] failed: M`; the final status becomes 1; the walk continues |
//!    | `{"type":"exit","code":N}` | flushes, exits at once with code N (default 0) without writing `state.json` |
//!    | `{"type":"no_state"}` | at the end, `state.json` is not written |
//!    | `{"type":"bad_state"}` | at the end, `state.json` holds the 9 bytes `{not json` |
//!    | `{"type":"status","value":V}` | the final `status` is V (any JSON value, e.g. `2` or `"weird"`); overrides `fail` |
//!    | `{"type":"ignore_sigterm"}` | from now on SIGTERM is ignored, see below; the walk continues with the next node |
//!    | `{"type":"spawn","ms":N,"stdio":"inherit"\|"null"}` | starts a grandchild `sleep N/1000` (default 60000 ms) that is not waited for, and appends its pid and `\n` to `grandchild.pid`. By default it inherits stdout/stderr (so it keeps the runner's pipes open, like a careless real flow); `"stdio":"null"` detaches it |
//!    | `{"type":"daemon","ms":N,"stdio":"inherit"\|"null","clear_env":B}` | starts a daemon the way `setsid sleep N/1000 &` in a shell does (default 60000 ms): `sh -c` backgrounds `setsid sleep`, and exits at once, so the `sleep` leads a session and process group of its own and has lost its parent (a double fork); it is not waited for, and its pid and `\n` are appended to `daemon.pid`; the node ends once that pid leads its own session and runs `sleep` (at most 5 s). By default it keeps stdout/stderr (the runner's pipes) open; `"stdio":"null"` detaches it. With `"clear_env":true` it runs under `env -i`, so it does not even inherit the environment |
//!    | `{"type":"echo_trigger"}` | when `--trigger-data F` was given, stdout line `trigger-data: <content of F>`; when `--context F` was given, `context: <content of F>`. The content has trailing whitespace trimmed and each inner line break replaced by a space. An unreadable file prints `trigger-data: <unreadable: why>` |
//!    | `{"type":"env"}` | one stdout line `env NAME=VALUE` per environment variable, sorted by name; line breaks in a value are written as `\n` |
//!    | `{"type":"read_file","path":P,"print":B}` | tries to read P (relative to the working directory): stdout line `read_file P: ok N bytes`, or `read_file P: error: open: <why>` / `read_file P: error: read: <why>` (opening and reading are told apart: `/proc/<pid>/mem` can be opened but not read at offset 0). With `"print": true` each line of the content follows as `read_file P| <line>` |
//!    | `{"type":"write_file","path":P,"content":C}` | tries to create or truncate P and write C (default empty): stdout line `write_file P: ok` or `write_file P: error: <why>` |
//!    | `{"type":"run","argv":[P, A...]}` | runs program P with arguments A (stdin and stdout null, stderr inherited) and waits: stdout line `run P: exit <code>` (`signal` when killed by one), or `run P: error: <why>` when it cannot start |
//!    | anything else | stdout line `[node <id>] skipped unknown type <t>` (`<t>` is the type rendered as JSON when it is not a string, `null` when absent) |
//!
//! 4. At the end `state.json` is written in the working directory:
//!    `{"id": ID, "flow_id": FLO, "status": S, "duration": MS,
//!    "billing_duration": MS, "outputs": {"<node id>": OUT, ...}}` where S is 0,
//!    or 1 when a `fail` node ran, or the last `status` override; MS is the
//!    wall time in whole milliseconds since start; OUT is `{"ok": true}` for a
//!    node that ran, `{"ok": false, "error": M}` for a `fail` node and
//!    `{"ok": true, "skipped": true}` for an unknown type. The exit code is 0
//!    (also after a `fail` node: the status carries the failure).
//!
//! # How `ignore_sigterm` works without libc
//!
//! std cannot change a signal disposition, and this example uses no libc
//! crate. An ignored signal stays ignored across `exec`, though, so the node
//! flushes its output and `exec`s `sh -c 'trap "" TERM; exec "$0" "$@"'` with
//! this same program and the same arguments. The pid, process group, open
//! pipes and working directory are kept; the walk's progress (next node,
//! outputs, status, start time) is carried over in the `FLO_EXAMPLE_RESUME`
//! environment variable, and the resumed process does not rewrite
//! `argv.json`. Everything it starts afterwards (e.g. `spawn` grandchildren)
//! inherits the ignored SIGTERM too, so only SIGKILL stops them. SIGTERM
//! otherwise has its default effect: the executor dies.
//!
//! Output errors (for example a closed pipe) are ignored: the executor keeps
//! going, as a real one would until it is killed.

use serde_json::{json, Map, Value};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{self, Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAME: &str = "example-executor";
const VERSION: &str = "0.1.0";
const RESUME_ENV: &str = "FLO_EXAMPLE_RESUME";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = Options::parse(&args);
    if opts.version {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{NAME} {VERSION}");
        let _ = out.flush();
        return;
    }
    if let Some(file) = &opts.manifest {
        process::exit(write_manifest(file));
    }
    process::exit(run(&args, &opts));
}

/// The command line, parsed leniently.
#[derive(Default)]
struct Options {
    version: bool,
    manifest: Option<String>,
    path: Option<String>,
    entry: Option<String>,
    id: Option<String>,
    flow: Option<String>,
    trigger_data: Option<String>,
    context: Option<String>,
}

impl Options {
    /// The flags that take the next argument as their value (when not given
    /// as `--flag=value`); values of the ones not kept are dropped.
    const WITH_VALUE: &[&str] = &[
        "output",
        "path",
        "entry",
        "id",
        "flow",
        "api",
        "runner",
        "environment",
        "trigger-data",
        "context",
        "key",
        "manifest",
    ];

    fn parse(args: &[String]) -> Options {
        let mut opts = Options::default();
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            i += 1;
            let Some(flag) = arg.strip_prefix("--") else {
                continue; // stray word: ignored
            };
            if flag == "version" {
                opts.version = true;
                continue;
            }
            let (name, value) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None if Self::WITH_VALUE.contains(&flag) => {
                    let value = args.get(i).cloned();
                    i += 1;
                    (flag, value)
                }
                None => continue, // unknown flag: ignored
            };
            if let Some(value) = value {
                opts.set(name, value);
            }
        }
        opts
    }

    /// Keeps the value of a flag this executor uses; others are ignored.
    fn set(&mut self, name: &str, value: String) {
        match name {
            "manifest" => self.manifest = Some(value),
            "path" => self.path = Some(value),
            "entry" => self.entry = Some(value),
            "id" => self.id = Some(value),
            "flow" => self.flow = Some(value),
            "trigger-data" => self.trigger_data = Some(value),
            "context" => self.context = Some(value),
            _ => {}
        }
    }
}

/// The action manifest in the shape the Flomation API stores: an object whose
/// keys are action types and whose values are action definitions (the API
/// refuses any other shape with 400, PROTOCOL.md §9).
fn manifest() -> Value {
    let text = |what: &str| json!({"type": "string", "description": what});
    let number = |what: &str| json!({"type": "number", "description": what});
    let action = |name: &str, description: &str, inputs: Value| json!({"name": name, "description": description, "version": VERSION, "inputs": inputs});
    json!({
        "log": action("log", "Writes a message to the execution log.",
            json!({"message": text("the line to write")})),
        "stderr": action("stderr", "Writes a message to standard error.",
            json!({"message": text("the line to write")})),
        "print": action("print", "Writes numbered lines of a given length.",
            json!({"count": number("how many lines"), "bytes": number("bytes per line"),
                   "stream": text("stdout or stderr")})),
        "sleep": action("sleep", "Waits for a number of milliseconds.",
            json!({"ms": number("how long to wait")})),
        "fail": action("fail", "Marks the execution as failed and carries on.",
            json!({"message": text("why")})),
        "echo_trigger": action("echo_trigger", "Logs the trigger data and context.", json!({})),
    })
}

fn write_manifest(file: &str) -> i32 {
    let text = match serde_json::to_vec_pretty(&manifest()) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("{NAME}: cannot serialise the manifest: {e}");
            return 1;
        }
    };
    match fs::write(file, text) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{NAME}: cannot write manifest {file}: {e}");
            1
        }
    }
}

/// Progress of the walk; carried across the `ignore_sigterm` re-exec.
struct Walk {
    next: usize,
    start_ms: u64,
    failed: bool,
    status: Option<Value>,
    no_state: bool,
    bad_state: bool,
    outputs: Map<String, Value>,
}

impl Walk {
    fn new() -> Walk {
        Walk {
            next: 0,
            start_ms: now_ms(),
            failed: false,
            status: None,
            no_state: false,
            bad_state: false,
            outputs: Map::new(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "next": self.next,
            "start_ms": self.start_ms,
            "failed": self.failed,
            "status": self.status,
            "no_state": self.no_state,
            "bad_state": self.bad_state,
            "outputs": self.outputs,
        })
    }

    fn from_json(v: &Value) -> Option<Walk> {
        Some(Walk {
            next: usize::try_from(v.get("next")?.as_u64()?).ok()?,
            start_ms: v.get("start_ms")?.as_u64()?,
            failed: v.get("failed")?.as_bool()?,
            status: v.get("status").filter(|s| !s.is_null()).cloned(),
            no_state: v.get("no_state")?.as_bool()?,
            bad_state: v.get("bad_state")?.as_bool()?,
            outputs: v.get("outputs")?.as_object()?.clone(),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn run(args: &[String], opts: &Options) -> i32 {
    let (mut walk, resumed) = match start_walk(args) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let flow = match read_flow(opts) {
        Ok(flow) => flow,
        Err(code) => return code,
    };
    let nodes: &[Value] = flow
        .get("nodes")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    // A resumed walk already knows its next node; only a fresh one honours
    // `--entry`.
    if !resumed {
        if let Some(i) = entry_index(nodes, opts.entry.as_deref().unwrap_or("")) {
            walk.next = i;
        }
    }
    if let Some(code) = walk_nodes(nodes, args, opts, &mut walk) {
        flush_all();
        return code;
    }
    flush_all();
    write_state(opts, &walk)
}

/// The walk to carry on with and whether it was resumed: the one carried over
/// an `ignore_sigterm` re-exec, or a fresh one after writing `argv.json`.
/// `Err` holds the exit code.
fn start_walk(args: &[String]) -> Result<(Walk, bool), i32> {
    let resumed = std::env::var(RESUME_ENV).ok();
    std::env::remove_var(RESUME_ENV);
    let Some(text) = resumed else {
        if let Err(e) = write_argv(args) {
            eprintln!("{NAME}: cannot write argv.json: {e}");
        }
        return Ok((Walk::new(), false));
    };
    match serde_json::from_str(&text)
        .ok()
        .as_ref()
        .and_then(Walk::from_json)
    {
        Some(walk) => Ok((walk, true)),
        None => {
            eprintln!("{NAME}: {RESUME_ENV} is not a valid resume state");
            Err(2)
        }
    }
}

/// The flow file named by `--path`, parsed. `Err` holds the exit code.
fn read_flow(opts: &Options) -> Result<Value, i32> {
    let Some(path) = &opts.path else {
        eprintln!("{NAME}: no flow file given (--path)");
        return Err(2);
    };
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            eprintln!("{NAME}: flow file {path} is not valid JSON: {e}");
            2
        }),
        Err(e) => {
            eprintln!("{NAME}: cannot read flow file {path}: {e}");
            Err(2)
        }
    }
}

/// The index of the node whose id is `entry`; `None` when `entry` is empty or
/// names no node (the walk then starts at the first).
fn entry_index(nodes: &[Value], entry: &str) -> Option<usize> {
    if entry.is_empty() {
        return None;
    }
    nodes
        .iter()
        .enumerate()
        .position(|(i, n)| node_id(n, i) == entry)
}

/// Runs the nodes from `walk.next` on, recording their outputs. Returns the
/// exit code when an `exit` node ends the executor at once.
fn walk_nodes(nodes: &[Value], args: &[String], opts: &Options, walk: &mut Walk) -> Option<i32> {
    while walk.next < nodes.len() {
        let index = walk.next;
        walk.next += 1;
        let node = &nodes[index];
        let id = node_id(node, index);
        match run_node(node, &id, opts, walk) {
            Step::Continue(output) => {
                walk.outputs.insert(id, output);
            }
            Step::Exit(code) => return Some(code),
            Step::IgnoreSigterm => {
                walk.outputs.insert(id, json!({"ok": true}));
                // Only returns when the exec failed.
                let e = reexec_ignoring_sigterm(args, walk);
                eprintln!("{NAME}: cannot re-exec to ignore SIGTERM: {e}");
            }
        }
    }
    None
}

/// Writes `state.json` at the end of the walk (unless a `no_state` node ran)
/// and returns the exit code.
fn write_state(opts: &Options, walk: &Walk) -> i32 {
    if walk.no_state {
        return 0;
    }
    let contents = if walk.bad_state {
        b"{not json".to_vec()
    } else {
        match serde_json::to_vec(&final_state(opts, walk)) {
            Ok(bytes) => bytes,
            Err(e) => {
                eprintln!("{NAME}: cannot serialise state.json: {e}");
                return 1;
            }
        }
    };
    if let Err(e) = fs::write("state.json", contents) {
        eprintln!("{NAME}: cannot write state.json: {e}");
        return 1;
    }
    0
}

/// The `state.json` document: the last `status` override, else 1 after a
/// `fail` node, else 0.
fn final_state(opts: &Options, walk: &Walk) -> Value {
    let duration = now_ms().saturating_sub(walk.start_ms);
    let status = walk
        .status
        .clone()
        .unwrap_or_else(|| json!(i32::from(walk.failed)));
    json!({
        "id": opts.id.as_deref().unwrap_or(""),
        "flow_id": opts.flow.as_deref().unwrap_or(""),
        "status": status,
        "duration": duration,
        "billing_duration": duration,
        "outputs": walk.outputs,
    })
}

fn write_argv(args: &[String]) -> io::Result<()> {
    let cwd = std::env::current_dir()?;
    let doc = json!({
        "argv": args,
        "cwd": cwd.to_string_lossy(),
        "pid": process::id(),
        "pgid": stat_field::<i64>("/proc/self/stat", 5),
    });
    fs::write(
        "argv.json",
        serde_json::to_vec(&doc).map_err(io::Error::other)?,
    )
}

fn node_id(node: &Value, index: usize) -> String {
    match node.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => format!("#{index}"),
        Some(other) => other.to_string(),
    }
}

enum Step {
    Continue(Value),
    Exit(i32),
    IgnoreSigterm,
}

fn str_field<'a>(node: &'a Value, key: &str) -> &'a str {
    node.get(key).and_then(Value::as_str).unwrap_or("")
}

fn u64_field(node: &Value, key: &str, default: u64) -> u64 {
    node.get(key).and_then(Value::as_u64).unwrap_or(default)
}

fn usize_field(node: &Value, key: &str, default: usize) -> usize {
    usize::try_from(u64_field(node, key, default as u64)).unwrap_or(usize::MAX)
}

/// Runs one node (see the table in the module comment) and says how the walk
/// goes on.
fn run_node(node: &Value, id: &str, opts: &Options, walk: &mut Walk) -> Step {
    match node.get("type").and_then(Value::as_str) {
        Some("log") => write_line(&mut io::stdout().lock(), node_message(node, id).as_bytes()),
        Some("stderr") => write_line(&mut io::stderr().lock(), node_message(node, id).as_bytes()),
        Some("print") => print_numbered_lines(node),
        Some("binary") => print_binary(node),
        Some("longline") => print_long_line(node),
        Some("sleep") => {
            flush_all();
            thread::sleep(Duration::from_millis(u64_field(node, "ms", 0)));
        }
        Some("fail") => return fail(node, id, walk),
        Some("exit") => {
            let code = node.get("code").and_then(Value::as_i64).unwrap_or(0);
            return Step::Exit(i32::try_from(code).unwrap_or(1));
        }
        Some("no_state") => walk.no_state = true,
        Some("bad_state") => walk.bad_state = true,
        Some("status") => walk.status = Some(node.get("value").cloned().unwrap_or(Value::Null)),
        Some("ignore_sigterm") => return Step::IgnoreSigterm,
        Some("spawn") => spawn_grandchild(node, id),
        Some("daemon") => spawn_daemon(node, id),
        Some("echo_trigger") => echo_trigger(opts),
        Some("env") => print_env(),
        Some("read_file") => read_file(
            str_field(node, "path"),
            node.get("print") == Some(&json!(true)),
        ),
        Some("run") => run_program(node),
        Some("write_file") => write_file(str_field(node, "path"), str_field(node, "content")),
        _ => return skip_unknown(node, id),
    }
    Step::Continue(json!({"ok": true}))
}

/// The line of a `log` or `stderr` node.
fn node_message(node: &Value, id: &str) -> String {
    format!("[node {id}] {}", str_field(node, "message"))
}

/// The `print` node: `count` numbered lines padded with `x` to `bytes`.
fn print_numbered_lines(node: &Value) {
    let count = u64_field(node, "count", 1);
    let bytes = usize_field(node, "bytes", 80);
    with_stream(node, |out| {
        let mut line = Vec::with_capacity(bytes + 1);
        for i in 1..=count {
            line.clear();
            let _ = write!(line, "line {i:06} ");
            if line.len() < bytes {
                line.resize(bytes, b'x');
            }
            line.push(b'\n');
            out.write_all(&line)?;
        }
        Ok(())
    });
}

/// The `binary` node: bytes that are never valid UTF-8, then a newline.
fn print_binary(node: &Value) {
    let n = usize_field(node, "bytes", 16);
    let mut data: Vec<u8> = [0xff, 0xfe, 0xfd, 0xfc]
        .into_iter()
        .cycle()
        .take(n)
        .collect();
    data.push(b'\n');
    with_stream(node, |out| out.write_all(&data));
}

/// The `longline` node: `bytes` of `a` and no newline.
fn print_long_line(node: &Value) {
    let n = usize_field(node, "bytes", 100_000);
    with_stream(node, |out| {
        let chunk = [b'a'; 8192];
        let mut left = n;
        while left > 0 {
            let take = left.min(chunk.len());
            out.write_all(&chunk[..take])?;
            left -= take;
        }
        Ok(())
    });
}

/// The `fail` node: the failure is reported and recorded, and the walk goes on.
fn fail(node: &Value, id: &str, walk: &mut Walk) -> Step {
    let message = str_field(node, "message");
    let line = format!("[node {id}] failed: {message}");
    write_line(&mut io::stderr().lock(), line.as_bytes());
    walk.failed = true;
    Step::Continue(json!({"ok": false, "error": message}))
}

/// An unknown node type: said so on stdout, and recorded as skipped.
fn skip_unknown(node: &Value, id: &str) -> Step {
    let kind = match node.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "null".to_string(),
    };
    let line = format!("[node {id}] skipped unknown type {kind}");
    write_line(&mut io::stdout().lock(), line.as_bytes());
    Step::Continue(json!({"ok": true, "skipped": true}))
}

/// The `echo_trigger` node: the trigger data and context files, one line each.
fn echo_trigger(opts: &Options) {
    for (label, file) in [
        ("trigger-data", &opts.trigger_data),
        ("context", &opts.context),
    ] {
        if let Some(file) = file {
            let line = match fs::read(file) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    let text = text
                        .trim_end()
                        .replace("\r\n", " ")
                        .replace(['\n', '\r'], " ");
                    format!("{label}: {text}")
                }
                Err(e) => format!("{label}: <unreadable: {e}>"),
            };
            write_line(&mut io::stdout().lock(), line.as_bytes());
        }
    }
}

/// The `env` node: the environment, sorted by name, one variable a line.
fn print_env() {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    vars.sort();
    let mut out = io::stdout().lock();
    for (k, v) in vars {
        let line = format!("env {k}={}", v.replace('\n', "\\n"));
        write_line(&mut out, line.as_bytes());
    }
}

/// The `run` node: runs `argv` to completion and reports how it ended.
fn run_program(node: &Value) {
    let argv: Vec<&str> = node
        .get("argv")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let program = argv.first().copied().unwrap_or("");
    flush_all();
    let line = match Command::new(program)
        .args(argv.iter().skip(1))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
    {
        Ok(status) => match status.code() {
            Some(code) => format!("run {program}: exit {code}"),
            None => format!("run {program}: signal"),
        },
        Err(e) => format!("run {program}: error: {e}"),
    };
    write_line(&mut io::stdout().lock(), line.as_bytes());
}

/// The `write_file` node: says whether `path` could be written.
fn write_file(path: &str, content: &str) {
    let line = match fs::write(path, content) {
        Ok(()) => format!("write_file {path}: ok"),
        Err(e) => format!("write_file {path}: error: {e}"),
    };
    write_line(&mut io::stdout().lock(), line.as_bytes());
}

/// The `read_file` node: says whether `path` could be opened and read.
fn read_file(path: &str, print: bool) {
    use std::io::Read;
    let mut content = Vec::new();
    let line = match fs::File::open(path) {
        Err(e) => format!("read_file {path}: error: open: {e}"),
        Ok(mut file) => match file.read_to_end(&mut content) {
            Ok(n) => format!("read_file {path}: ok {n} bytes"),
            Err(e) => format!("read_file {path}: error: read: {e}"),
        },
    };
    let mut out = io::stdout().lock();
    write_line(&mut out, line.as_bytes());
    if print {
        for l in String::from_utf8_lossy(&content).lines() {
            write_line(&mut out, format!("read_file {path}| {l}").as_bytes());
        }
    }
}

/// Writes one line; output errors are ignored (see the module comment).
fn write_line(out: &mut dyn Write, line: &[u8]) {
    let _ = out.write_all(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Runs `body` against the node's `stream` (stdout unless `"stderr"`) through
/// a large buffer, then flushes. Errors stop the node and are otherwise ignored.
fn with_stream(node: &Value, body: impl FnOnce(&mut dyn Write) -> io::Result<()>) {
    fn go(out: impl Write, body: impl FnOnce(&mut dyn Write) -> io::Result<()>) {
        let mut out = BufWriter::with_capacity(64 * 1024, out);
        let _ = body(&mut out);
        let _ = out.flush();
    }
    if str_field(node, "stream") == "stderr" {
        go(io::stderr().lock(), body);
    } else {
        go(io::stdout().lock(), body);
    }
}

fn flush_all() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

/// With `"stdio": "null"` the child gets no stdin/stdout/stderr; otherwise it
/// inherits them (and so keeps the runner's pipes open).
fn detach_if_asked(command: &mut Command, node: &Value) {
    if str_field(node, "stdio") == "null" {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
}

fn spawn_grandchild(node: &Value, id: &str) {
    let ms = u64_field(node, "ms", 60_000);
    let seconds = if ms.is_multiple_of(1000) {
        (ms / 1000).to_string()
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
    };
    let mut command = Command::new("sleep");
    command.arg(&seconds);
    detach_if_asked(&mut command, node);
    flush_all();
    // The child is deliberately neither waited for nor killed: dropping a
    // `Child` leaves the process running.
    match command.spawn() {
        Ok(child) => {
            let pid = child.id();
            let written = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open("grandchild.pid")
                .and_then(|mut f| writeln!(f, "{pid}"));
            if let Err(e) = written {
                eprintln!("{NAME}: [node {id}] cannot write grandchild.pid: {e}");
            }
        }
        Err(e) => eprintln!("{NAME}: [node {id}] cannot spawn sleep: {e}"),
    }
}

fn spawn_daemon(node: &Value, id: &str) {
    let ms = u64_field(node, "ms", 60_000);
    let seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    let env = if node.get("clear_env").and_then(Value::as_bool) == Some(true) {
        r#"env -i "$(command -v sleep)""#
    } else {
        "sleep"
    };
    // The background job of a non-interactive sh stays in sh's process
    // group, so `setsid` does not fork again: `$!` is the daemon's pid.
    let script = format!("setsid {env} {seconds} & echo $! >> daemon.pid");
    let mut command = Command::new("sh");
    command.arg("-c").arg(script);
    detach_if_asked(&mut command, node);
    flush_all();
    match command.status() {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("{NAME}: [node {id}] the daemon's shell ended with {s}"),
        Err(e) => eprintln!("{NAME}: [node {id}] cannot run sh for the daemon: {e}"),
    }
    wait_until_daemon_runs();
}

/// `$!` is written as soon as sh has forked: wait (up to 5 s) until the
/// daemon last appended to `daemon.pid` is a session leader running `sleep`,
/// so that whoever reads `daemon.pid` after the node sees the daemon, not its
/// start.
fn wait_until_daemon_runs() {
    let pid = fs::read_to_string("daemon.pid")
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse::<u32>().ok()));
    let Some(pid) = pid else { return };
    for _ in 0..500 {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let session = stat_field::<u32>(&format!("/proc/{pid}/stat"), 6);
        if comm.trim() == "sleep" && session == Some(pid) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Field `field` (from 1, as in proc(5): 5 is the process group, 6 the
/// session) of a `/proc/<pid>/stat` file. The command name (field 2) is in
/// parentheses and may itself hold spaces or parentheses, so fields are
/// counted after the last `)`.
fn stat_field<T: std::str::FromStr>(path: &str, field: usize) -> Option<T> {
    let stat = fs::read_to_string(path).ok()?;
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

/// Replaces this process with `sh`, which ignores SIGTERM and then execs this
/// program again with the same arguments; see the module comment. Returns only
/// on failure.
fn reexec_ignoring_sigterm(args: &[String], walk: &Walk) -> io::Error {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    flush_all();
    Command::new("sh")
        .arg("-c")
        .arg(r#"trap '' TERM; exec "$0" "$@""#)
        .arg(Path::new(&exe))
        .args(args)
        .env(RESUME_ENV, walk.to_json().to_string())
        .exec()
}
