//! What each subcommand takes, and its help: the tables [`super::args`]
//! parses and renders. The option groups several subcommands share are
//! written once ([`TLS`], [`ADMIN`]).

use super::args::{Command, Group, Opt};

/// `--server` when it is not given: `serve`'s `--listen` default. [`ADMIN`]'s
/// help spells it out (a test checks they agree).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `serve`'s HTTPS options.
pub const TLS: Group = Group {
    title: "TLS (all PEM files)",
    options: &[
        Opt {
            name: "tls-cert",
            value: Some("FILE"),
            help: "serve HTTPS with this certificate chain (leaf first); its names\n\
                   must cover the URL runners use (e.g. IP 127.0.0.1, DNS localhost)",
        },
        Opt {
            name: "tls-key",
            value: Some("FILE"),
            help: "the certificate's private key (PKCS#8, PKCS#1 or SEC1)",
        },
        Opt {
            name: "tls-client-ca",
            value: Some("FILE"),
            help: "require a client certificate signed by a CA in FILE; a client\n\
                   without one fails the handshake (runner: tls.enabled, tls.cert,\n\
                   tls.key). This applies to the admin API too.",
        },
    ],
};

/// The options of every admin subcommand: which server, and how to trust
/// it and be trusted by it.
pub const ADMIN: Group = Group {
    title: "Server (every admin subcommand)",
    options: &[
        Opt {
            name: "server",
            value: Some("URL"),
            help: "the dev server (default http://127.0.0.1:8080)",
        },
        Opt {
            name: "ca-cert",
            value: Some("FILE"),
            help: "trust this CA (PEM) for an https:// server",
        },
        Opt {
            name: "client-cert",
            value: Some("FILE"),
            help: "client certificate (PEM), with --client-key, when the server\n\
                   requires one (--tls-client-ca)",
        },
        Opt {
            name: "client-key",
            value: Some("FILE"),
            help: "its private key (PEM)",
        },
    ],
};

const SERVE_OPTIONS: Group = Group {
    title: "Options",
    options: &[
        Opt {
            name: "listen",
            value: Some("ADDR"),
            help: "address to bind (default 127.0.0.1:8080; port 0 picks one)",
        },
        Opt {
            name: "registration-code",
            value: Some("CODE"),
            help: "the code runners must register with (required)",
        },
        Opt {
            name: "long-poll-secs",
            value: Some("N"),
            help: "how long a poll waits for work before 204 (default 25; 0 = answer at once)",
        },
        Opt {
            name: "claim-lease-secs",
            value: Some("N"),
            help: "an allocation not claimed (POST /state) within N s goes back to the\n\
                   queue, and a late claim gets 409 (default: off, allocations are final)",
        },
        Opt {
            name: "generation",
            value: Some("NAME"),
            help: "the API generation to play: `current` (the default; PROTOCOL.md §4-§8)\n\
                   or `2026-03`, the public release of March 2026 (PROTOCOL.md §9): GET\n\
                   poll signed over the empty body, no long-poll, no /logs and no /status\n\
                   routes (gin's `404 page not found`), trigger data as a base64 string,\n\
                   registration of a known identifier 201 without checking the code,\n\
                   the manifest must be an object of action definitions",
        },
    ],
};

pub const SERVE: Command = Command {
    about: "serve: run the dev server until SIGINT/SIGTERM",
    usage: "[serve] --registration-code CODE [--listen ADDR] [--long-poll-secs N] \
            [--claim-lease-secs N]\n                        [--generation current|2026-03] \
            [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]",
    groups: &[&SERVE_OPTIONS, &TLS],
    notes: "\
Prints one line, `flo-devserver listening on http://HOST:PORT` (https:// with TLS), on stdout
once bound. Logs go to stderr (RUST_LOG, default info); failed TLS handshakes are logged with
the reason. The admin API is under /admin.
",
};

const ENQUEUE_OPTIONS: Group = Group {
    title: "Options",
    options: &[
        Opt {
            name: "flow",
            value: Some("FILE"),
            help: "the flow definition, a JSON file (required)",
        },
        Opt {
            name: "trigger-data",
            value: Some("JSON|@FILE"),
            help: "trigger data, inline JSON or @file",
        },
        Opt {
            name: "entry",
            value: Some("NODE"),
            help: "entry node id",
        },
        Opt {
            name: "environment",
            value: Some("ID"),
            help: "environment id",
        },
    ],
};

pub const ENQUEUE: Command = Command {
    about: "enqueue: queue an execution and print its id",
    usage: "enqueue [--server URL] --flow FILE [--trigger-data JSON|@FILE] [--entry NODE] \
            [--environment ID]",
    groups: &[&ENQUEUE_OPTIONS, &ADMIN],
    notes: "",
};

pub const LIST: Command = Command {
    about: "list: list executions in enqueue order",
    usage: "list    [--server URL] [--json]",
    groups: &[
        &Group {
            title: "Options",
            options: &[Opt {
                name: "json",
                value: None,
                help: "one JSON object per line instead of a table",
            }],
        },
        &ADMIN,
    ],
    notes: "",
};

pub const SHOW: Command = Command {
    about: "show ID: print an execution (status, logs, results) as JSON",
    usage: "show    [--server URL] ID [--wait SECS]",
    groups: &[
        &Group {
            title: "Options",
            options: &[Opt {
                name: "wait",
                value: Some("SECS"),
                help: "poll until the execution is completed; exit 1 if it is not\n\
                       within SECS",
            }],
        },
        &ADMIN,
    ],
    notes: "",
};

pub const CANCEL: Command = Command {
    about: "cancel ID: ask the runner to stop an execution (completion_status `cancel`)",
    usage: "cancel  [--server URL] ID",
    groups: &[&ADMIN],
    notes: "",
};

/// Every subcommand, in the main help's order.
pub const ALL: [&Command; 5] = [&SERVE, &ENQUEUE, &LIST, &SHOW, &CANCEL];

/// `flo-devserver --help`.
pub fn main_help() -> String {
    let mut out = String::from(
        "flo-devserver: the Flomation dev control plane (the API side of the runner protocol)\n\
         \nUsage:\n",
    );
    for command in ALL {
        out.push_str("  flo-devserver ");
        out.push_str(command.usage);
        out.push('\n');
    }
    out.push('\n');
    ADMIN.render(Group::width(&[&ADMIN]), &mut out);
    out.push_str(
        "\nRun `flo-devserver SUBCOMMAND --help` for details. --version prints the version.\n",
    );
    out
}
