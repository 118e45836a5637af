//! Thrift plumbing. Servers: tokio accepts connections and reads whole frames (with idle and
//! slow-frame timeouts, a connection limit and a per-peer limit), so thousands of open
//! connections cost a task each, not a thread; each complete frame is decoded (bounded, see
//! `wire`) and handled on tokio's blocking pool, where libtorch and the blocking handlers run.
//! Clients: pooled, synchronous, with TCP_NODELAY, an optional shared token and optional TLS.

use crate::wire::BoundedBinaryInput;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use thrift::transport::{TFramedReadTransport, TFramedWriteTransport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    /// Connections one client address may hold open at once.
    pub max_connections_per_peer: usize,
    /// A connection that starts no request for this long is closed.
    pub idle_timeout: Duration,
    /// A request (or the token) must arrive whole within this long once it has started.
    pub frame_timeout: Duration,
    /// Internal services: every connection must first send this token (see `send_token`).
    pub token: Option<Token>,
    /// TLS: every connection starts with a handshake under this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// How a client proves itself to a peer and checks the peer: a shared token, TLS, both or none.
#[derive(Clone, Default)]
pub struct Credentials {
    pub token: Option<Token>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A shared secret for internal services, from `auth_token_file`.
pub type Token = Arc<str>;

const MAX_TOKEN_BYTES: usize = 1024;

/// Binds `addr` (port 0 picks a free port) and returns the listener and its actual address.
pub fn bind(addr: &str) -> anyhow::Result<(TcpListener, String)> {
    let l = TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = l.local_addr()?.to_string();
    Ok((l, local))
}

/// How long a stopping server waits for its requests in progress.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests in progress, and whether the server is stopping (SIGTERM).
#[derive(Default)]
struct Drain {
    busy: AtomicUsize,
    stopping: AtomicBool,
}

/// Counts one request in progress for as long as it lives, whatever way it ends.
struct Busy<'a>(&'a Drain);

impl<'a> Busy<'a> {
    fn new(d: &'a Drain) -> Self {
        d.busy.fetch_add(1, Ordering::AcqRel);
        Self(d)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `processor` on `listener` until SIGTERM: then it stops accepting, lets the requests in
/// progress finish and answer (at most `DRAIN_TIMEOUT`), closes each connection after its current
/// request, and returns, so a rolling update loses no request that was already admitted.
pub fn serve<P: TProcessor + Send + Sync + 'static>(listener: TcpListener, processor: Arc<P>, limits: Limits) {
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gati-net")
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(accept_loop(listener, processor, Arc::new(limits)));
}

async fn accept_loop<P: TProcessor + Send + Sync + 'static>(
    listener: TcpListener,
    processor: Arc<P>,
    limits: Arc<Limits>,
) {
    listener.set_nonblocking(true).expect("nonblocking listener");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let open = Arc::new(AtomicUsize::new(0));
    let peers: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let drain = Arc::new(Drain::default());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = terminated(&mut term) => break,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors, or a connection reset before accept: try again shortly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open, &peers, peer.ip(), &limits) else {
            continue; // dropped: closed at once
        };
        let (p, limits, d) = (processor.clone(), limits.clone(), drain.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if stream.set_nodelay(true).is_err() {
                return;
            }
            match &limits.tls {
                None => {
                    let _ = connection(stream, p, &limits, &d).await;
                }
                Some(tls) => {
                    let accept = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream);
                    match tokio::time::timeout(limits.frame_timeout, accept).await {
                        Ok(Ok(s)) => {
                            let _ = connection(s, p, &limits, &d).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    drain.stopping.store(true, Ordering::Release);
    let started = std::time::Instant::now();
    while drain.busy.load(Ordering::Acquire) > 0 && started.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(
        still_running = drain.busy.load(Ordering::Acquire),
        drained_ms = started.elapsed().as_secs_f64() * 1e3,
        "SIGTERM: stopped accepting"
    );
}

/// Resolves when SIGTERM arrives (never, if its handler could not be installed).
async fn terminated(term: &mut Option<tokio::signal::unix::Signal>) {
    match term {
        Some(t) => {
            t.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// One counted connection; the counts drop with it, whatever way its task ends.
struct Slot {
    open: Arc<AtomicUsize>,
    peers: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Slot {
    fn take(
        open: &Arc<AtomicUsize>,
        peers: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        limits: &Limits,
    ) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limits.max_connections).then_some(n + 1)
        })
        .ok()?;
        let mut p = crate::resources::lock(peers);
        let n = p.entry(ip).or_default();
        if *n >= limits.max_connections_per_peer {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *n += 1;
        Some(Self {
            open: open.clone(),
            peers: peers.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        let mut p = crate::resources::lock(&self.peers);
        if let Some(n) = p.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.ip);
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// Reads exactly `buf.len()` bytes within `limit`.
async fn read_within<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8], limit: Duration) -> io::Result<()> {
    tokio::time::timeout(limit, s.read_exact(buf))
        .await
        .map_err(|_| timed_out())?
        .map(|_| ())
}

/// Reads the next frame (length prefix included), or None when the peer closed or went idle.
async fn next_frame<S: AsyncRead + Unpin>(s: &mut S, limits: &Limits) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    // The first byte may take up to the idle timeout; the rest of the frame, the frame timeout.
    match tokio::time::timeout(limits.idle_timeout, s.read(&mut len[..1])).await {
        Err(_) | Ok(Ok(0)) => return Ok(None),
        Ok(r) => r?,
    };
    read_within(s, &mut len[1..], limits.frame_timeout).await?;
    let n = i32::from_be_bytes(len);
    if n < 0 || n as usize > limits.max_frame_bytes {
        return Ok(None); // refused: the connection closes, as the bounded reader would
    }
    let mut frame = vec![0u8; 4 + n as usize];
    frame[..4].copy_from_slice(&len);
    read_within(s, &mut frame[4..], limits.frame_timeout).await?;
    Ok(Some(frame))
}

async fn connection<P: TProcessor + Send + Sync + 'static, S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    p: Arc<P>,
    limits: &Limits,
    drain: &Drain,
) -> io::Result<()> {
    if let Some(token) = &limits.token {
        if !check_token(&mut s, token, limits.frame_timeout).await? {
            return Ok(());
        }
    }
    while let Some(frame) = next_frame(&mut s, limits).await? {
        let _busy = Busy::new(drain);
        let (p, max) = (p.clone(), limits.max_frame_bytes);
        // A panic in a handler (a bug) ends this connection only.
        let Ok((ok, reply)) = tokio::task::spawn_blocking(move || process_frame(&*p, frame, max)).await else {
            return Ok(());
        };
        if !reply.is_empty() {
            // flush: a TLS stream holds written bytes until flushed.
            let write = async {
                s.write_all(&reply).await?;
                s.flush().await
            };
            tokio::time::timeout(limits.frame_timeout, write)
                .await
                .map_err(|_| timed_out())??;
        }
        if !ok || drain.stopping.load(Ordering::Acquire) {
            return Ok(());
        }
    }
    Ok(())
}

/// A `Write` whose bytes stay readable after the transport that wrote them is gone.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        crate::resources::lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Handles one whole frame; returns whether the connection may go on, and the reply bytes.
fn process_frame<P: TProcessor>(p: &P, frame: Vec<u8>, max: usize) -> (bool, Vec<u8>) {
    let out = Shared::default();
    let mut i = BoundedBinaryInput::new(io::Cursor::new(frame), max);
    let mut o = TBinaryOutputProtocol::new(TFramedWriteTransport::new(out.clone()), true);
    let ok = p.process(&mut i, &mut o).is_ok();
    drop(o);
    let reply = std::mem::take(&mut *crate::resources::lock(&out.0));
    (ok, reply)
}

/// Reads the client's token frame and compares it in constant time.
async fn check_token<S: AsyncRead + Unpin>(s: &mut S, token: &str, limit: Duration) -> io::Result<bool> {
    let mut len = [0u8; 4];
    read_within(s, &mut len, limit).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_TOKEN_BYTES {
        return Ok(false);
    }
    let mut got = vec![0u8; n];
    read_within(s, &mut got, limit).await?;
    Ok(token_matches(&got, token.as_bytes()))
}

/// Compares a presented token with the expected one in time independent of where they differ.
fn token_matches(got: &[u8], want: &[u8]) -> bool {
    let diff = got.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b));
    got.len() == want.len() && diff == 0
}

/// Lets this process hold as many sockets as its hard limit allows (thousands of clients).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local, initialised struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// The first frame on a connection to an internal service that requires a token.
fn send_token(stream: &mut impl Write, token: &str) -> io::Result<()> {
    let mut frame = (token.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(token.as_bytes());
    stream.write_all(&frame)?;
    stream.flush()
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A client's connection, plain or TLS. Clones share the connection: the Thrift transports
/// read and write through separate handles, one request at a time.
pub enum Conn {
    Plain(TcpStream),
    Tls(Arc<Mutex<TlsStream>>),
}

impl Conn {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Conn::Plain(s) => Conn::Plain(s.try_clone()?),
            Conn::Tls(s) => Conn::Tls(s.clone()),
        })
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => crate::resources::lock(s).read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => crate::resources::lock(s).write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => crate::resources::lock(s).flush(),
        }
    }
}

pub type In = TBinaryInputProtocol<TFramedReadTransport<Conn>>;
pub type Out = TBinaryOutputProtocol<TFramedWriteTransport<Conn>>;

/// A connected client's protocol pair (TCP_NODELAY, optional read timeout), plain Thrift.
pub fn connect(addr: &str, timeout: Option<Duration>) -> thrift::Result<(In, Out)> {
    connect_with(addr, timeout, &Credentials::default())
}

/// As `connect`, with TLS and the token first when the peer requires them.
pub fn connect_with(addr: &str, timeout: Option<Duration>, credentials: &Credentials) -> thrift::Result<(In, Out)> {
    let (i, o, _) = open(addr, timeout, credentials)?;
    Ok((i, o))
}

/// A connection's protocol pair and a handle on its socket.
fn open(addr: &str, timeout: Option<Duration>, credentials: &Credentials) -> thrift::Result<(In, Out, TcpStream)> {
    // A name may resolve to several addresses (IPv6 and IPv4 for `localhost`, several records
    // in DNS): the first that accepts.
    let mut last = io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("address {addr} resolves to nothing"),
    );
    let mut s = None;
    for sock in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sock, Duration::from_secs(2)) {
            Ok(c) => {
                s = Some(c);
                break;
            }
            Err(e) => last = e,
        }
    }
    let s = s.ok_or(last)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(timeout)?;
    let handle = s.try_clone()?;
    let mut conn = match &credentials.tls {
        None => Conn::Plain(s),
        Some(config) => {
            let c = rustls::ClientConnection::new(config.clone(), crate::tls::server_name(addr)?)
                .map_err(|e| io::Error::other(format!("TLS to {addr}: {e}")))?;
            let mut stream = TlsStream::new(c, s);
            // The handshake now, so that a refused certificate fails the connect, not a call.
            while stream.conn.is_handshaking() {
                stream
                    .conn
                    .complete_io(&mut stream.sock)
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {addr}: {e}")))?;
            }
            Conn::Tls(Arc::new(Mutex::new(stream)))
        }
    };
    if let Some(t) = &credentials.token {
        send_token(&mut conn, t)?;
    }
    let r = conn.try_clone()?;
    Ok((
        TBinaryInputProtocol::new(TFramedReadTransport::new(r), true),
        TBinaryOutputProtocol::new(TFramedWriteTransport::new(conn), true),
        handle,
    ))
}

/// True when the peer has closed (or reset) an idle connection: nothing is owed on it, so a
/// readable socket means end of file or an error.
fn closed_by_peer(s: &TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = !matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    closed || s.set_nonblocking(false).is_err()
}

/// A pool of clients of one peer: a call takes an idle client (or connects), and returns it only
/// if the call did not fail at the transport level. An idle client whose connection the server
/// closed meanwhile (its idle timeout) is dropped before use, not failed on.
pub struct Pool<C> {
    addr: String,
    timeout: Option<Duration>,
    credentials: Credentials,
    make: fn(In, Out) -> C,
    idle: Mutex<Vec<(C, TcpStream)>>,
}

impl<C> Pool<C> {
    pub fn new(addr: &str, timeout: Option<Duration>, credentials: Credentials, make: fn(In, Out) -> C) -> Self {
        Self {
            addr: addr.to_string(),
            timeout,
            credentials,
            make,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn take(&self) -> thrift::Result<(C, TcpStream)> {
        loop {
            let Some((c, s)) = crate::resources::lock(&self.idle).pop() else {
                break;
            };
            if !closed_by_peer(&s) {
                return Ok((c, s));
            }
        }
        let (i, o, s) = open(&self.addr, self.timeout, &self.credentials)?;
        Ok(((self.make)(i, o), s))
    }

    pub fn call<T>(&self, f: impl FnOnce(&mut C) -> thrift::Result<T>) -> thrift::Result<T> {
        let (mut client, socket) = self.take()?;
        let r = f(&mut client);
        // Transport errors leave the connection in an unknown state: drop it. Exceptions the
        // server threw (user errors) leave it fine.
        if !matches!(r, Err(thrift::Error::Transport(_)) | Err(thrift::Error::Protocol(_))) {
            crate::resources::lock(&self.idle).push((client, socket));
        }
        r
    }

    /// Drops idle connections (after the peer restarted, for example).
    pub fn reset(&self) {
        crate::resources::lock(&self.idle).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself() {
        let want = b"0123456789abcdef";
        assert!(token_matches(want, want));
        assert!(!token_matches(b"0123456789abcdeX", want));
        assert!(!token_matches(b"0123456789abcde", want), "a prefix");
        assert!(!token_matches(b"0123456789abcdef0", want), "an extension");
        assert!(!token_matches(b"", want));
    }

    #[test]
    fn frames_are_read_whole_and_idle_connections_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let limits = Limits {
                max_frame_bytes: 64,
                max_connections: 4,
                max_connections_per_peer: 4,
                idle_timeout: Duration::from_millis(200),
                frame_timeout: Duration::from_millis(200),
                token: None,
                tls: None,
            };
            let client = tokio::spawn(async move {
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                // A frame written in two pieces arrives as one.
                c.write_all(&[0, 0, 0, 3, b'a']).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                c.write_all(b"bc").await.unwrap();
                // Then a frame over the limit.
                c.write_all(&[0, 0, 0, 200]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                c
            });
            let (mut s, _) = l.accept().await.unwrap();
            assert_eq!(
                next_frame(&mut s, &limits).await.unwrap().unwrap(),
                vec![0, 0, 0, 3, b'a', b'b', b'c']
            );
            assert!(
                next_frame(&mut s, &limits).await.unwrap().is_none(),
                "an oversized frame is refused"
            );
            drop(client.await.unwrap());
            // An idle peer: nothing within the idle timeout ends the connection.
            let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            let t = std::time::Instant::now();
            assert!(next_frame(&mut s, &limits).await.unwrap().is_none());
            assert!(t.elapsed() >= Duration::from_millis(200));
        });
    }
}
