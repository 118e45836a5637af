//! Thrift plumbing: a server loop with a frame-size limit, bounded decoding, a connection limit,
//! an optional shared token on internal services and TCP_NODELAY, and pooled clients.

use crate::wire::BoundedBinaryInput;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use thrift::transport::{TFramedReadTransport, TFramedWriteTransport};

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    /// Internal services: every connection must first send this token (see `send_token`).
    pub token: Option<Token>,
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

/// Serves `processor` on `listener` forever: one thread per connection, at most
/// `max_connections` at once (more are closed on accept).
pub fn serve<P: TProcessor + Send + Sync + 'static>(listener: TcpListener, processor: Arc<P>, limits: Limits) {
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.load(Ordering::SeqCst) >= limits.max_connections {
            drop(stream);
            continue;
        }
        let slot = Slot::take(&open);
        let (p, limits) = (processor.clone(), limits.clone());
        std::thread::spawn(move || {
            let _slot = slot;
            // A panic while serving one connection (a bug) closes that connection only.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle_connection(stream, &*p, &limits)));
        });
    }
}

/// One counted connection; the count drops with it, whatever way its thread ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle_connection<P: TProcessor>(mut stream: TcpStream, p: &P, limits: &Limits) -> io::Result<()> {
    stream.set_nodelay(true)?;
    if let Some(token) = &limits.token {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        if !check_token(&mut stream, token)? {
            return Ok(());
        }
        stream.set_read_timeout(None)?;
    }
    let mut i = BoundedBinaryInput::new(stream.try_clone()?, limits.max_frame_bytes);
    let mut o = TBinaryOutputProtocol::new(TFramedWriteTransport::new(stream), true);
    while p.process(&mut i, &mut o).is_ok() {}
    Ok(())
}

/// Reads the client's token frame and compares it in constant time.
fn check_token(stream: &mut TcpStream, token: &str) -> io::Result<bool> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_TOKEN_BYTES {
        return Ok(false);
    }
    let mut got = vec![0u8; n];
    stream.read_exact(&mut got)?;
    let want = token.as_bytes();
    let diff = got.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b));
    Ok(got.len() == want.len() && diff == 0)
}

/// The first frame on a connection to an internal service that requires a token.
fn send_token(stream: &mut TcpStream, token: &str) -> io::Result<()> {
    let mut frame = (token.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(token.as_bytes());
    stream.write_all(&frame)
}

pub type In = TBinaryInputProtocol<TFramedReadTransport<TcpStream>>;
pub type Out = TBinaryOutputProtocol<TFramedWriteTransport<TcpStream>>;

/// A connected client's protocol pair (TCP_NODELAY, optional read timeout).
pub fn connect(addr: &str, timeout: Option<Duration>) -> thrift::Result<(In, Out)> {
    connect_with(addr, timeout, None)
}

/// As `connect`, sending `token` first when the peer is an internal service that requires one.
pub fn connect_with(addr: &str, timeout: Option<Duration>, token: Option<&str>) -> thrift::Result<(In, Out)> {
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}")))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    if let Some(t) = token {
        send_token(&mut s, t)?;
    }
    s.set_read_timeout(timeout)?;
    let r = s.try_clone()?;
    Ok((
        TBinaryInputProtocol::new(TFramedReadTransport::new(r), true),
        TBinaryOutputProtocol::new(TFramedWriteTransport::new(s), true),
    ))
}

/// A pool of clients of one peer: a call takes an idle client (or connects), and returns it only
/// if the call did not fail at the transport level.
pub struct Pool<C> {
    addr: String,
    timeout: Option<Duration>,
    token: Option<Token>,
    make: fn(In, Out) -> C,
    idle: Mutex<Vec<C>>,
}

impl<C> Pool<C> {
    pub fn new(addr: &str, timeout: Option<Duration>, token: Option<Token>, make: fn(In, Out) -> C) -> Self {
        Self {
            addr: addr.to_string(),
            timeout,
            token,
            make,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn call<T>(&self, f: impl FnOnce(&mut C) -> thrift::Result<T>) -> thrift::Result<T> {
        let client = self.idle.lock().expect("pool lock").pop();
        let mut client = match client {
            Some(c) => c,
            None => {
                let (i, o) = connect_with(&self.addr, self.timeout, self.token.as_deref())?;
                (self.make)(i, o)
            }
        };
        let r = f(&mut client);
        // Transport errors leave the connection in an unknown state: drop it. Exceptions the
        // server threw (user errors) leave it fine.
        if !matches!(r, Err(thrift::Error::Transport(_)) | Err(thrift::Error::Protocol(_))) {
            self.idle.lock().expect("pool lock").push(client);
        }
        r
    }

    /// Drops idle connections (after the peer restarted, for example).
    pub fn reset(&self) {
        self.idle.lock().expect("pool lock").clear();
    }
}

/// A user exception (one of the IDL's) as a thrift error.
pub fn user_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> thrift::Error {
    thrift::Error::User(Box::new(e))
}
