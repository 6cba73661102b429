//! `flo-devserver`: the dev control plane. It plays the Flomation API's side
//! of the runner protocol (PROTOCOL.md) with the real semantics, in memory,
//! plus an admin API under `/admin` for tests and people: enqueue work,
//! inspect what the runner sent, queue malformed poll answers, inject faults.
//!
//! The public surface is [`main`], the admin [`client`] and the TLS settings
//! ([`tls`]) that `flo-testkit` drives the server with.
//!
//! Layout: `cli` parses the command line; [`server`] accepts connections
//! and gives each request a thread; [`dispatch`] sends `/admin/...` to
//! [`admin`] and everything else to [`routes`] (the runner routes); both work
//! on [`state`] behind one mutex in [`app`]. [`faults`] decides injected
//! failures, [`auth`] checks signatures, [`client`] is the admin client the
//! subcommands use. [`tls`] puts HTTPS (optionally with required client
//! certificates) in front of [`server`]; its `config` builds the server's and
//! the admin client's TLS settings from the certificate files.

mod admin;
mod app;
mod auth;
mod cli;
pub mod client;
mod faults;
mod http;
mod routes;
mod server;
mod state;
pub mod tls;

use app::App;
use http::{Incoming, Reply};

/// Routes one request to the admin API or the runner routes.
fn dispatch(app: &App, incoming: &Incoming) -> Reply {
    let segments = incoming.segments();
    match segments.first().map(String::as_str) {
        Some("admin") => admin::handle(app, incoming, &segments[1..]),
        _ => routes::handle(app, incoming),
    }
}

/// The whole `flo-devserver` program; returns the exit code. Errors are one
/// line on stderr, never a panic.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flo-devserver: {e}");
            e.exit_code()
        }
    }
}
