//! A TCP fault proxy for exercising client behaviour under network faults.
//!
//! [`FaultProxy`] sits between a client and a loopback server and forwards bytes
//! in both directions. [`FaultProxy::set_mode`] switches every open connection
//! (and every future one) to a different [`FaultMode`] at once: stall traffic,
//! black-hole it, or cut the connections, then restore normal forwarding.
//!
//! ```no_run
//! use jetevents_testcontainers::{FaultMode, FaultProxy};
//!
//! # async fn example() -> std::io::Result<()> {
//! // A nats-server already listening on 127.0.0.1:4222.
//! let proxy = FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
//! // Point the client at the proxy instead of the server.
//! let url = proxy.url();
//! # let _ = url;
//! proxy.set_mode(FaultMode::Close); // the client now sees a disconnect
//! proxy.set_mode(FaultMode::Pass); // and can reconnect
//! # Ok(())
//! # }
//! ```

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How a [`FaultProxy`] treats traffic. Applies to open and new connections alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Forward bytes in both directions.
    Pass,
    /// Keep connections open but stop reading from either side. Bytes are held
    /// back (in socket buffers), not lost: switching to [`FaultMode::Pass`]
    /// delivers them.
    Stall,
    /// Keep connections open, read from both sides and discard everything, like
    /// a black hole. Bytes discarded are gone for good.
    Drop,
    /// Close every open connection and close new ones right after accepting
    /// them, until the mode changes.
    Close,
    /// Forward the client's bytes to the server, discard the server's: the
    /// server acts on every request and its answers are lost (a crash
    /// between storing and acking, seen from the client).
    DropReplies,
}

/// What one direction of a connection does under a [`FaultMode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Pass,
    Stall,
    Drop,
    Close,
}

impl FaultMode {
    /// What the direction towards the client (`to_client`) or the server
    /// does in this mode.
    fn flow(self, to_client: bool) -> Flow {
        match self {
            FaultMode::Pass => Flow::Pass,
            FaultMode::Stall => Flow::Stall,
            FaultMode::Drop => Flow::Drop,
            FaultMode::Close => Flow::Close,
            FaultMode::DropReplies if to_client => Flow::Drop,
            FaultMode::DropReplies => Flow::Pass,
        }
    }
}

/// Counters shared between the proxy handle and its tasks.
#[derive(Debug, Default)]
struct Stats {
    connections: AtomicUsize,
    discarded_bytes: AtomicU64,
}

/// A loopback TCP proxy that injects faults on command.
///
/// Listens on `127.0.0.1` on a free port and forwards each accepted connection
/// to the upstream address given to [`FaultProxy::start`]. Dropping the proxy
/// stops the listener and closes every proxied connection.
///
/// ```no_run
/// use std::time::Duration;
/// use jetevents_testcontainers::{FaultMode, FaultProxy};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let proxy = FaultProxy::start("127.0.0.1:4222".parse()?).await?;
/// let client = async_nats::connect(proxy.url()).await?;
///
/// proxy.set_mode(FaultMode::Stall);
/// // The PING behind a flush never reaches the server.
/// assert!(tokio::time::timeout(Duration::from_millis(200), client.flush()).await.is_err());
///
/// proxy.set_mode(FaultMode::Pass);
/// client.flush().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct FaultProxy {
    local_addr: SocketAddr,
    mode: watch::Sender<FaultMode>,
    stats: Arc<Stats>,
    listener: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy listening on `127.0.0.1:0` that forwards to `upstream`,
    /// in [`FaultMode::Pass`].
    ///
    /// Must be called inside a tokio runtime. `upstream` must be a loopback
    /// address (`127.0.0.0/8` or `::1`); anything else is rejected with
    /// [`io::ErrorKind::InvalidInput`] so a test can never send traffic off
    /// the machine. The upstream is dialled per accepted connection, so it need
    /// not be listening yet.
    ///
    /// ```no_run
    /// use jetevents_testcontainers::FaultProxy;
    ///
    /// # async fn example() -> std::io::Result<()> {
    /// let proxy = FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
    /// assert!(proxy.url().starts_with("nats://127.0.0.1:"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        if !upstream.ip().to_canonical().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fault proxy upstream {upstream} is not a loopback address"),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let local_addr = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(FaultMode::Pass);
        let stats = Arc::new(Stats::default());
        let listener = tokio::spawn(accept_loop(listener, upstream, mode_rx, stats.clone()));
        Ok(FaultProxy {
            local_addr,
            mode,
            stats,
            listener,
        })
    }

    /// The address the proxy listens on (always `127.0.0.1`).
    ///
    /// ```no_run
    /// # async fn example() -> std::io::Result<()> {
    /// let proxy = jetevents_testcontainers::FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
    /// let stream = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
    /// # drop(stream);
    /// # Ok(())
    /// # }
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The proxy address as a NATS URL, `nats://127.0.0.1:PORT`.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let proxy = jetevents_testcontainers::FaultProxy::start("127.0.0.1:4222".parse()?).await?;
    /// let client = async_nats::connect(proxy.url()).await?;
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self) -> String {
        format!("nats://{}", self.local_addr)
    }

    /// Switches the proxy to `mode`. Open connections react at once; new
    /// connections start in the mode current when they are accepted.
    ///
    /// Bytes already read from one side when the mode changes are still
    /// forwarded, unless the new mode is [`FaultMode::Close`].
    ///
    /// ```no_run
    /// use jetevents_testcontainers::{FaultMode, FaultProxy};
    ///
    /// # async fn example() -> std::io::Result<()> {
    /// let proxy = FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
    /// proxy.set_mode(FaultMode::Drop);
    /// assert_eq!(proxy.mode(), FaultMode::Drop);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_mode(&self, mode: FaultMode) {
        // send_replace stores the mode even while no task holds a receiver.
        self.mode.send_replace(mode);
    }

    /// The current mode.
    ///
    /// ```no_run
    /// use jetevents_testcontainers::{FaultMode, FaultProxy};
    ///
    /// # async fn example() -> std::io::Result<()> {
    /// let proxy = FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
    /// assert_eq!(proxy.mode(), FaultMode::Pass);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(&self) -> FaultMode {
        *self.mode.borrow()
    }

    /// The number of currently open proxied connections (client accepted and
    /// upstream connected).
    ///
    /// ```no_run
    /// # async fn example() -> std::io::Result<()> {
    /// let proxy = jetevents_testcontainers::FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
    /// assert_eq!(proxy.connections(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Total bytes read and thrown away in [`FaultMode::Drop`], both directions,
    /// all connections. Lets a test wait until its bytes have really been
    /// discarded before it switches back to [`FaultMode::Pass`].
    ///
    /// ```no_run
    /// use jetevents_testcontainers::{FaultMode, FaultProxy};
    ///
    /// # async fn example() -> std::io::Result<()> {
    /// let proxy = FaultProxy::start("127.0.0.1:4222".parse().unwrap()).await?;
    /// proxy.set_mode(FaultMode::Drop);
    /// assert_eq!(proxy.discarded_bytes(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn discarded_bytes(&self) -> u64 {
        self.stats.discarded_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task; dropping `mode` also tells them to stop.
        self.listener.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<FaultMode>,
    stats: Arc<Stats>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    if *mode.borrow() == FaultMode::Close {
                        drop(client);
                        continue;
                    }
                    connections.spawn(proxy_connection(client, upstream, mode.clone(), stats.clone()));
                }
                // Accept errors are transient (e.g. out of file descriptors);
                // back off briefly rather than spin or give up.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connection tasks so the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Decrements the open connection count however the connection task ends,
/// including being aborted.
struct ConnectionGuard(Arc<Stats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn proxy_connection(
    client: TcpStream,
    upstream: SocketAddr,
    mode: watch::Receiver<FaultMode>,
    stats: Arc<Stats>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        // Upstream unreachable: closing the client is the honest answer.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    stats.connections.fetch_add(1, Ordering::SeqCst);
    let _guard = ConnectionGuard(stats.clone());

    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Ends at the first direction that must stop the whole connection; a
    // clean EOF only half-closes, so the other direction keeps flowing.
    let _ = tokio::try_join!(
        pump(client_read, server_write, mode.clone(), &stats, false),
        pump(server_read, client_write, mode, &stats, true),
    );
    // Both sockets close here as their halves drop.
}

/// Why a direction stopped in a way that ends the whole connection.
#[derive(Debug)]
enum Stop {
    /// Mode is Close, or the proxy was dropped.
    Closed,
    /// A read or write failed.
    Io,
}

/// Copies one direction of a connection, obeying the mode.
///
/// Returns `Ok` when the reader reached EOF (the writer is then shut down to
/// pass the half-close on).
async fn pump<R, W>(
    mut reader: R,
    mut writer: W,
    mut mode: watch::Receiver<FaultMode>,
    stats: &Stats,
    to_client: bool,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let current = mode.borrow_and_update().flow(to_client);
        match current {
            Flow::Close => return Err(Stop::Closed),
            Flow::Stall => mode.changed().await.map_err(|_| Stop::Closed)?,
            Flow::Pass | Flow::Drop => {
                let read = tokio::select! {
                    // A mode change wins over data so that bytes sent after
                    // `set_mode` returns are always handled in the new mode.
                    biased;
                    changed = mode.changed() => {
                        changed.map_err(|_| Stop::Closed)?;
                        continue;
                    }
                    read = reader.read(&mut buf) => read.map_err(|_| Stop::Io)?,
                };
                if read == 0 {
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
                deliver(&buf[..read], &mut writer, &mut mode, stats, to_client).await?;
            }
        }
    }
}

/// Handles bytes already read according to the mode current now (not the one
/// current when the read started).
async fn deliver<W>(
    bytes: &[u8],
    writer: &mut W,
    mode: &mut watch::Receiver<FaultMode>,
    stats: &Stats,
    to_client: bool,
) -> Result<(), Stop>
where
    W: AsyncWrite + Unpin,
{
    loop {
        let current = mode.borrow_and_update().flow(to_client);
        match current {
            Flow::Close => return Err(Stop::Closed),
            Flow::Stall => mode.changed().await.map_err(|_| Stop::Closed)?,
            Flow::Drop => {
                stats
                    .discarded_bytes
                    .fetch_add(bytes.len() as u64, Ordering::SeqCst);
                return Ok(());
            }
            Flow::Pass => {
                // Only Close interrupts a write in progress: a peer that stops
                // reading must not keep the connection alive past Close.
                return tokio::select! {
                    written = writer.write_all(bytes) => written.map_err(|_| Stop::Io),
                    () = wait_for_close(mode) => Err(Stop::Closed),
                };
            }
        }
    }
}

/// Resolves once the mode is Close or the proxy is gone.
async fn wait_for_close(mode: &mut watch::Receiver<FaultMode>) {
    while *mode.borrow_and_update() != FaultMode::Close {
        if mode.changed().await.is_err() {
            return;
        }
    }
}
