//! Real kernel MPTCP (IPPROTO_MPTCP) and plain TCP traffic between namespaces, bounded in time.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;

const IPPROTO_MPTCP: i32 = 262;
const SOL_MPTCP: i32 = 284;
const MPTCP_INFO: i32 = 1;
/// Every blocking socket call gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Proto {
    #[default]
    Mptcp,
    Tcp,
}

fn socket(ns: &Netns, addr: SocketAddr, proto: Proto) -> Result<Socket> {
    let protocol = match proto {
        Proto::Mptcp => Protocol::from(IPPROTO_MPTCP),
        Proto::Tcp => Protocol::TCP,
    };
    let socket = ns
        .within(move || Socket::new(Domain::for_address(addr), Type::STREAM, Some(protocol)))?
        .with_context(|| format!("creating a {proto:?} socket (is net.mptcp.enabled set?)"))?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(socket)
}

/// A server that reads every connection to EOF and answers with the byte count (8 bytes, BE).
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<Vec<Received>>>,
}

/// What a server received on one connection.
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub bytes: u64,
    /// When each read returned and the bytes received by then (recording servers only).
    pub arrivals: Vec<(Instant, u64)>,
}

impl Received {
    /// The longest time the application got no new data from `since` on: from `since` to the
    /// first read after it, then between reads. `None` when nothing arrived after `since`.
    pub fn longest_gap_after(&self, since: Instant) -> Option<Duration> {
        let mut previous = since;
        let mut longest = None;
        for (at, _) in self.arrivals.iter().filter(|(at, _)| *at > since) {
            let gap = at.duration_since(previous);
            longest = Some(longest.map_or(gap, |l: Duration| l.max(gap)));
            previous = *at;
        }
        longest
    }
}

impl Server {
    /// Listens on `addr` inside `ns` and serves `connections` connections, each on its own thread.
    pub fn start(ns: &Netns, addr: SocketAddr, proto: Proto, connections: usize) -> Result<Self> {
        Self::listen(ns, addr, proto, Some(connections), false)
    }

    /// [`Server::start`], recording when every read returned (see [`Server::join_received`]).
    pub fn start_recording(ns: &Netns, addr: SocketAddr, proto: Proto, connections: usize) -> Result<Self> {
        Self::listen(ns, addr, proto, Some(connections), true)
    }

    /// Listens on `addr` inside `ns` and serves connections until [`Server::stop`].
    pub fn start_until_stopped(ns: &Netns, addr: SocketAddr, proto: Proto) -> Result<Self> {
        Self::listen(ns, addr, proto, None, false)
    }

    fn listen(
        ns: &Netns,
        addr: SocketAddr,
        proto: Proto,
        connections: Option<usize>,
        record: bool,
    ) -> Result<Self> {
        let socket = socket(ns, addr, proto)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
        socket.listen(1024)?;
        // Without a connection count accept() polls, to look at the stop flag (an MPTCP
        // listener ignores SO_RCVTIMEO).
        socket.set_nonblocking(connections.is_none())?;
        let listener: TcpListener = socket.into();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = thread::spawn(move || -> Result<Vec<Received>> {
            let mut workers = Vec::new();
            while connections.is_none_or(|n| workers.len() < n) {
                match listener.accept() {
                    Ok((stream, _)) => workers.push(thread::spawn(move || serve(stream, record))),
                    Err(e) if connections.is_none() && is_timeout(&e) => {
                        if stopped.load(Ordering::SeqCst) {
                            break;
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e).context("accept timed out"),
                }
            }
            workers
                .into_iter()
                .map(|w| w.join().map_err(|_| anyhow::anyhow!("server thread panicked"))?)
                .collect()
        });
        Ok(Self { addr, stop, handle })
    }

    /// Waits for every connection to finish; returns the bytes received on each.
    pub fn join(self) -> Result<Vec<u64>> {
        Ok(self.join_received()?.into_iter().map(|received| received.bytes).collect())
    }

    /// Waits for every connection to finish; returns what each received.
    pub fn join_received(self) -> Result<Vec<Received>> {
        self.handle.join().map_err(|_| anyhow::anyhow!("server panicked"))?
    }

    /// Stops accepting, waits for the connections accepted so far and returns their byte counts.
    pub fn stop(self) -> Result<Vec<u64>> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }
}

fn is_timeout(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

fn serve(mut stream: TcpStream, record: bool) -> Result<Received> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = Received::default();
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => received.bytes += n as u64,
        }
        if record {
            received.arrivals.push((Instant::now(), received.bytes));
        }
    }
    stream.write_all(&received.bytes.to_be_bytes())?;
    Ok(received)
}

/// How a client connection behaves.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub proto: Proto,
    /// Bytes sent after the connection is set up.
    pub bytes: u64,
    /// Wait until the kernel reports this many additional subflows before sending (MPTCP only).
    pub wait_subflows: u8,
    /// Once all data is sent, check in at this gate and wait for it to open before closing.
    pub hold: Option<Arc<Gate>>,
}

/// Holds connections open while a test looks at them; bounded in time on both sides.
#[derive(Debug, Default)]
pub struct Gate {
    arrived: std::sync::atomic::AtomicUsize,
    open: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn pass(&self) {
        use std::sync::atomic::Ordering;
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.open.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many connections have checked in.
    pub fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `count` connections have checked in.
    pub fn wait_for(&self, count: usize) -> Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.arrived.load(std::sync::atomic::Ordering::SeqCst) < count {
            ensure!(Instant::now() < deadline, "connections did not come up in time");
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Lets the held connections close.
    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What one client connection achieved.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub bytes: u64,
    /// Additional subflows the kernel reported (MPTCP_INFO) when sending started.
    pub subflows: u8,
}

/// Additional (non-initial) subflows of an MPTCP socket, from MPTCP_INFO. A connection that fell
/// back to TCP has none to report (EOPNOTSUPP).
pub fn mptcp_subflows(stream: &TcpStream) -> Result<u8> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into info.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), SOL_MPTCP, MPTCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("MPTCP_INFO");
    }
    // struct mptcp_info starts with __u8 mptcpi_subflows.
    Ok(info[0])
}

/// Connects from `ns` to `server`, sends `options.bytes` and checks the server's count.
pub fn transfer(ns: &Netns, server: SocketAddr, options: ClientOptions) -> Result<Transfer> {
    let socket = socket(ns, server, options.proto)?;
    socket.connect_timeout(&server.into(), IO_TIMEOUT).with_context(|| format!("connecting to {server}"))?;
    let mut stream: TcpStream = socket.into();
    let chunk = vec![0x5au8; 64 * 1024];
    // The client's in-kernel path manager opens subflows only once the connection is fully
    // established, which takes the server's first DSS: send a little data first.
    let first = options.bytes.min(1024) as usize;
    stream.write_all(&chunk[..first])?;
    let mut left = options.bytes - first as u64;
    let mut subflows = 0;
    if options.proto == Proto::Mptcp && options.wait_subflows > 0 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            subflows = mptcp_subflows(&stream)?;
            if subflows >= options.wait_subflows {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {subflows} of {} additional subflows after 5 s", options.wait_subflows);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    if let Some(gate) = &options.hold {
        gate.pass();
    }
    stream.shutdown(Shutdown::Write)?;
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).context("reading the server's byte count")?;
    let received = u64::from_be_bytes(reply);
    ensure!(received == options.bytes, "server received {received} of {} bytes", options.bytes);
    Ok(Transfer { bytes: received, subflows })
}

/// Connects from `ns` to `server` and sends as fast as the connection allows for `duration`;
/// returns the bytes the server counted.
pub fn send_for(ns: &Netns, server: SocketAddr, proto: Proto, duration: Duration) -> Result<u64> {
    let socket = socket(ns, server, proto)?;
    socket.connect_timeout(&server.into(), IO_TIMEOUT).with_context(|| format!("connecting to {server}"))?;
    let mut stream: TcpStream = socket.into();
    let chunk = vec![0x5au8; 64 * 1024];
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        stream.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).context("reading the server's byte count")?;
    let received = u64::from_be_bytes(reply);
    ensure!(received == sent, "server received {received} of {sent} bytes");
    Ok(received)
}

/// Connections from one namespace to a listener in another, open and silent until dropped: the
/// load of many tracked connections. The server never accepts them: established, they wait in
/// its accept queue, so this process holds one descriptor per connection, not two.
pub struct IdleConnections {
    _listener: TcpListener,
    clients: Vec<TcpStream>,
}

impl IdleConnections {
    /// Opens `count` connections from `client` to `addr` in `server` within `within`.
    pub fn open(
        client: &Netns,
        server: &Netns,
        addr: SocketAddr,
        proto: Proto,
        count: usize,
        within: Duration,
    ) -> Result<Self> {
        raise_open_files(count as u64 + 1024)?;
        // The accept queue must hold them all (listen() caps its backlog at this).
        server.sysctl("net.core.somaxconn", &count.to_string())?;
        let listener = socket(server, addr, proto)?;
        listener.set_reuse_address(true)?;
        listener.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
        listener.listen(i32::try_from(count).context("backlog")?)?;
        let protocol = match proto {
            Proto::Mptcp => Protocol::from(IPPROTO_MPTCP),
            Proto::Tcp => Protocol::TCP,
        };
        let deadline = Instant::now() + within;
        let clients = client.spawn(move || -> Result<Vec<TcpStream>> {
            (0..count)
                .map(|i| {
                    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(protocol))?;
                    let left =
                        deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                    socket
                        .connect_timeout(&addr.into(), left)
                        .with_context(|| format!("connection {i} to {addr}"))?;
                    Ok(socket.into())
                })
                .collect()
        })?;
        let clients = clients.join().map_err(|_| anyhow::anyhow!("connecting thread panicked"))??;
        Ok(Self { _listener: listener.into(), clients })
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Raises this process's open-file limit to at least `wanted` (within the hard limit).
fn raise_open_files(wanted: u64) -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a properly sized struct.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        if limit.rlim_cur >= wanted {
            return Ok(());
        }
        ensure!(
            limit.rlim_max >= wanted,
            "RLIMIT_NOFILE hard limit {} below the {wanted} needed",
            limit.rlim_max
        );
        limit.rlim_cur = wanted;
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0,
            "raising RLIMIT_NOFILE to {wanted}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
