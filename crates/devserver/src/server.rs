//! The HTTP front: a `tiny_http` accept loop handing each request to its own
//! thread (long-polls block), bounded, until SIGINT/SIGTERM. With TLS
//! options, `tiny_http` listens on an internal loopback port and the TLS
//! terminator in [`super::tls`] serves the public address.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Header, Request, Response, Server, StatusCode};

use super::app::{App, Generation};
use super::http::{error, Incoming, Reply, MAX_BODY_BYTES};
use super::tls::{self, Relays, TlsError, TlsFiles};
use flo_protocol::protocol::SIGNATURE_HEADER;

/// Requests handled at once; beyond this the server answers 503 at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// What a "dropped" request gets instead of an HTTP answer. `tiny_http`
/// offers no way to close one connection from a handler, so the response
/// stream gets a line that is not an HTTP status line: the client fails with
/// a transport error (ureq: "bad status"), just as if the connection had
/// been cut, and discards the connection.
const DROP_BYTES: &[u8] = b"FLO-DEVSERVER-DROPPED-THIS-REQUEST\r\n\r\n";

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: String,
    pub registration_code: String,
    pub long_poll: Duration,
    /// Allocations not claimed within this go back to the queue (off if None).
    pub claim_lease: Option<Duration>,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// The API generation to play.
    pub generation: Generation,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot install the SIGINT/SIGTERM handler: {0}")]
    Signals(#[from] ctrlc::Error),
    #[error("cannot write the listening line to stdout: {0}")]
    Stdout(io::Error),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("cannot start the TLS front: {0}")]
    TlsFront(io::Error),
}

/// The bound listener(s): `tiny_http`, and with TLS the public TLS front.
struct Bound {
    server: Server,
    /// The address clients use.
    addr: String,
    scheme: &'static str,
    /// With TLS: the relays the internal server accepts requests from.
    relays: Option<Arc<Relays>>,
}

fn bind(options: &ServeOptions) -> Result<Bound, ServeError> {
    let listen_error = |reason: String| ServeError::Listen {
        addr: options.listen.clone(),
        reason,
    };
    let Some(files) = &options.tls else {
        let server = Server::http(&options.listen).map_err(|e| listen_error(e.to_string()))?;
        let addr = server
            .server_addr()
            .to_ip()
            .map(|a| a.to_string())
            .unwrap_or_else(|| options.listen.clone());
        return Ok(Bound {
            server,
            addr,
            scheme: "http",
            relays: None,
        });
    };
    // The files first: a bad one is the likelier mistake, and it is named.
    let config = tls::server_config(files)?;
    let public = TcpListener::bind(&options.listen).map_err(|e| listen_error(e.to_string()))?;
    let addr = public
        .local_addr()
        .map_err(|e| listen_error(e.to_string()))?;
    let server = Server::http("127.0.0.1:0").map_err(|e| ServeError::Listen {
        addr: "127.0.0.1:0 (the internal plain HTTP server behind TLS)".into(),
        reason: e.to_string(),
    })?;
    let internal: SocketAddr = server.server_addr().to_ip().ok_or_else(|| {
        ServeError::TlsFront(io::Error::other("the internal server has no IP address"))
    })?;
    let relays = Arc::new(Relays::default());
    tls::spawn_front(public, internal, config, Arc::clone(&relays))
        .map_err(ServeError::TlsFront)?;
    match &files.client_ca {
        Some(ca) => log::info!(
            "TLS with {}; client certificates required, signed by a CA in {}",
            files.cert.display(),
            ca.display()
        ),
        None => log::info!(
            "TLS with {}; no client certificates asked for",
            files.cert.display()
        ),
    }
    log::debug!("internal plain HTTP server on {internal}");
    Ok(Bound {
        server,
        addr: addr.to_string(),
        scheme: "https",
        relays: Some(relays),
    })
}

/// Runs the server until SIGINT or SIGTERM.
pub fn serve(options: &ServeOptions) -> Result<(), ServeError> {
    let Bound {
        server,
        addr,
        scheme,
        relays,
    } = bind(options)?;
    let app = Arc::new(
        App::new(options.registration_code.clone(), options.long_poll)
            .with_generation(options.generation),
    );
    app.lock().claim_lease = options.claim_lease;
    {
        let app = Arc::clone(&app);
        ctrlc::set_handler(move || app.stop())?;
    }
    announce(options, scheme, &addr)?;
    accept_loop(&server, &app, relays.as_ref());
    log::info!("shutting down");
    Ok(())
}

/// The listening line on stdout, then what is served in the log.
fn announce(options: &ServeOptions, scheme: &str, addr: &str) -> Result<(), ServeError> {
    // Tests read this line to learn the port; it must be the only stdout line.
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "flo-devserver listening on {scheme}://{addr}").map_err(ServeError::Stdout)?;
    stdout.flush().map_err(ServeError::Stdout)?;
    drop(stdout);
    match options.generation {
        Generation::Current => log::info!(
            "API generation current; long-poll {} s; admin API at {scheme}://{addr}/admin",
            options.long_poll.as_secs()
        ),
        Generation::March2026 => log::info!(
            "API generation 2026-03 (GET poll, no /logs, no /status, no long-poll); admin API at {scheme}://{addr}/admin"
        ),
    }
    Ok(())
}

/// Hands each request to its own thread, at most [`MAX_IN_FLIGHT`] at
/// once, until the app is stopping.
fn accept_loop(server: &Server, app: &Arc<App>, relays: Option<&Arc<Relays>>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    while !app.is_stopping() {
        // A timeout rather than a blocking recv, so a signal is noticed.
        let request = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("accepting a connection failed: {e}");
                continue;
            }
        };
        if in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
            log::warn!(
                "{MAX_IN_FLIGHT} requests in flight; refusing {} {}",
                request.method(),
                request.url()
            );
            let _ = write_reply(request, error(503, "too many requests in flight"));
            continue;
        }
        spawn_handler(InFlight::enter(&in_flight), app, request, relays);
    }
}

/// Handles `request` in a thread of its own, which holds `guard`.
fn spawn_handler(guard: InFlight, app: &Arc<App>, request: Request, relays: Option<&Arc<Relays>>) {
    let app = Arc::clone(app);
    let relays = relays.cloned();
    let spawned = thread::Builder::new()
        .name("devserver-request".into())
        .spawn(move || {
            let _guard = guard;
            handle(&app, request, relays.as_deref());
        });
    // On failure the closure is dropped: tiny_http answers the request
    // 500 and the guard gives its slot back.
    if let Err(e) = spawned {
        log::error!("cannot start a request thread: {e}");
    }
}

/// Counts a request (or a TLS connection) in flight for as long as it lives.
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(super) fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// With TLS (`relays` given), only connections from the TLS front are
/// served: the internal port must not be a way around client certificates.
fn handle(app: &App, mut request: Request, relays: Option<&Relays>) {
    let started = Instant::now();
    let client = match relays {
        None => Ok(request.remote_addr().map(|a| a.to_string())),
        Some(relays) => request
            .remote_addr()
            .and_then(|a| relays.client_of(*a))
            .map(|c| Some(c.to_string()))
            .ok_or(()),
    };
    let reply = match (client, read_incoming(&mut request)) {
        (Err(()), _) => {
            log::warn!(
                "a request to the internal port from {} did not come through TLS; refused",
                request
                    .remote_addr()
                    .map_or_else(|| "an unknown address".to_string(), |a| a.to_string())
            );
            error(403, "connect through the HTTPS address")
        }
        (Ok(client), Ok(mut incoming)) => {
            incoming.remote = client;
            super::dispatch(app, &incoming)
        }
        (Ok(_), Err(why)) => error(400, why),
    };
    let status = reply
        .status()
        .map_or_else(|| "dropped".to_string(), |s| s.to_string());
    log::info!(
        "{} {} -> {status} ({} ms)",
        request.method(),
        request.url(),
        started.elapsed().as_millis()
    );
    if let Err(e) = write_reply(request, reply) {
        log::debug!("could not write the answer: {e}");
    }
}

fn read_incoming(request: &mut Request) -> Result<Incoming, String> {
    let signature = request
        .headers()
        .iter()
        .find(|h| h.field.equiv(SIGNATURE_HEADER))
        .map(|h| h.value.as_str().to_string());
    let mut incoming = Incoming::new(
        request.method().as_str(),
        request.url(),
        signature.as_deref(),
        &[],
    );
    if request
        .body_length()
        .is_some_and(|n| n as u64 > MAX_BODY_BYTES)
    {
        incoming.too_large = true;
        return Ok(incoming);
    }
    // Bounded even when the length is not announced (chunked bodies).
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("reading the request body failed: {e}"))?;
    if body.len() as u64 > MAX_BODY_BYTES {
        incoming.too_large = true;
    } else {
        incoming.body = body;
    }
    Ok(incoming)
}

fn json_header() -> Option<Header> {
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).ok()
}

fn with_json<R: Read>(mut response: Response<R>) -> Response<R> {
    if let Some(h) = json_header() {
        response.add_header(h);
    }
    response
}

fn write_reply(request: Request, reply: Reply) -> io::Result<()> {
    match reply {
        Reply::Json(status, value) => request
            .respond(with_json(Response::from_string(value.to_string())).with_status_code(status)),
        Reply::Empty(status) => request.respond(Response::empty(status)),
        Reply::Raw(status, body) => {
            request.respond(with_json(Response::from_string(body)).with_status_code(status))
        }
        Reply::Text(status, body) => {
            let mut response = Response::from_string(body).with_status_code(status);
            if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"text/plain"[..]) {
                response.add_header(h);
            }
            request.respond(response)
        }
        Reply::Huge(status, n) => {
            let len = usize::try_from(n).unwrap_or(usize::MAX);
            // Content-Length rather than chunks, so a client can refuse early.
            let response = Response::new(
                StatusCode(status),
                Vec::new(),
                HugeBody::new(n),
                Some(len),
                None,
            )
            .with_chunked_threshold(usize::MAX);
            request.respond(with_json(response))
        }
        Reply::Drop => {
            let mut writer = request.into_writer();
            writer.write_all(DROP_BYTES)?;
            writer.flush()
        }
    }
}

/// A body of `n` bytes that starts like a pending execution and never
/// becomes valid JSON; made while it is written, never held in memory.
struct HugeBody {
    remaining: u64,
    written: u64,
}

const HUGE_PREFIX: &[u8] = br#"{"flo":{"id":"huge","name":""#;

impl HugeBody {
    fn new(n: u64) -> Self {
        Self {
            remaining: n,
            written: 0,
        }
    }
}

impl Read for HugeBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let pos = self.written + i as u64;
            *b = usize::try_from(pos)
                .ok()
                .and_then(|p| HUGE_PREFIX.get(p).copied())
                .unwrap_or(b'x');
        }
        self.remaining -= n as u64;
        self.written += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_body_has_the_exact_length_and_is_not_json() {
        let mut body = Vec::new();
        HugeBody::new(100_000).read_to_end(&mut body).unwrap();
        assert_eq!(body.len(), 100_000);
        assert!(body.starts_with(HUGE_PREFIX));
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
        let mut short = Vec::new();
        HugeBody::new(3).read_to_end(&mut short).unwrap();
        assert_eq!(short, b"{\"f");
    }
}
