//! The three v0 roles: [`Dialer`], [`Listener`], [`Relay`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::accept::accept_each;
use crate::config::TransportArgs;
use crate::conn::Connection;
use crate::duplex;
use crate::error::Error;
use crate::logging::{self, Scrubbed};
use crate::policy::admission::{Kind, Slot};
use crate::reload::{Current, Reloader, Shared, pulled_config};
use crate::session::{Done, Links, Session, Setup, finished, spawn_worker};
use crate::wasi::lazy::LazyTcp;
use crate::wasi::table::Stream;
use crate::watm::{Role, Watm};

fn label(role: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{role}#{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sets up a connection whose application side is an in-process duplex.
async fn app_connection(
    watm: &Watm,
    slot: Slot,
    make: impl FnOnce(Stream) -> Setup,
    role: &str,
    pulled: Option<Arc<[u8]>>,
) -> Result<Connection, Error> {
    let (app, guest) = duplex::pair_holding(watm.inner.exports.abi.app_buffer());
    let guest = Arc::new(guest);
    let links = Links::default();
    let setup = make(Stream::Duplex(guest.clone()));
    let session = Session::start(watm, slot, setup, links.cancel.clone(), label(role), pulled).await?;
    let done = spawn_worker(session, links.clone(), watm.inner.config.close_grace, Some(guest));
    Ok(Connection::new(app, links, done))
}

/// Opens connections through a WATM (the `_water_dial` role).
#[derive(Debug, Clone)]
pub struct Dialer {
    shared: Arc<Shared>,
}

impl Dialer {
    /// A dialer for `watm`; [`Error::RoleNotSupported`] if it has no
    /// `_water_dial`.
    pub fn new(watm: &Watm) -> Result<Dialer, Error> {
        if !watm.supports(Role::GuestDialer) {
            watm.require(Role::Dialer)?;
        }
        Ok(Dialer { shared: Shared::new(watm, &[Role::Dialer, Role::GuestDialer]) })
    }

    /// The handle that replaces this dialer's module (and its clones'):
    /// later dials use the new one, open connections keep theirs.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(&self.shared)
    }

    /// Connects through a v1 module's `watm_dial_fixed_v1`, whose guest
    /// names the address itself (`water_dial`, from its config): the
    /// dialer water-go calls "fixed". The guest may dial only where the
    /// module's `Config::dial_filter` allows (without a filter every such
    /// dial is refused, `-acces`: a guest that could dial anywhere would
    /// reach the host's own network), once, within the same limits as any
    /// dial. Errors: [`Error::RoleNotSupported`] for a module without that
    /// export (every v0 module), else as [`dial`](Self::dial).
    pub async fn dial_by_guest(&self) -> Result<Connection, Error> {
        let Current { watm, .. } = self.shared.current();
        watm.require(Role::GuestDialer)?;
        let pulled = pulled_config(&watm, &TransportArgs::new())?;
        let slot = self.shared.admit(&watm, Kind::Dialed)?;
        app_connection(&watm, slot, |internal| Setup::DialByGuest { internal }, "dial", pulled).await
    }

    /// Connects to `addr` (`host:port`) through the transport. Returns once
    /// the guest's `_water_dial` succeeded, i.e. the TCP connection is up.
    ///
    /// Errors: a refused or unreachable address is [`Error::Io`] with the
    /// matching `io::ErrorKind`; a guest failure is typed (see [`Error`]).
    pub async fn dial(&self, addr: impl Into<String>) -> Result<Connection, Error> {
        self.dial_with_args(addr, &TransportArgs::new()).await
    }

    /// [`dial`](Self::dial) with per-connection arguments: the guest's
    /// `pull_config` reads the module's config followed by `args`, which
    /// win over the config for the same key (see [`TransportArgs`]).
    ///
    /// Errors: as `dial`, plus [`Error::ConfigNotKeyValue`] when `args` is
    /// not empty and the module's config is not `key=value`.
    pub async fn dial_with_args(
        &self,
        addr: impl Into<String>,
        args: &TransportArgs,
    ) -> Result<Connection, Error> {
        let Current { watm, .. } = self.shared.current();
        watm.require(Role::Dialer)?;
        let pulled = pulled_config(&watm, args)?;
        let target = addr.into();
        let slot = self.shared.admit(&watm, Kind::Dialed)?;
        app_connection(&watm, slot, |internal| Setup::Dial { internal, target }, "dial", pulled).await
    }

    /// Connects to `addr` through the transport with `app` as the plain side:
    /// the guest reads and writes that socket itself, with no copy through
    /// the host (what a tunnel wants: `water client` hands the accepted
    /// socket over). Returns once `_water_dial` succeeded.
    pub async fn dial_socket(&self, addr: impl Into<String>, app: TcpStream) -> Result<Tunnel, Error> {
        self.dial_socket_with_args(addr, app, &TransportArgs::new()).await
    }

    /// [`dial_socket`](Self::dial_socket) with per-connection arguments, as
    /// in [`dial_with_args`](Self::dial_with_args).
    pub async fn dial_socket_with_args(
        &self,
        addr: impl Into<String>,
        app: TcpStream,
        args: &TransportArgs,
    ) -> Result<Tunnel, Error> {
        let Current { watm, .. } = self.shared.current();
        watm.require(Role::Dialer)?;
        let pulled = pulled_config(&watm, args)?;
        // Refused while `app` is open: its peer sees the close after the line.
        let slot = admit(&self.shared, &watm, Kind::Dialed, "dial", None)?;
        let (target, internal) = (addr.into(), Stream::Tcp(Arc::new(app)));
        let links = Links::default();
        let setup = Setup::Dial { internal, target };
        let session = Session::start(&watm, slot, setup, links.cancel.clone(), label("dial"), pulled).await?;
        let done = spawn_worker(session, links.clone(), watm.inner.config.close_grace, None);
        Ok(Tunnel { links, done: Some(done) })
    }
}

/// A running connection whose plain side is a socket handed to the guest
/// (see [`Dialer::dial_socket`]). Dropping it ends the connection as
/// [`Connection`]'s drop does: the worker gets the close grace, then is
/// cancelled.
#[derive(Debug)]
pub struct Tunnel {
    links: Links,
    done: Option<Done>,
}

impl Tunnel {
    /// Waits until the connection ends by itself (both sides closed) and
    /// reports how the worker ended. A second call returns `Ok` at once.
    pub async fn wait(&mut self) -> Result<(), Error> {
        match self.done.take() {
            Some(done) => finished(done).await,
            None => Ok(()),
        }
    }

    /// Cancels the worker at once and waits for it.
    pub async fn abort(mut self) -> Result<(), Error> {
        self.links.cancel.cancel();
        self.wait().await
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.links.closing.cancel();
        }
    }
}

/// Accepts connections through a WATM (the `_water_accept` role).
///
/// A background task accepts TCP connections and runs each one's setup (the
/// guest's `_water_accept`, a handshake perhaps) as a task of its own, at
/// most [`crate::Config::max_pending_setups`] at once, so that a slow guest
/// or a peer that never speaks delays only its own connection. Set-up
/// connections wait for [`Listener::accept`] in arrival order of their
/// setup's end. Dropping the listener stops accepting and abandons the
/// setups under way.
#[derive(Debug)]
pub struct Listener {
    local: SocketAddr,
    shared: Arc<Shared>,
    ready: tokio::sync::Mutex<mpsc::Receiver<Result<(Connection, SocketAddr), Error>>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Listener {
    /// Binds a TCP listener at `addr` (port 0 picks a free one).
    pub async fn bind(watm: &Watm, addr: impl ToSocketAddrs) -> Result<Listener, Error> {
        Listener::bind_with_args(watm, addr, TransportArgs::new()).await
    }

    /// [`bind`](Self::bind), giving every accepted connection's guest these
    /// arguments after the module's config, as in
    /// [`Dialer::dial_with_args`] (a Tor bridge passes its
    /// `TOR_PT_SERVER_TRANSPORT_OPTIONS` this way). Connections are set up
    /// before [`accept`](Self::accept) is called, so the arguments belong to
    /// the listener.
    ///
    /// Errors: as `bind`, plus [`Error::ConfigNotKeyValue`], checked here.
    pub async fn bind_with_args(
        watm: &Watm,
        addr: impl ToSocketAddrs,
        args: TransportArgs,
    ) -> Result<Listener, Error> {
        watm.require(Role::Listener)?;
        pulled_config(watm, &args)?;
        Listener::from_tcp_with_args(watm, TcpListener::bind(addr).await?, args)
    }

    /// Wraps an already bound listener. Call it inside a tokio runtime: the
    /// accepting task is spawned on it.
    pub fn from_tcp(watm: &Watm, listener: TcpListener) -> Result<Listener, Error> {
        Listener::from_tcp_with_args(watm, listener, TransportArgs::new())
    }

    /// [`from_tcp`](Self::from_tcp) with arguments for every connection, as
    /// in [`bind_with_args`](Self::bind_with_args).
    pub fn from_tcp_with_args(
        watm: &Watm,
        listener: TcpListener,
        args: TransportArgs,
    ) -> Result<Listener, Error> {
        watm.require(Role::Listener)?;
        let shared = Shared::new(watm, &[Role::Listener]);
        shared.set_args(args)?;
        let local = listener.local_addr()?;
        let stop = CancellationToken::new();
        let pending = watm.inner.config.max_pending_setups.max(1);
        let (tx, rx) = mpsc::channel(pending);
        tokio::spawn(accept_loop(shared.clone(), pending, listener, tx, stop.clone()));
        Ok(Listener { local, shared, ready: tokio::sync::Mutex::new(rx), _stop: stop.drop_guard() })
    }

    /// The handle that replaces this listener's module: connections
    /// accepted later are set up with the new one, those set up keep
    /// theirs.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(&self.shared)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// The next connection whose setup (`_water_accept`, one instance per
    /// connection) has ended, with the peer's address.
    ///
    /// An error that belongs to one connection (the guest refused it,
    /// trapped, timed out) is returned for that connection only: the
    /// listener stays usable, call `accept` again. A connection refused
    /// because of [`crate::Config::max_connections`] is logged, not
    /// returned, and so is one the guest ended cleanly (`proc_exit(0)`)
    /// during its setup. After an error of the listening socket itself, every later
    /// call fails.
    ///
    /// Cancel-safe: dropping the future (in a `select!`, a timeout) loses no
    /// connection; the next call returns it.
    pub async fn accept(&self) -> Result<(Connection, SocketAddr), Error> {
        match self.ready.lock().await.recv().await {
            Some(r) => r,
            None => Err(Error::Io(io::Error::new(io::ErrorKind::NotConnected, "the listener has stopped"))),
        }
    }
}

/// The listener's background task: accepts, and starts a setup task per
/// connection while fewer than `max_pending_setups` are under way or
/// waiting to be taken.
async fn accept_loop(
    shared: Arc<Shared>,
    pending: usize,
    listener: TcpListener,
    ready: mpsc::Sender<Result<(Connection, SocketAddr), Error>>,
    stop: CancellationToken,
) {
    let setups = Arc::new(tokio::sync::Semaphore::new(pending));
    let room = || shared.accept_room(&setups);
    let accepted = accept_each(&listener, stop.cancelled(), room, |stream, peer, permit| {
        let permit = permit.expect("never closed");
        // Refused while `stream` is open: its peer sees the close after the line.
        let Some((Current { watm, pulled }, slot)) = admit_now(&shared, Kind::Accepted, "accept", peer)
        else {
            return;
        };
        let (ready, stop) = (ready.clone(), stop.clone());
        tokio::spawn(async move {
            let setup = app_connection(
                &watm,
                slot,
                |internal| Setup::Accept { internal, accepted: stream },
                "accept",
                pulled,
            );
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = setup => r,
            };
            match result {
                // The guest ended the connection during its setup, cleanly
                // (a refusal of its own): nothing to hand over, no error.
                Err(Error::Exit { code: 0, export }) => {
                    let peer = Scrubbed(peer);
                    tracing::debug!(target: "water", %peer, "the guest ended the connection in `{export}`");
                }
                r => {
                    let _ = ready.send(r.map(|conn| (conn, peer))).await;
                }
            }
            drop(permit);
        });
    })
    .await;
    if let Err(e) = accepted {
        let _ = ready.send(Err(Error::Io(e))).await;
    }
}

/// Relays connections through a WATM (the `_water_associate` role): each
/// connection accepted on the listener is joined to a new connection to
/// `remote`, the remote side carrying the transformed bytes.
#[derive(Clone)]
pub struct Relay {
    shared: Arc<Shared>,
    remote: String,
}

impl std::fmt::Debug for Relay {
    /// The merged config's length only: arguments can hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Current { watm, pulled } = self.shared.current();
        f.debug_struct("Relay")
            .field("watm", &watm)
            .field("remote", &self.remote)
            .field("pulled_config", &pulled.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl Relay {
    /// A relay to `remote` (`host:port`).
    pub fn new(watm: &Watm, remote: impl Into<String>) -> Result<Relay, Error> {
        watm.require(Role::Relay)?;
        Ok(Relay { shared: Shared::new(watm, &[Role::Relay]), remote: remote.into() })
    }

    /// The handle that replaces this relay's module while it serves (see
    /// [`Reloader`]).
    pub fn reloader(&self) -> Reloader {
        Reloader::new(&self.shared)
    }

    /// Gives every relayed connection's guest these arguments after the
    /// module's config (see [`TransportArgs`]).
    ///
    /// Errors: [`Error::ConfigNotKeyValue`], checked here once.
    pub fn with_args(self, args: TransportArgs) -> Result<Relay, Error> {
        self.shared.set_args(args)?;
        Ok(self)
    }

    /// Serves `listener` until `shutdown` completes, then drains: the
    /// listener is closed and setups under way are abandoned, connections
    /// that are set up go on until they end or `Config::drain_timeout`
    /// passes, and those still open then are cancelled (dropped after the
    /// close grace if their guest ignores it) and counted in the
    /// [`Drained`] report. Setups under way at once are bounded by
    /// `Config::max_pending_setups` (beyond it, connections wait in the
    /// kernel's backlog). Dropping the future ends every connection at once.
    ///
    /// Per-connection failures are logged (`tracing`, target `water`) and do
    /// not stop the relay. Errors: only the listener's own.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Drained> {
        serve_each(&self.shared, listener, shutdown, |stream, peer, links, setup_stop, permit| {
            let setup = Setup::Associate { accepted: stream, target: self.remote.clone() };
            let label = label("relay");
            // The relay's client is taken in as the application's own.
            let admitted = admit_now(&self.shared, Kind::Dialed, &label, peer);
            run_one(admitted, std::future::ready(Ok(setup)), label, peer, links, setup_stop, permit)
        })
        .await
    }
}

/// Serves connections through a WATM's `_water_accept` role and joins each
/// to a new connection to `upstream`, which becomes the guest's plain side:
/// the guest reads and writes that socket itself, so no byte is copied
/// through the host (a [`Listener`] hands out [`Connection`]s that an
/// application copies, which costs a copy and a hand-over between tasks per
/// chunk: ~10–20 % of a Shadowsocks server's throughput, BENCHMARKS.md).
/// What `water server` runs.
///
/// The upstream connection is made when the guest first reads, writes or
/// waits on its plain side, which a server's guest does only once its
/// handshake has taken the client in: a prober's connection (silence,
/// garbage, a wrong key) causes no upstream connection, and an upstream
/// that is down changes nothing a prober sees. A guest that touches its
/// plain side at once (a foreign one, say) gets the upstream at once. If
/// the upstream refuses or does not answer within `Config::connect_timeout`,
/// the guest's next use of the plain side fails with that error, which
/// ends the connection as [`Error::Io`].
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
    upstream: String,
}

impl std::fmt::Debug for Forwarder {
    /// The merged config's length only: arguments can hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Current { watm, pulled } = self.shared.current();
        f.debug_struct("Forwarder")
            .field("watm", &watm)
            .field("upstream", &self.upstream)
            .field("pulled_config", &pulled.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl Forwarder {
    /// A forwarder to `upstream` (`host:port`); [`Error::RoleNotSupported`]
    /// if the module has no `_water_accept`.
    pub fn new(watm: &Watm, upstream: impl Into<String>) -> Result<Forwarder, Error> {
        watm.require(Role::Listener)?;
        Ok(Forwarder { shared: Shared::new(watm, &[Role::Listener]), upstream: upstream.into() })
    }

    /// The handle that replaces this forwarder's module while it serves
    /// (see [`Reloader`]). A clone of the forwarder shares it.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(&self.shared)
    }

    /// Gives every connection's guest these arguments after the module's
    /// config (see [`TransportArgs`]). Errors: [`Error::ConfigNotKeyValue`].
    pub fn with_args(self, args: TransportArgs) -> Result<Forwarder, Error> {
        self.shared.set_args(args)?;
        Ok(self)
    }

    /// Serves `listener` until `shutdown` completes, then drains, as
    /// [`Relay::serve`].
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<Drained> {
        serve_each(&self.shared, listener, shutdown, |stream, peer, links, setup_stop, permit| {
            let limit = self.shared.current().watm.inner.config.connect_timeout;
            let upstream = self.upstream.clone();
            // Dialed when the guest first uses its plain side, which it does
            // once its handshake has taken the client in: a prober causes
            // no upstream connection.
            let connect = async move {
                match tokio::time::timeout(limit, TcpStream::connect(upstream.as_str())).await {
                    Ok(Ok(up)) => Ok(up),
                    Ok(Err(e)) => Err(io::Error::new(e.kind(), format!("upstream {upstream}: {e}"))),
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("upstream {upstream}: no connection within {limit:?}"),
                    )),
                }
            };
            let internal = Stream::Lazy(LazyTcp::new(connect));
            let setup = std::future::ready(Ok(Setup::Accept { internal, accepted: stream }));
            let label = label("forward");
            let admitted = admit_now(&self.shared, Kind::Accepted, &label, peer);
            run_one(admitted, setup, label, peer, links, setup_stop, permit)
        })
        .await
    }
}

/// How a [`Relay::serve`] or [`Forwarder::serve`] ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Connections that ended by themselves during the drain.
    pub finished: usize,
    /// Connections still open when `Config::drain_timeout` passed, and so
    /// cancelled.
    pub cut: usize,
}

/// Accepts on `listener` until `shutdown`, running `one` per connection as
/// a task (with a permit of `max_pending_setups`, taken before the accept),
/// then drains as [`Relay::serve`] says. Each task gets its `Links` (its
/// cancel token a child of the one that cuts at the drain's end) and a
/// token that stops its setup at shutdown. Errors: only the listener's
/// own.
async fn serve_each<F, Fut>(
    shared: &Shared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    one: F,
) -> io::Result<Drained>
where
    F: Fn(TcpStream, SocketAddr, Links, CancellationToken, OwnedSemaphorePermit) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The loop's own limits are the module's when serving starts.
    let config = shared.current().watm.inner.config.clone();
    let setups = Arc::new(Semaphore::new(config.max_pending_setups.max(1)));
    let (setup_stop, cut) = (CancellationToken::new(), CancellationToken::new());
    let mut tasks = JoinSet::new();
    let room = || shared.accept_room(&setups);
    let result = accept_each(&listener, shutdown, room, |stream, peer, permit| {
        // Ended connections leave the set as new ones come.
        while tasks.try_join_next().is_some() {}
        let links = Links { closing: CancellationToken::new(), cancel: cut.child_token() };
        tasks.spawn(one(stream, peer, links, setup_stop.child_token(), permit.expect("never closed")));
    })
    .await;
    // New connections are refused from here on; setups under way end.
    drop(listener);
    setup_stop.cancel();
    // Connections that ended before the shutdown but were not yet taken
    // from the set are not the drain's to count.
    while tasks.try_join_next().is_some() {}
    let mut drained = Drained::default();
    let drain = tokio::time::sleep(config.drain_timeout);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(_) => drained.finished += 1,
                None => break,
            },
            () = &mut drain => {
                // Those that ended as the drain did are finished, not cut.
                while tasks.try_join_next().is_some() {
                    drained.finished += 1;
                }
                drained.cut = tasks.len();
                cut.cancel();
                // Each ends within the close grace of its cancel (a worker
                // that ignores it is dropped then).
                while tasks.join_next().await.is_some() {}
                break;
            }
        }
    }
    result.map(|()| drained)
}

/// Takes one of the module's `max_connections` slots for a connection the
/// caller still holds; a refusal is logged first (rate-limited, the peer
/// scrubbed), so that a peer who sees the close finds the line written.
fn admit(
    shared: &Shared,
    watm: &Watm,
    kind: Kind,
    conn: &str,
    peer: Option<SocketAddr>,
) -> Result<Slot, Error> {
    shared.admit(watm, kind).inspect_err(|e| {
        let peer = peer.map(|p| Scrubbed(p).to_string()).unwrap_or_default();
        logging::connection_warning(
            e.kind_name(),
            || tracing::warn!(target: "water", conn, peer, "connection refused: {e}"),
        );
    })
}

/// The module current for a connection accepted now, and its slot: taken
/// in the accept loop itself, so that slots go in the order connections
/// arrived (a task's first poll comes in no set order, and a silent
/// connection admitted after a real client would shed it as the older
/// one), and before the setup runs (a forwarder's dials its upstream), so a
/// refused connection costs nothing more. `None` when refused (logged).
fn admit_now(shared: &Shared, kind: Kind, label: &str, peer: SocketAddr) -> Option<(Current, Slot)> {
    let current = shared.current();
    let slot = admit(shared, &current.watm, kind, label, Some(peer)).ok()?;
    Some((current, slot))
}

/// One relayed or forwarded connection: the setup (`setup` makes its
/// `Setup`), then the worker to its end, logged. Shutdown does not wait for
/// a setup (a stuck one lasts the setup timeout); the setup permit is
/// returned once the worker runs.
#[allow(clippy::too_many_arguments)]
async fn run_one(
    admitted: Option<(Current, Slot)>,
    setup: impl Future<Output = Result<Setup, Error>>,
    label: String,
    peer: SocketAddr,
    links: Links,
    setup_stop: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    // Refused: the socket (in `setup`) closes now, after the log line.
    let Some((Current { watm, pulled }, slot)) = admitted else { return };
    let started = tokio::select! {
        r = async { Session::start(&watm, slot, setup.await?, links.cancel.clone(), label.clone(), pulled).await } => r,
        () = setup_stop.cancelled() => {
            tracing::debug!(target: "water", conn = %label, peer = %Scrubbed(peer), "stopped during setup");
            return;
        }
    };
    drop(permit);
    let result = match started {
        Ok(session) => {
            let done = spawn_worker(session, links, watm.inner.config.close_grace, None);
            finished(done).await
        }
        Err(e) => Err(e),
    };
    match result {
        // proc_exit(0) in a setup call is a clean end too.
        Ok(()) | Err(Error::Exit { code: 0, .. }) => {
            tracing::debug!(target: "water", conn = %label, peer = %Scrubbed(peer), "connection ended")
        }
        Err(e) => logging::connection_warning(
            e.kind_name(),
            || tracing::warn!(target: "water", conn = %label, peer = %Scrubbed(peer), error = %e, "connection failed"),
        ),
    }
}
