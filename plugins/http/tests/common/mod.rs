//! A small real HTTP/1.1 server on 127.0.0.1 (optionally behind TLS), written on tokio,
//! that records every request and answers as the test's handler says.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Request target: path and query.
    pub target: String,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (read up to `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// What the server answers.
pub enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Say nothing for this long, then close the connection.
    Stall(Duration),
    /// Headers announcing `total` bytes, then one byte every `every`.
    Trickle { total: usize, every: Duration },
    /// A generated body of `len` bytes with Content-Length, written in 64 KiB chunks; its
    /// SHA-256 is stored into `digest` when the last byte is written.
    Generated {
        len: u64,
        digest: Arc<Mutex<Option<Vec<u8>>>>,
    },
}

impl Reply {
    /// A response with a status and a body.
    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }
}

/// Decides the reply for a request.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running server; it stops when the test's runtime ends.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Every request received, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl TestServer {
    /// A plain HTTP server.
    pub async fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_inner(Arc::new(handler), None).await
    }

    /// An HTTPS server with the given TLS config.
    pub async fn start_tls(
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        Self::start_inner(
            Arc::new(handler),
            Some(tokio_rustls::TlsAcceptor::from(tls)),
        )
        .await
    }

    async fn start_inner(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let log = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            // A client that rejects our certificate ends here.
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, handler, log).await;
                            }
                        }
                        None => serve(stream, handler, log).await,
                    }
                });
            }
        });
        TestServer {
            addr,
            scheme,
            requests,
        }
    }

    /// A URL on this server.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path_and_query)
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

fn head(status: u16, headers: &[(String, String)], length: u64) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 {status} Test\r\ncontent-length: {length}\r\nconnection: close\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The body [`Reply::Generated`] sends: chunk `i` is a fixed pseudo-random 64 KiB block
/// whose first 8 bytes are `i`, cut to `len` bytes overall.
pub fn generated_chunks(len: u64) -> impl Iterator<Item = Vec<u8>> {
    const CHUNK: u64 = 64 * 1024;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let block: Vec<u8> = (0..CHUNK)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let chunks = len.div_ceil(CHUNK);
    (0..chunks).map(move |i| {
        let mut chunk = block.clone();
        chunk[..8].copy_from_slice(&i.to_le_bytes());
        let size = (len - i * CHUNK).min(CHUNK) as usize;
        chunk.truncate(size);
        chunk
    })
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: Handler,
    log: Arc<Mutex<Vec<Request>>>,
) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    log.lock().unwrap().push(request.clone());
    let is_head = request.method == "HEAD";
    match handler(&request) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut out = head(status, &headers, body.len() as u64);
            if !is_head {
                out.extend_from_slice(&body);
            }
            let _ = stream.write_all(&out).await;
        }
        Reply::Stall(duration) => {
            tokio::time::sleep(duration).await;
        }
        Reply::Trickle { total, every } => {
            if stream
                .write_all(&head(200, &[], total as u64))
                .await
                .is_err()
            {
                return;
            }
            for _ in 0..total {
                tokio::time::sleep(every).await;
                if stream.write_all(b"x").await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
        Reply::Generated { len, digest } => {
            let headers = [(
                "content-type".to_owned(),
                "application/octet-stream".to_owned(),
            )];
            if stream.write_all(&head(200, &headers, len)).await.is_err() {
                return;
            }
            let mut hash = digest::Context::new(&digest::SHA256);
            for chunk in generated_chunks(len) {
                hash.update(&chunk);
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            *digest.lock().unwrap() = Some(hash.finish().as_ref().to_vec());
        }
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}
