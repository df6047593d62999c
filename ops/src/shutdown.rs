//! Graceful shutdown: one token cancelled on Ctrl-C or SIGTERM, and an HTTP listener that
//! stops without resetting anyone's connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives Ctrl-C (SIGINT) or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
            () = terminate => tracing::info!("SIGTERM received; shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// How long, once the port is closed, connections accepted just before may take to send their
/// first bytes before shutdown goes on without them (a client that connects and says nothing
/// must not hold the process).
const FIRST_BYTES_GRACE: Duration = Duration::from_secs(1);

/// Most connections taken from the backlog once shutdown began, so a flood of connections
/// cannot keep the port open.
const BACKLOG_DRAIN_LIMIT: usize = 1024;

/// How long, once new handshakes are refused, handshakes already answered may take to complete
/// (one round trip from the client) and be accepted before the port closes.
const HANDSHAKE_SETTLE: Duration = Duration::from_millis(200);

/// A TCP listener for `axum::serve` that stops cleanly when `shutdown` is cancelled.
///
/// Closing a listening socket resets every connection still waiting in its backlog, and axum's
/// graceful shutdown drops accepted connections whose first bytes it has not read yet; a
/// client that had already sent its request sees `connection reset` either way. This listener
/// instead, at shutdown: stops the kernel completing new handshakes (on Linux, a socket filter
/// drops new connection requests, which clients retry), accepts what already waits in the
/// backlog and the handshakes that complete within [`HANDSHAKE_SETTLE`], then closes the port
/// (later connections, and the retried requests, are refused, which clients and load balancers
/// handle as "try elsewhere"), and
/// [`GracefulListener::stopped`] completes only once every accepted connection has been read
/// from, so each of them is served. Requests in flight then finish; idle keep-alive
/// connections are closed.
#[derive(Debug)]
pub struct GracefulListener {
    listener: Option<TcpListener>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    closed: CancellationToken,
    unread: Arc<watch::Sender<usize>>,
    drained: usize,
    /// How the backlog is taken once shutdown began (`None` before).
    closing: Option<Closing>,
}

/// How a [`GracefulListener`] takes its backlog at shutdown.
#[derive(Debug, Clone, Copy)]
enum Closing {
    /// New handshakes are refused: accept what waits and what completes until then.
    Settling(tokio::time::Instant),
    /// New handshakes cannot be refused: accept what already waits, without waiting for more.
    Draining,
}

impl GracefulListener {
    /// Serves connections of `listener` until `shutdown` is cancelled.
    pub fn new(listener: TcpListener, shutdown: CancellationToken) -> io::Result<Self> {
        Ok(Self {
            addr: listener.local_addr()?,
            listener: Some(listener),
            shutdown,
            closed: CancellationToken::new(),
            unread: Arc::new(watch::Sender::new(0)),
            drained: 0,
            closing: None,
        })
    }

    /// Completes once the port is closed and every connection accepted before has been read
    /// from (or a second passed without its first bytes): the signal for
    /// `with_graceful_shutdown`.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let closed = self.closed.clone();
        let mut unread = self.unread.subscribe();
        async move {
            closed.cancelled().await;
            let first_bytes = unread.wait_for(|n| *n == 0);
            if tokio::time::timeout(FIRST_BYTES_GRACE, first_bytes)
                .await
                .is_err()
            {
                tracing::warn!(
                    connections = *unread.borrow(),
                    "connections sent nothing before shutdown; closing them"
                );
            }
        }
    }

    fn tracked(&self, stream: TcpStream) -> Connection {
        self.unread.send_modify(|n| *n += 1);
        Connection {
            stream,
            unread: Some(Arc::clone(&self.unread)),
        }
    }
}

impl axum::serve::Listener for GracefulListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                // Closed: serve what was accepted until the graceful shutdown ends.
                return std::future::pending().await;
            };
            if self.shutdown.is_cancelled() {
                let closing = *self.closing.get_or_insert_with(|| {
                    if refuse_new_handshakes(listener) {
                        Closing::Settling(tokio::time::Instant::now() + HANDSHAKE_SETTLE)
                    } else {
                        Closing::Draining
                    }
                });
                if self.drained < BACKLOG_DRAIN_LIMIT {
                    self.drained += 1;
                    let accepted = match closing {
                        Closing::Settling(until) => {
                            tokio::time::timeout_at(until, listener.accept())
                                .await
                                .map_or(Poll::Pending, Poll::Ready)
                        }
                        Closing::Draining => {
                            listener.poll_accept(&mut Context::from_waker(Waker::noop()))
                        }
                    };
                    match accepted {
                        Poll::Ready(Ok((stream, addr))) => return (self.tracked(stream), addr),
                        Poll::Ready(Err(_)) => continue,
                        Poll::Pending => {}
                    }
                }
                self.listener = None;
                self.closed.cancel();
                tracing::info!(addr = %self.addr, "listener closed; finishing requests in flight");
                continue;
            }
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, addr)) => return (self.tracked(stream), addr),
                    Err(err) => on_accept_error(&err).await,
                },
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Stops `listener` completing new TCP handshakes: a socket filter drops every segment that
/// opens a connection (SYN without ACK), so the client retries it after a second and then meets
/// the closed port, where closing with it in the backlog would have reset it. Handshakes
/// already answered still complete. False where the filter is not available (not Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn refuse_new_handshakes(listener: &TcpListener) -> bool {
    use socket2::{SockFilter, SockRef};
    // Classic BPF over the TCP header: load the flags byte, keep SYN and ACK, drop SYN alone.
    const BPF_LD_B_ABS: u16 = 0x30;
    const BPF_ALU_AND_K: u16 = 0x54;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const TCP_FLAGS_OFFSET: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let program = [
        SockFilter::new(BPF_LD_B_ABS, 0, 0, TCP_FLAGS_OFFSET),
        SockFilter::new(BPF_ALU_AND_K, 0, 0, SYN | ACK),
        SockFilter::new(BPF_JMP_JEQ_K, 0, 1, SYN),
        SockFilter::new(BPF_RET_K, 0, 0, 0),
        SockFilter::new(BPF_RET_K, 0, 0, u32::MAX),
    ];
    match SockRef::from(listener).attach_filter(&program) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "could not stop new handshakes before closing the port");
            false
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn refuse_new_handshakes(_listener: &TcpListener) -> bool {
    false
}

/// Like axum's own listener: a connection that failed before it was accepted is skipped; any
/// other error (out of file descriptors) is logged and waited out.
async fn on_accept_error(err: &io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// An accepted connection of a [`GracefulListener`], counted until its first bytes are read.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    unread: Option<Arc<watch::Sender<usize>>>,
}

impl Connection {
    /// Sets `TCP_NODELAY` (responses are written whole; Nagle's delay only adds latency).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.stream.set_nodelay(nodelay)
    }

    fn read_from(&mut self) {
        if let Some(unread) = self.unread.take() {
            unread.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.read_from();
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if polled.is_ready() {
            self.read_from();
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::{GracefulListener, refuse_new_handshakes};

    /// A server whose `/slow` answers after 300 ms (telling `entered` when it starts).
    async fn serve(
        shutdown: CancellationToken,
        entered: std::sync::Arc<Notify>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = GracefulListener::new(listener, shutdown).unwrap();
        let stopped = listener.stopped();
        let router = Router::new()
            .route(
                "/slow",
                get(move || async move {
                    entered.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }),
            )
            .route("/fast", get(|| async { "done" }));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
                .unwrap();
        });
        (addr, server)
    }

    async fn request(stream: &mut TcpStream, path: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn a_request_in_flight_at_shutdown_is_answered_and_later_connections_are_refused() {
        let shutdown = CancellationToken::new();
        let entered = std::sync::Arc::new(Notify::new());
        let (addr, server) = serve(shutdown.clone(), entered.clone()).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::spawn(async move { request(&mut client, "/slow").await });
        entered.notified().await;
        shutdown.cancel();

        let answer = answer.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        let refused = TcpStream::connect(addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_connection_made_before_shutdown_whose_request_comes_after_is_still_served() {
        let shutdown = CancellationToken::new();
        let (addr, server) = serve(shutdown.clone(), std::sync::Arc::new(Notify::new())).await;
        // Connected (the kernel completed the handshake), nothing sent yet.
        let mut client = TcpStream::connect(addr).await.unwrap();
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;

        let answer = request(&mut client, "/fast").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("done"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn a_listener_refusing_new_handshakes_keeps_its_connections_and_completes_no_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut before = TcpStream::connect(addr).await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        assert!(refuse_new_handshakes(&listener));

        // The connection opened before still carries data both ways.
        before.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        accepted.read_exact(&mut ping).await.unwrap();
        accepted.write_all(b"pong").await.unwrap();
        let mut pong = [0; 4];
        before.read_exact(&mut pong).await.unwrap();
        assert_eq!((&ping, &pong), (b"ping", b"pong"));
        // A new one is neither completed (it would wait in the backlog and be reset at close)
        // nor refused yet: its request is dropped, so the client retries it.
        let attempt =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(attempt.is_err(), "a new handshake completed: {attempt:?}");
        let pending = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(pending.is_err(), "a connection reached the backlog");
    }

    /// One client connecting and asking again and again until the port is closed: how its
    /// attempts ended.
    async fn hammer(addr: std::net::SocketAddr) -> (usize, Vec<std::io::Error>) {
        let mut answered = 0;
        loop {
            let mut stream = match TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return (answered, Vec::new());
                }
                Err(err) => return (answered, vec![err]),
            };
            let asked = stream
                .write_all(b"GET /fast HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
                .await;
            let mut answer = Vec::new();
            match asked.and(stream.read_to_end(&mut answer).await) {
                Ok(_) if answer.starts_with(b"HTTP/1.1 200") => answered += 1,
                Ok(_) => {
                    let answer = String::from_utf8_lossy(&answer).into_owned();
                    return (answered, vec![std::io::Error::other(answer)]);
                }
                Err(err) => return (answered, vec![err]),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_connecting_while_the_port_closes_are_answered_or_refused_never_reset() {
        let mut rounds = Vec::new();
        for _ in 0..8 {
            rounds.push(tokio::spawn(async {
                let shutdown = CancellationToken::new();
                let (addr, server) =
                    serve(shutdown.clone(), std::sync::Arc::new(Notify::new())).await;
                let clients: Vec<_> = (0..4).map(|_| tokio::spawn(hammer(addr))).collect();
                tokio::time::sleep(Duration::from_millis(50)).await;
                shutdown.cancel();
                let mut outcomes = Vec::new();
                for client in clients {
                    outcomes.push(client.await.unwrap());
                }
                tokio::time::timeout(Duration::from_secs(5), server)
                    .await
                    .unwrap()
                    .unwrap();
                outcomes
            }));
        }
        let mut answered = 0;
        let mut broken = Vec::new();
        for round in rounds {
            for (ok, errors) in round.await.unwrap() {
                answered += ok;
                broken.extend(errors);
            }
        }
        assert!(answered > 0, "no request was answered before shutdown");
        assert!(
            broken.is_empty(),
            "{} attempts broken: {broken:?}",
            broken.len()
        );
    }
}
