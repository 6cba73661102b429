//! HTTPS for the dev server: a small TLS terminator in front of the plain
//! `tiny_http` server (which speaks neither rustls 0.23 nor client
//! certificates).
//!
//! With `--tls-cert`/`--tls-key`, [`super::server`] binds `tiny_http` on
//! `127.0.0.1:0` and the public address here. Each accepted connection gets a
//! thread (at most [`MAX_CONNECTIONS`] at once) that does the TLS handshake
//! (bounded by [`HANDSHAKE_TIMEOUT`]; with `--tls-client-ca` a verified client
//! certificate is required), opens a TCP connection to the internal server
//! and relays bytes both ways until either side closes: a second thread
//! takes the client → server direction, both blocked in `read` on their own
//! socket, sharing the rustls connection behind a mutex. A connection idle
//! for [`IDLE_LIMIT`] is closed (far above the longest long-poll).
//!
//! The internal server only answers connections a relay opened ([`Relays`]),
//! so the client-certificate check cannot be sidestepped through its port,
//! and requests are logged with the real client address.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection};

use super::server::InFlight;

mod config;

pub use config::{client_config, server_config, TlsError, TlsFiles};

/// TLS connections served at once; more are closed at once (logged).
pub const MAX_CONNECTIONS: usize = 256;
/// A client must finish the handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A relay with no bytes either way for this long is closed. Long-polls are
/// idle for up to `--long-poll-secs` (25 s by default), far below this.
pub const IDLE_LIMIT: Duration = Duration::from_secs(600);
/// A peer that accepts no bytes for this long is given up on.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a blocked relay direction wakes to check [`IDLE_LIMIT`].
const IDLE_CHECK: Duration = Duration::from_secs(30);
const BUFFER_BYTES: usize = 16 * 1024;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The open relays: the address of a relay's connection to the internal
/// server (as the internal server sees it) → the TLS client's address.
#[derive(Debug, Default)]
pub struct Relays {
    open: Mutex<HashMap<SocketAddr, SocketAddr>>,
}

impl Relays {
    /// The TLS client behind a connection to the internal server, or `None`
    /// when the connection did not come from a relay.
    pub fn client_of(&self, internal_peer: SocketAddr) -> Option<SocketAddr> {
        self.lock().get(&internal_peer).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, SocketAddr>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Registers one relay for as long as it lives.
struct RelayEntry<'a> {
    relays: &'a Relays,
    local: SocketAddr,
}

impl<'a> RelayEntry<'a> {
    fn new(relays: &'a Relays, local: SocketAddr, client: SocketAddr) -> Self {
        relays.lock().insert(local, client);
        Self { relays, local }
    }
}

impl Drop for RelayEntry<'_> {
    fn drop(&mut self) {
        self.relays.lock().remove(&self.local);
    }
}

/// Starts the accept loop on `listener` (in its own thread, for the life of
/// the process): TLS clients are relayed to the plain server at `internal`.
pub fn spawn_front(
    listener: TcpListener,
    internal: SocketAddr,
    config: Arc<ServerConfig>,
    relays: Arc<Relays>,
) -> io::Result<()> {
    thread::Builder::new()
        .name("devserver-tls-accept".into())
        .spawn(move || accept_loop(&listener, internal, &config, &relays))
        .map(drop)
}

fn accept_loop(
    listener: &TcpListener,
    internal: SocketAddr,
    config: &Arc<ServerConfig>,
    relays: &Arc<Relays>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, client) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and the like: do not spin.
                log::warn!("accepting a TLS connection failed: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            log::warn!("{MAX_CONNECTIONS} TLS connections open; closing the one from {client}");
            continue;
        }
        let guard = InFlight::enter(&open);
        let config = Arc::clone(config);
        let relays = Arc::clone(relays);
        let spawned = thread::Builder::new()
            .name("devserver-tls".into())
            .spawn(move || {
                let _guard = guard;
                connection(stream, client, internal, config, &relays);
            });
        if let Err(e) = spawned {
            log::error!("cannot start a TLS connection thread: {e}");
        }
    }
}

/// Why a handshake did not complete.
#[derive(Debug)]
enum HandshakeError {
    /// The client spoke something other than TLS (an `http://` URL).
    NotTls,
    Closed,
    TimedOut,
    Tls(rustls::Error),
    Io(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotTls => write!(f, "the client did not speak TLS (an http:// URL?)"),
            Self::Closed => write!(
                f,
                "the client closed the connection during the handshake \
                 (does it trust the CA that signed --tls-cert?)"
            ),
            Self::TimedOut => write!(
                f,
                "no complete handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ),
            Self::Tls(e) => f.write_str(&describe(e)),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A handshake failure in an operator's words.
fn describe(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::NoCertificatesPresented => {
            "the client presented no certificate (--tls-client-ca requires one)".to_string()
        }
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the client's certificate is not signed by the --tls-client-ca CA".to_string()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the client's certificate has expired".to_string()
        }
        E::InvalidCertificate(other) => format!("the client's certificate is not valid: {other}"),
        E::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnknownCA
            | A::CertificateUnknown
            | A::UnsupportedCertificate
            | A::CertificateExpired),
        ) => format!(
            "the client rejected the server certificate (alert {alert:?}): it does not trust \
             the CA that signed --tls-cert, or the certificate does not name the host it dialled"
        ),
        E::AlertReceived(alert) => format!("the client sent alert {alert:?}"),
        E::NoApplicationProtocol => {
            "the client offered no ALPN protocol this server speaks (http/1.1)".to_string()
        }
        other => other.to_string(),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// One accepted connection: handshake, then relay to the internal server.
fn connection(
    tcp: TcpStream,
    client: SocketAddr,
    internal: SocketAddr,
    config: Arc<ServerConfig>,
    relays: &Relays,
) {
    let _ = tcp.set_nodelay(true);
    if let Err(e) = tcp.set_write_timeout(Some(WRITE_TIMEOUT)) {
        log::warn!("TLS connection from {client}: cannot set a write timeout: {e}");
        return;
    }
    let Some(mut conn) = accept_tls(&tcp, client, config) else {
        return;
    };
    let Some(backend) = open_backend(&mut conn, &tcp, client, internal) else {
        return;
    };
    let local = match backend.local_addr() {
        Ok(a) => a,
        Err(e) => {
            log::error!("TLS connection from {client}: {e}");
            return;
        }
    };
    let _entry = RelayEntry::new(relays, local, client);
    match relay(conn, &tcp, &backend) {
        Ok(()) => log::debug!("TLS connection from {client} closed"),
        Err(e) => log::info!("TLS connection from {client} ended: {e}"),
    }
    let _ = backend.shutdown(Shutdown::Both);
    let _ = tcp.shutdown(Shutdown::Both);
}

/// The handshake with `client`; `None` when it failed (logged, and a plain
/// HTTP client answered 400).
fn accept_tls(
    tcp: &TcpStream,
    client: SocketAddr,
    config: Arc<ServerConfig>,
) -> Option<ServerConnection> {
    let conn = match handshake(tcp, config) {
        Ok(conn) => conn,
        Err(HandshakeError::NotTls) => {
            log::warn!(
                "TLS handshake with {client} failed: {}; answered 400",
                HandshakeError::NotTls
            );
            answer_plain_http(tcp);
            return None;
        }
        Err(HandshakeError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => {
            log::info!("TLS handshake with {client} failed: the client reset the connection");
            return None;
        }
        Err(e) => {
            log::warn!("TLS handshake with {client} failed: {e}");
            return None;
        }
    };
    log::debug!(
        "TLS connection from {client}: {:?}, {:?}{}",
        conn.protocol_version(),
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        if conn.peer_certificates().is_some() {
            ", client certificate verified"
        } else {
            ""
        }
    );
    Some(conn)
}

/// A connection to the internal server for `client`'s requests; `None`
/// when there is none (logged, and the client sent a close_notify).
fn open_backend(
    conn: &mut ServerConnection,
    tcp: &TcpStream,
    client: SocketAddr,
    internal: SocketAddr,
) -> Option<TcpStream> {
    match TcpStream::connect(internal) {
        Ok(b) => Some(b),
        Err(e) => {
            log::error!(
                "TLS connection from {client}: cannot reach the internal server {internal}: {e}"
            );
            conn.send_close_notify();
            let _ = flush_tls(conn, tcp);
            None
        }
    }
}

/// Writes everything rustls has queued for the client.
fn flush_tls(conn: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    let mut out = tcp;
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(())
}

fn handshake(
    tcp: &TcpStream,
    config: Arc<ServerConfig>,
) -> Result<ServerConnection, HandshakeError> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    // A plain HTTP request gets a readable answer rather than a TLS alert.
    let mut first = [0u8; 1];
    loop {
        let wait = remaining();
        if wait.is_zero() {
            return Err(HandshakeError::TimedOut);
        }
        tcp.set_read_timeout(Some(wait))
            .map_err(HandshakeError::Io)?;
        match tcp.peek(&mut first) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) if first[0] != TLS_HANDSHAKE_RECORD => return Err(HandshakeError::NotTls),
            Ok(_) => break,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    let mut conn = ServerConnection::new(config).map_err(HandshakeError::Tls)?;
    let mut input = tcp;
    while conn.is_handshaking() {
        flush_tls(&mut conn, tcp).map_err(HandshakeError::Io)?;
        let wait = remaining();
        if wait.is_zero() {
            return Err(HandshakeError::TimedOut);
        }
        tcp.set_read_timeout(Some(wait))
            .map_err(HandshakeError::Io)?;
        match conn.read_tls(&mut input) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    // Send the alert that says why, then give up.
                    let _ = flush_tls(&mut conn, tcp);
                    return Err(HandshakeError::Tls(e));
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
    // The last handshake messages (and TLS 1.3 session tickets).
    flush_tls(&mut conn, tcp).map_err(HandshakeError::Io)?;
    Ok(conn)
}

/// Answers a client that spoke plain HTTP to the TLS port with a 400 that
/// says so, then closes.
fn answer_plain_http(tcp: &TcpStream) {
    // Read what the client sent first: closing with unread input would
    // reset the connection and lose the answer.
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 8192];
    let mut input = tcp;
    let mut seen = Vec::new();
    while seen.len() < 64 * 1024 && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let body = r#"{"error":"this server speaks HTTPS; use an https:// URL"}"#;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut output = tcp;
    let _ = output.write_all(answer.as_bytes());
    let _ = output.flush();
    let _ = tcp.shutdown(Shutdown::Write);
}

/// Encrypts `data` for the client and sends it (rustls may take it in parts
/// when its buffer is full).
fn send(conn: &mut ServerConnection, tcp: &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let n = conn.writer().write(&data[done..])?;
        done += n;
        if n == 0 && !conn.wants_write() {
            return Err(io::Error::new(
                ErrorKind::WriteZero,
                "the TLS connection accepts no more data",
            ));
        }
        flush_tls(conn, tcp)?;
    }
    Ok(())
}

/// When either direction of a relay last moved bytes.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last.elapsed()
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        ErrorKind::TimedOut,
        format!("idle for {} s; closed", IDLE_LIMIT.as_secs()),
    )
}

type Shared = Mutex<ServerConnection>;

fn lock(conn: &Shared) -> std::sync::MutexGuard<'_, ServerConnection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Relays bytes between the TLS client and the internal server until one
/// side closes, an error, or [`IDLE_LIMIT`] without traffic either way.
///
/// One thread per direction, each blocked in `read` on its own socket (so
/// no polling, no added latency); the rustls connection is shared behind a
/// mutex and the encrypted bytes for the client are written while holding
/// it, so records go out in order. Whichever direction ends first shuts the
/// sockets down as needed to end the other.
fn relay(conn: ServerConnection, tcp: &TcpStream, backend: &TcpStream) -> io::Result<()> {
    let _ = backend.set_nodelay(true);
    backend.set_write_timeout(Some(WRITE_TIMEOUT))?;
    tcp.set_read_timeout(Some(IDLE_CHECK))?;
    backend.set_read_timeout(Some(IDLE_CHECK))?;
    let conn: Shared = Mutex::new(conn);
    let activity = Activity::new();
    thread::scope(|scope| {
        let upstream = thread::Builder::new()
            .name("devserver-tls-up".into())
            .spawn_scoped(scope, || {
                let result = client_to_backend(&conn, tcp, backend, &activity);
                match &result {
                    // The client is done sending: the internal server
                    // finishes its answers, then closes, which ends the
                    // other direction.
                    Ok(()) => {
                        let _ = backend.shutdown(Shutdown::Write);
                    }
                    Err(_) => {
                        let _ = backend.shutdown(Shutdown::Both);
                        let _ = tcp.shutdown(Shutdown::Both);
                    }
                }
                result
            });
        let upstream = match upstream {
            Ok(handle) => handle,
            Err(e) => return Err(e),
        };
        let downstream = backend_to_client(&conn, tcp, backend, &activity);
        // Ends the upstream thread if it is still reading.
        let _ = tcp.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
        let upstream = upstream
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the relay thread panicked")));
        // The downstream error is the cause when there is one; an upstream
        // error is its own (a bad record, a reset).
        downstream.and(upstream)
    })
}

/// TLS client → internal server, until the client closes (`Ok`).
fn client_to_backend(
    conn: &Shared,
    tcp: &TcpStream,
    backend: &TcpStream,
    activity: &Activity,
) -> io::Result<()> {
    let mut raw = vec![0u8; BUFFER_BYTES];
    let mut plain = vec![0u8; BUFFER_BYTES];
    let mut from_client = tcp;
    let mut to_backend = backend;
    // Nothing read yet on the first round; but the handshake may already
    // have received the first request with the client's last handshake
    // message (TLS 1.3), so it is drained before waiting on the socket.
    let mut received: Option<usize> = None;
    loop {
        let mut out = Vec::new();
        let input = received.map(|n| &raw[..n]);
        let closed = decrypt(conn, tcp, input, &mut plain, &mut out)?;
        to_backend.write_all(&out)?;
        if closed || received == Some(0) {
            return Ok(());
        }
        received = loop {
            match from_client.read(&mut raw) {
                Ok(n) => break Some(n),
                Err(e) if is_timeout(&e) => {
                    if activity.idle() >= IDLE_LIMIT {
                        return Err(idle_error());
                    }
                }
                Err(e) => return Err(e),
            }
        };
        activity.touch();
    }
}

/// Feeds `input` read from the client (`None`: nothing read yet) to rustls
/// and moves the plaintext into `out`, then sends what rustls owes the
/// client; true when the client has closed. The connection stays locked
/// throughout, so the records rustls sends go out in order.
fn decrypt(
    conn: &Shared,
    tcp: &TcpStream,
    input: Option<&[u8]>,
    plain: &mut [u8],
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let mut closed = false;
    let mut guard = lock(conn);
    if let Some(mut input) = input {
        loop {
            // With an empty input this tells rustls the stream ended.
            let fed = guard.read_tls(&mut input)?;
            if let Err(e) = guard.process_new_packets() {
                // Send the alert that says why, then give up.
                let _ = flush_tls(&mut guard, tcp);
                return Err(io::Error::new(ErrorKind::InvalidData, describe(&e)));
            }
            closed |= drain(&mut guard, plain, out)?;
            if fed == 0 || input.is_empty() || closed {
                break;
            }
        }
    } else {
        closed |= drain(&mut guard, plain, out)?;
    }
    // Answers rustls owes the client (key updates, alerts).
    flush_tls(&mut guard, tcp)?;
    Ok(closed)
}

/// Moves the plaintext rustls holds into `out`; true when the client has
/// closed (close_notify, or the end of the stream without one).
fn drain(conn: &mut ServerConnection, buf: &mut [u8], out: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        match conn.reader().read(buf) {
            Ok(0) => return Ok(true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// Internal server → TLS client, until the internal server closes (`Ok`).
fn backend_to_client(
    conn: &Shared,
    tcp: &TcpStream,
    backend: &TcpStream,
    activity: &Activity,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUFFER_BYTES];
    let mut from_backend = backend;
    let close = |conn: &Shared| {
        let mut guard = lock(conn);
        guard.send_close_notify();
        let _ = flush_tls(&mut guard, tcp);
    };
    loop {
        match from_backend.read(&mut buf) {
            Ok(0) => {
                close(conn);
                return Ok(());
            }
            Ok(n) => {
                activity.touch();
                send(&mut lock(conn), tcp, &buf[..n])?;
            }
            Err(e) if is_timeout(&e) => {
                if activity.idle() >= IDLE_LIMIT {
                    close(conn);
                    return Err(idle_error());
                }
            }
            Err(e) => {
                close(conn);
                return Err(e);
            }
        }
    }
}
