//! A TCP proxy between the code under test and a real server (PostgreSQL, RabbitMQ), which a
//! test can cut, blackhole and restore: outages of one test's connections, without stopping the
//! server every other test uses.
//!
//! - [`Proxy::refuse`]: the server went away. The port is closed (new connections are refused)
//!   and every open connection is closed.
//! - [`Proxy::stop_accepting`]: the port is closed, open connections carry on (until the server
//!   ends them: a server shutting down sends its goodbye on each before it closes it).
//! - [`Proxy::blackhole`]: the network dropped. New connections are accepted and never answered;
//!   open connections stop carrying data in either direction.
//! - [`Proxy::restore`]: service is back. The port listens again (the same port); connections
//!   held by a blackhole are closed, as a peer whose partition healed would find them dead.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Carries bytes both ways.
    Forward,
    /// The port is closed; nothing is open.
    Refuse,
    /// Accepts, then carries nothing.
    Blackhole,
    /// The port is closed; open connections carry on.
    NoNewConnections,
}

/// A running proxy; stops (closing everything) when dropped.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    wanted: watch::Sender<Mode>,
    applied: watch::Receiver<Mode>,
    open: watch::Receiver<usize>,
    accepted: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (wanted, wanted_rx) = watch::channel(Mode::Forward);
        let (applied_tx, applied) = watch::channel(Mode::Forward);
        let (open_tx, open) = watch::channel(0_usize);
        let (accepted_tx, accepted) = watch::channel(0_u64);
        let task = tokio::spawn(supervise(
            listener,
            port,
            upstream,
            Counters {
                mode: wanted_rx,
                applied: applied_tx,
                open: open_tx,
                accepted: accepted_tx,
            },
        ));
        Self {
            port,
            wanted,
            applied,
            open,
            accepted,
            task,
        }
    }

    /// A proxy to `host:port` (the first address it resolves to).
    pub async fn to(host: &str, port: u16) -> Self {
        let upstream = tokio::net::lookup_host((host, port))
            .await
            .unwrap()
            .next()
            .unwrap_or_else(|| panic!("{host}:{port} resolves to nothing"));
        Self::start(upstream).await
    }

    /// The port to connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections accepted so far (forwarded or blackholed).
    pub fn accepted(&self) -> u64 {
        *self.accepted.borrow()
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Closes the port and every open connection; returns once the port is closed and no
    /// connection is left open.
    pub async fn refuse(&self) {
        self.switch(Mode::Refuse).await;
        let mut open = self.open.clone();
        tokio::time::timeout(Duration::from_secs(5), open.wait_for(|n| *n == 0))
            .await
            .expect("every proxied connection closes within 5 s")
            .unwrap();
    }

    /// Closes the port; open connections carry on.
    pub async fn stop_accepting(&self) {
        self.switch(Mode::NoNewConnections).await;
    }

    /// Stops carrying data; new connections are accepted and left hanging.
    pub async fn blackhole(&self) {
        self.switch(Mode::Blackhole).await;
    }

    /// Forwards again, on the same port.
    pub async fn restore(&self) {
        self.switch(Mode::Forward).await;
    }

    async fn switch(&self, mode: Mode) {
        self.wanted.send_replace(mode);
        let mut applied = self.applied.clone();
        tokio::time::timeout(Duration::from_secs(5), applied.wait_for(|m| *m == mode))
            .await
            .unwrap_or_else(|_| panic!("the proxy switches to {mode:?} within 5 s"))
            .unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Connections end with their tasks: they watch a mode channel whose sender is gone.
        self.wanted.send_replace(Mode::Refuse);
    }
}

struct Counters {
    mode: watch::Receiver<Mode>,
    applied: watch::Sender<Mode>,
    open: watch::Sender<usize>,
    accepted: watch::Sender<u64>,
}

async fn supervise(listener: TcpListener, port: u16, upstream: SocketAddr, mut c: Counters) {
    let mut listener = Some(listener);
    loop {
        let mode = *c.mode.borrow_and_update();
        match (mode, listener.is_some()) {
            (Mode::Refuse | Mode::NoNewConnections, true) => listener = None,
            (Mode::Forward | Mode::Blackhole, false) => listener = Some(rebind(port).await),
            _ => {}
        }
        c.applied.send_replace(mode);
        let Some(open_listener) = listener.as_ref() else {
            if c.mode.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            accepted = open_listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                c.accepted.send_modify(|n| *n += 1);
                c.open.send_modify(|n| *n += 1);
                let mode = c.mode.clone();
                let open = c.open.clone();
                tokio::spawn(async move {
                    carry(client, upstream, mode).await;
                    open.send_modify(|n| *n -= 1);
                });
            }
            changed = c.mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Binds the proxy's port again (the old socket may linger briefly).
async fn rebind(port: u16) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(err) if tokio::time::Instant::now() < deadline => {
                eprintln!("proxy: binding port {port} again failed ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("proxy: cannot bind port {port} again: {err}"),
        }
    }
}

/// One client connection, for as long as the mode lets it live.
async fn carry(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let now = *mode.borrow_and_update();
    if now == Mode::Blackhole {
        // Held open, never answered, closed when the blackhole ends.
        let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
        return;
    }
    if matches!(now, Mode::Refuse | Mode::NoNewConnections) {
        return;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let outcome = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        outcome = mode.wait_for(|m| !matches!(m, Mode::Forward | Mode::NoNewConnections)) => {
            outcome.map(|m| *m)
        }
    };
    drop(server);
    if matches!(outcome, Ok(Mode::Blackhole)) {
        let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
    }
}
