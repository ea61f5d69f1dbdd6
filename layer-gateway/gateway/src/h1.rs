//! A lean HTTP/1.1 client for plain-HTTP upstreams, the gateway's hot path.
//!
//! The request's head and body go out in one vectored write on a pooled keep-alive
//! connection, and the answer is read in the calling task: no connection task to hand the
//! request to, no channel, no URL parsed or redirect policy run per request. Upstreams
//! behind TLS, uploads (a streamed body) and setups with an HTTP proxy in the environment
//! use the general client (reqwest) instead.
//!
//! Answers are framed by `Transfer-Encoding: chunked`, `Content-Length` or the end of the
//! connection (RFC 9112 §6.3); a connection goes back to the pool only once its answer was
//! read to the end. A pooled connection the upstream closed meanwhile (servers close idle
//! keep-alive connections, uvicorn after 5 s) is noticed before use or, if it closes as the
//! request goes out, the request is sent once more on a new connection — only when not one
//! byte of an answer came back.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer head read (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may carry.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line.
const MAX_LINE: usize = 4096;
/// Bytes read at a time.
const READ_SIZE: usize = 16 * 1024;

/// The environment variables that send the general client's requests through a proxy; when
/// one is set, plain-HTTP upstreams go through the general client too.
const PROXY_VARS: [&str; 4] = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"];

/// Whether plain-HTTP upstreams may use this client: no proxy is configured for them.
pub fn usable(env: impl Fn(&str) -> Option<String>) -> bool {
    !PROXY_VARS
        .iter()
        .any(|v| env(v).is_some_and(|s| !s.trim().is_empty()))
}

/// Where one plain-HTTP upstream is, with each path's request head prefix built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `host:port`: the pool's key and the `Host` header.
    pub authority: String,
    host: String,
    port: u16,
    /// `POST <path> HTTP/1.1\r\nhost: <authority>\r\n`, per upstream path.
    heads: Vec<(&'static str, Bytes)>,
}

impl Origin {
    /// The origin of `urls` (one per upstream path, same scheme and authority); none unless
    /// they are plain `http://`.
    pub fn of(urls: &[(&'static str, reqwest::Url)]) -> Option<Self> {
        let (_, first) = urls.first()?;
        if first.scheme() != "http" {
            return None;
        }
        let host = first.host_str()?.to_owned();
        let port = first.port_or_known_default()?;
        let authority = match first.host() {
            Some(url::Host::Ipv6(a)) => format!("[{a}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let heads = urls
            .iter()
            .map(|(p, u)| {
                let target = match u.query() {
                    Some(q) => format!("{}?{q}", u.path()),
                    None => u.path().to_owned(),
                };
                let head = format!("POST {target} HTTP/1.1\r\nhost: {authority}\r\n");
                (*p, Bytes::from(head))
            })
            .collect();
        Some(Origin {
            // `host_str` keeps an IPv6 address's brackets; the socket wants it bare.
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            authority,
            port,
            heads,
        })
    }

    fn head(&self, path: &str) -> Option<&Bytes> {
        self.heads.iter().find(|(p, _)| *p == path).map(|(_, h)| h)
    }
}

/// Why a request failed.
#[derive(Debug)]
pub struct Failure {
    /// No connection could be made (nothing was sent).
    pub connect: bool,
    pub timeout: bool,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    fn io(what: &str, e: &io::Error) -> Self {
        Failure {
            connect: false,
            timeout: false,
            message: format!("{what}: {e}"),
        }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Failure {
            connect: false,
            timeout: false,
            message: message.into(),
        }
    }
}

/// Keep-alive connections per origin, the most recently used taken first.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new(256, Duration::from_secs(90))
    }
}

impl Pool {
    /// Keeps up to `max_idle` idle connections per origin, each for up to `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Idle connections kept for `origin`.
    pub fn idle(&self, origin: &Origin) -> usize {
        self.idle
            .lock()
            .map(|m| m.get(&origin.authority).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    fn take(&self, origin: &Origin) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&origin.authority)?;
        while let Some(i) = list.pop() {
            if now.duration_since(i.since) < self.idle_timeout && i.conn.still_open() {
                return Some(i.conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let now = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // The key is copied only the first time an origin's connection comes back.
        if !idle.contains_key(&conn.authority) {
            idle.insert(conn.authority.clone(), Vec::new());
        }
        let Some(list) = idle.get_mut(&conn.authority) else {
            return;
        };
        // The oldest are at the front: drop those past their time, and one if full.
        let stale = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
            .count();
        list.drain(..stale);
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    }

    /// Sends `POST path` with `headers` and `body` to `origin`, and reads the answer's head.
    pub async fn send(
        self: &Arc<Self>,
        origin: &Origin,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        connect_timeout: Duration,
    ) -> Result<Response, Failure> {
        let Some(prefix) = origin.head(path) else {
            return Err(Failure::protocol(format!("no upstream path {path}")));
        };
        let mut head = BytesMut::with_capacity(prefix.len() + 64 * headers.len() + 32);
        head.extend_from_slice(prefix);
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"content-length: ");
        let _ = std::fmt::Write::write_fmt(&mut head, format_args!("{}\r\n\r\n", body.len()));
        loop {
            let (mut conn, reused) = match self.take(origin) {
                Some(c) => (c, true),
                None => (Conn::open(origin, connect_timeout).await?, false),
            };
            let mut out = Buf::chain(&head[..], &body[..]);
            if let Err(e) = conn.io.write_all_buf(&mut out).await {
                if reused {
                    continue;
                }
                return Err(Failure::io("sending the request", &e));
            }
            match conn.read_head().await {
                Ok(head) => return Ok(Response::new(head, conn, self.clone())),
                // Closed before answering: a pooled connection the upstream had let go.
                Err(Read::Closed) if reused && conn.buf.is_empty() => continue,
                Err(Read::Closed) => {
                    return Err(Failure::protocol(
                        "the connection closed before an answer came",
                    ));
                }
                Err(Read::Io(e)) if reused && conn.buf.is_empty() && is_reset(&e) => continue,
                Err(Read::Io(e)) => return Err(Failure::io("reading the answer", &e)),
                Err(Read::Invalid(why)) => {
                    return Err(Failure::protocol(format!("invalid answer: {why}")));
                }
            }
        }
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

enum Read {
    /// The upstream closed the connection.
    Closed,
    Io(io::Error),
    Invalid(String),
}

/// One connection and what was read from it but not yet used.
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    authority: String,
}

/// An answer's status line and headers.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl Conn {
    async fn open(origin: &Origin, timeout: Duration) -> Result<Self, Failure> {
        let connect = TcpStream::connect((origin.host.as_str(), origin.port));
        let io = match tokio::time::timeout(timeout, connect).await {
            Err(_) => {
                return Err(Failure {
                    connect: true,
                    timeout: true,
                    message: format!("connecting to {}: timed out", origin.authority),
                });
            }
            Ok(Err(e)) => {
                return Err(Failure {
                    connect: true,
                    timeout: false,
                    message: format!("connecting to {}: {e}", origin.authority),
                });
            }
            Ok(Ok(io)) => io,
        };
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_SIZE),
            authority: origin.authority.clone(),
        })
    }

    /// Whether an idle connection is still usable: nothing arrived on it (a close, or bytes
    /// no request asked for). Costs no system call while the socket is known not readable.
    fn still_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more; 0 at the end of the connection.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_SIZE);
        }
        self.io.read_buf(&mut self.buf).await
    }

    async fn read_head(&mut self) -> Result<Head, Read> {
        loop {
            if !self.buf.is_empty() {
                match parse_head(&self.buf) {
                    Ok(Some((len, head))) => {
                        self.buf.advance(len);
                        if head.status.is_informational() {
                            continue;
                        }
                        return Ok(head);
                    }
                    Ok(None) if self.buf.len() >= MAX_HEAD => {
                        return Err(Read::Invalid(format!(
                            "the head is larger than {MAX_HEAD} bytes"
                        )));
                    }
                    Ok(None) => {}
                    Err(why) => return Err(Read::Invalid(why)),
                }
            }
            match self.fill().await {
                Ok(0) => return Err(Read::Closed),
                Ok(_) => {}
                Err(e) => return Err(Read::Io(e)),
            }
        }
    }
}

/// Parses an answer head at the start of `buf`: its length and what it says; `None` when
/// incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Head)>, String> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut raw);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("no status")?;
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    let mut chunked = false;
    let mut length: Option<u64> = None;
    let mut close = res.version != Some(1);
    for h in res.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|e| e.to_string())?;
        if name == axum::http::header::TRANSFER_ENCODING {
            // The last coding says how the body ends.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == axum::http::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or("invalid content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length".into());
            }
            length = Some(n);
        } else if name == axum::http::header::CONNECTION {
            let says = |w: &[u8]| {
                h.value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(w))
            };
            if says(b"close") {
                close = true;
            } else if says(b"keep-alive") {
                close = false;
            }
        }
        headers.append(name, value);
    }
    let has_body = !(status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED);
    let framing = if !has_body || status.is_informational() {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunk::Size)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        close = true;
        Framing::Eof
    };
    Ok(Some((
        len,
        Head {
            status,
            headers,
            framing,
            keep_alive: !close,
        },
    )))
}

/// How the body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// At the end of the connection.
    Eof,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of the chunk are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty one.
    Trailers,
}

/// An answer: its head, and its body read chunk by chunk.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl Response {
    fn new(head: Head, conn: Conn, pool: Arc<Pool>) -> Self {
        let mut r = Response {
            status: head.status,
            headers: head.headers,
            framing: head.framing,
            keep_alive: head.keep_alive,
            conn: Some(conn),
            pool,
        };
        if r.framing == Framing::Length(0) {
            r.finish();
        }
        r
    }

    /// The body ended: the connection goes back to the pool if it may.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.pool.put(conn);
        }
    }

    /// The next piece of the body (a slice of what was read, not a copy); `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            match self.framing {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    self.finish();
                    return Ok(None);
                }
                Framing::Length(left) => {
                    let (piece, left) =
                        take(conn, left, "the connection closed before the answer's end").await?;
                    self.framing = Framing::Length(left);
                    if left == 0 {
                        self.finish();
                    }
                    return Ok(Some(piece));
                }
                Framing::Eof => {
                    if conn.buf.is_empty() {
                        match conn.fill().await {
                            Ok(0) => {
                                self.framing = Framing::Done;
                                self.conn = None;
                                return Ok(None);
                            }
                            Ok(_) => {}
                            Err(e) => return Err(Failure::io("reading the answer", &e)),
                        }
                    }
                    return Ok(Some(conn.buf.split().freeze()));
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    let (piece, left) =
                        take(conn, left, "the connection closed inside a chunk").await?;
                    self.framing = Framing::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(piece));
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    while conn.buf.len() < 2 {
                        need(conn, "the connection closed after a chunk").await?;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Err(Failure::protocol("invalid chunked answer: no CRLF"));
                    }
                    conn.buf.advance(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(state @ (Chunk::Size | Chunk::Trailers)) => {
                    let Some(end) = memchr::memmem::find(&conn.buf, b"\r\n") else {
                        if conn.buf.len() > MAX_LINE {
                            return Err(Failure::protocol("invalid chunked answer: line too long"));
                        }
                        need(conn, "the connection closed inside the chunked framing").await?;
                        continue;
                    };
                    let line = conn.buf.split_to(end + 2);
                    let line = &line[..end];
                    if state == Chunk::Trailers {
                        if line.is_empty() {
                            self.finish();
                            return Ok(None);
                        }
                        continue;
                    }
                    let size = chunk_size(line).ok_or_else(|| {
                        Failure::protocol("invalid chunked answer: bad chunk size")
                    })?;
                    self.framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
            }
        }
    }
}

/// Up to `left` bytes of the body as they were read (reading more if none are), and how many
/// are left after them; fails with `what` at the end of the connection.
async fn take(conn: &mut Conn, left: u64, what: &str) -> Result<(Bytes, u64), Failure> {
    if conn.buf.is_empty() {
        need(conn, what).await?;
    }
    let n = (conn.buf.len() as u64).min(left);
    Ok((conn.buf.split_to(n as usize).freeze(), left - n))
}

/// Reads more, or fails with `what` at the end of the connection.
async fn need(conn: &mut Conn, what: &str) -> Result<(), Failure> {
    match conn.fill().await {
        Ok(0) => Err(Failure::protocol(what)),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::io("reading the answer", &e)),
    }
}

/// A chunk-size line's size (hex digits, then optional extensions).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .map(<[u8]>::trim_ascii)
        .filter(|d| !d.is_empty() && d.len() <= 15)?;
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn origin(port: u16) -> Origin {
        let url =
            reqwest::Url::parse(&format!("http://127.0.0.1:{port}/v1/chat/completions")).unwrap();
        Origin::of(&[("/chat/completions", url)]).unwrap()
    }

    /// A server that answers each request it reads with the next of `answers` (raw bytes, in
    /// the given pieces), closing after the ones marked; counts its connections.
    async fn server(
        answers: Vec<(Vec<&'static [u8]>, bool)>,
    ) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            let mut answers = answers.into_iter();
            'accept: while let Ok((mut s, _)) = l.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                loop {
                    // Read one request (head and a body of its content-length).
                    let mut req = Vec::new();
                    let mut b = [0u8; 4096];
                    let body_end = loop {
                        let Ok(n) = s.read(&mut b).await else {
                            continue 'accept;
                        };
                        if n == 0 {
                            continue 'accept;
                        }
                        req.extend_from_slice(&b[..n]);
                        if let Some(h) = memchr::memmem::find(&req, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&req[..h]).to_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                            if req.len() >= h + 4 + len {
                                break h + 4 + len;
                            }
                        }
                    };
                    assert_eq!(req.len(), body_end);
                    let Some((pieces, close)) = answers.next() else {
                        return;
                    };
                    for p in pieces {
                        s.write_all(p).await.unwrap();
                        s.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if close {
                        drop(s);
                        continue 'accept;
                    }
                }
            }
        });
        (port, conns)
    }

    async fn body(r: &mut Response) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = r.chunk().await.unwrap() {
            out.extend_from_slice(&c);
        }
        out
    }

    async fn post(pool: &Arc<Pool>, o: &Origin) -> Result<Response, Failure> {
        pool.send(
            o,
            "/chat/completions",
            &[(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Bytes::from_static(b"{\"model\":\"m\"}"),
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn content_length_answers_reuse_one_connection() {
        let answer: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        let (port, conns) = server(vec![(vec![answer], false); 3]).await;
        let pool = Arc::new(Pool::default());
        let o = origin(port);
        for _ in 0..3 {
            let mut r = post(&pool, &o).await.unwrap();
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.headers["content-type"], "application/json");
            assert_eq!(body(&mut r).await, b"{\"ok\":true}");
            assert_eq!(pool.idle(&o), 1);
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn chunked_answers_split_anywhere_are_decoded() {
        let pieces: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/event-stream\r\n\r\n",
            b"6\r\ndata: ",
            b"\r\n",
            b"3;ext=1\r\nab",
            b"c\r",
            b"\nA\r\n0123456789\r\n0\r\n",
            b"x-trailer: 1\r\n\r\n",
        ];
        let (port, conns) = server(vec![(pieces.clone(), false), (pieces, false)]).await;
        let pool = Arc::new(Pool::default());
        let o = origin(port);
        for _ in 0..2 {
            let mut r = post(&pool, &o).await.unwrap();
            assert_eq!(body(&mut r).await, b"data: abc0123456789");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_without_length_ends_with_the_connection() {
        let (port, conns) = server(vec![
            (
                vec![b"HTTP/1.1 200 OK\r\n\r\npart one,", b" part two"],
                true,
            ),
            (vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        ])
        .await;
        let pool = Arc::new(Pool::default());
        let o = origin(port);
        let mut r = post(&pool, &o).await.unwrap();
        assert_eq!(body(&mut r).await, b"part one, part two");
        assert_eq!(pool.idle(&o), 0);
        let mut r = post(&pool, &o).await.unwrap();
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(body(&mut r).await.is_empty());
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_pooled_connection_the_upstream_closed_is_replaced() {
        let ok: &'static [u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        // The server closes after each answer without saying so.
        let (port, conns) =
            server(vec![(vec![ok], true), (vec![ok], true), (vec![ok], true)]).await;
        let pool = Arc::new(Pool::default());
        let o = origin(port);
        for _ in 0..3 {
            let mut r = post(&pool, &o).await.unwrap();
            assert_eq!(body(&mut r).await, b"ok");
            // Let the close arrive (or not: either way the next request must succeed).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connection_close_and_informational_answers() {
        let (port, conns) = server(vec![
            (
                vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy"],
                false,
            ),
            (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], false),
        ])
        .await;
        let pool = Arc::new(Pool::default());
        let o = origin(port);
        let mut r = post(&pool, &o).await.unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(&mut r).await, b"busy");
        assert_eq!(pool.idle(&o), 0, "connection: close is not pooled");
        let mut r = post(&pool, &o).await.unwrap();
        assert!(body(&mut r).await.is_empty());
        assert_eq!(pool.idle(&o), 1);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn broken_answers_are_clear_failures() {
        for (answer, says) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"[..],
                "closed before the answer's end",
            ),
            (
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
                "bad chunk size",
            ),
            (
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabXY"[..],
                "no CRLF",
            ),
        ] {
            let (port, _) = server(vec![(vec![answer], true)]).await;
            let pool = Arc::new(Pool::default());
            let mut r = post(&pool, &origin(port)).await.unwrap();
            let mut err = None;
            loop {
                match r.chunk().await {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e.message);
                        break;
                    }
                }
            }
            let err = err.expect("a failure");
            assert!(err.contains(says), "{err}");
        }
        for (answer, says) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n"[..],
                "invalid content-length",
            ),
            (&b"NOT HTTP\r\n\r\n"[..], "invalid answer"),
            (&b""[..], "closed before an answer"),
        ] {
            let (port, _) = server(vec![(vec![answer], true)]).await;
            let pool = Arc::new(Pool::default());
            let err = post(&pool, &origin(port)).await.unwrap_err();
            assert!(err.message.contains(says), "{}", err.message);
            assert!(!err.connect);
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let pool = Arc::new(Pool::default());
        let err = post(&pool, &origin(port)).await.unwrap_err();
        assert!(err.connect && !err.timeout, "{}", err.message);
    }

    #[test]
    fn origins_and_proxies() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        let o = Origin::of(&[(
            "/chat/completions",
            u("http://localhost/v1/chat/completions"),
        )])
        .unwrap();
        assert_eq!(o.authority, "localhost:80");
        assert_eq!(
            o.head("/chat/completions").unwrap().as_ref(),
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost:80\r\n"
        );
        let o = Origin::of(&[("/embeddings", u("http://[::1]:8080/embeddings?x=1"))]).unwrap();
        assert_eq!(o.authority, "[::1]:8080");
        assert_eq!(o.host, "::1");
        assert!(
            o.head("/embeddings")
                .unwrap()
                .starts_with(b"POST /embeddings?x=1 HTTP/1.1")
        );
        assert!(
            Origin::of(&[(
                "/chat/completions",
                u("https://api.example.com/v1/chat/completions")
            )])
            .is_none()
        );
        assert!(usable(|_| None));
        assert!(usable(|v| (v == "HTTP_PROXY").then(String::new)));
        assert!(!usable(
            |v| (v == "http_proxy").then(|| "http://proxy:3128".into())
        ));
        assert!(!usable(|v| (v == "ALL_PROXY").then(|| "socks5://p".into())));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b"FF ; name=value"), Some(255));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"g"), None);
        assert_eq!(chunk_size(b"1234567890123456"), None);
    }
}
