//! Thrift plumbing: a server loop with a frame-size limit, a connection limit and TCP_NODELAY,
//! and pooled clients.

use std::io::{self, Read};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use thrift::transport::{TFramedReadTransport, TFramedWriteTransport};

/// Framed reads that refuse a frame longer than `max` (the connection is then closed), instead of
/// allocating whatever length a peer declares.
pub struct BoundedFramedRead<R: Read> {
    inner: R,
    max: usize,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> BoundedFramedRead<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: Read> Read for BoundedFramedRead<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            let mut len = [0u8; 4];
            self.inner.read_exact(&mut len)?;
            let n = i32::from_be_bytes(len);
            if n < 0 || n as usize > self.max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("frame of {n} bytes refused (limit {})", self.max),
                ));
            }
            self.buf.resize(n as usize, 0);
            self.inner.read_exact(&mut self.buf)?;
            self.pos = 0;
        }
        let k = out.len().min(self.buf.len() - self.pos);
        out[..k].copy_from_slice(&self.buf[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_connections: usize,
}

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
        open.fetch_add(1, Ordering::SeqCst);
        let (p, open) = (processor.clone(), open.clone());
        std::thread::spawn(move || {
            let _ = handle_connection(stream, &*p, limits);
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn handle_connection<P: TProcessor>(stream: TcpStream, p: &P, limits: Limits) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let read = BoundedFramedRead::new(stream.try_clone()?, limits.max_frame_bytes);
    let mut i = TBinaryInputProtocol::new(read, true);
    let mut o = TBinaryOutputProtocol::new(TFramedWriteTransport::new(stream), true);
    while p.process(&mut i, &mut o).is_ok() {}
    Ok(())
}

pub type In = TBinaryInputProtocol<TFramedReadTransport<TcpStream>>;
pub type Out = TBinaryOutputProtocol<TFramedWriteTransport<TcpStream>>;

/// A connected client's protocol pair (TCP_NODELAY, optional read timeout).
pub fn connect(addr: &str, timeout: Option<Duration>) -> thrift::Result<(In, Out)> {
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}")))?;
    let s = TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
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
    make: fn(In, Out) -> C,
    idle: Mutex<Vec<C>>,
}

impl<C> Pool<C> {
    pub fn new(addr: &str, timeout: Option<Duration>, make: fn(In, Out) -> C) -> Self {
        Self {
            addr: addr.to_string(),
            timeout,
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
                let (i, o) = connect(&self.addr, self.timeout)?;
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
