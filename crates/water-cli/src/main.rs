//! `water`: WATER transports from the command line.
//!
//! `main` parses arguments and dispatches; one module per command family:
//! - `transport`: resolving `T` (a built-in name or a `.wasm` path) and the
//!   config.
//! - `tunnel`: `client`, `server`, `relay`, and their shutdown.
//! - `socks`: the SOCKS5 front of `client --socks5` (and of `pt`).
//! - `pt`, `extorport`: `water pt`, Tor's pluggable-transport managed mode,
//!   and the Extended ORPort client it forwards through.
//! - `check`: validation plus a loopback self-test of every exported role.
//! - `demo`: the whole chain on loopback, with a table of figures.
//! - `metrics`: `--metrics ADDR`, the library's counters as Prometheus text.
//!
//! Long-running commands print exactly one line, `listening on <ip:port>`,
//! to stdout; everything else goes to stderr. Errors are one line,
//! `error: ...`, and a non-zero exit.

mod bench;
mod check;
mod demo;
mod extorport;
mod loopback;
mod metrics;
mod pt;
mod scale;
mod soak;
mod socks;
mod transport;
mod trust;
mod tunnel;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "water",
    version,
    about = "Run network transports written as WebAssembly modules (WATM v0)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Write clients' addresses and SOCKS targets into logs (escaped). By
    /// default they read `[scrubbed]`: a bridge's log must not list its
    /// users. For debugging only.
    #[arg(long, global = true)]
    unsafe_logging: bool,
    /// Keep transports' compiled code in DIR and reuse it at the next start
    /// (off by default: a shared DIR would be a trust decision). DIR must
    /// be owned by this user and writable by nobody else, or it is not used.
    #[arg(long, global = true, value_name = "DIR")]
    compile_cache: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct TransportArgs {
    /// Built-in transport (plain, xor, reverse) or path to a .wasm file.
    #[arg(long, short = 't')]
    transport: String,
    /// File whose bytes the transport gets from pull_config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Refuse the module (at start and at reload) unless its SHA-256 is
    /// this (64 hex digits; `sha256sum` prints it).
    #[arg(long, value_name = "HEX", value_parser = trust::parse_sha256)]
    transport_sha256: Option<[u8; 32]>,
    /// Refuse a module file (at start and at reload) without a minisign
    /// signature `<module>.minisig` by this public key. Repeat for several
    /// keys (a rotation): any one will do. Built-in transports are part of
    /// the binary and need none.
    #[arg(long, value_name = "FILE")]
    trusted_key: Vec<PathBuf>,
    /// Listen with SO_REUSEPORT: several `water` processes started with
    /// it share the port, and the kernel spreads connections among them.
    #[arg(long)]
    reuse_port: bool,
    #[command(flatten)]
    metrics: MetricsArg,
    #[command(flatten)]
    limits: LimitArgs,
}

/// `--metrics`, for every command that serves.
#[derive(Debug, Clone, clap::Args)]
struct MetricsArg {
    /// Serve Prometheus text on http://ADDR/metrics: connections, bytes,
    /// setup times, throttled guests, pool slots, reloads. Bind it to
    /// loopback or a management network, never the internet.
    #[arg(long = "metrics", value_name = "ADDR")]
    addr: Option<String>,
}

/// The limits of every command that serves (water pt's too).
#[derive(Debug, Clone, Copy, clap::Args)]
struct LimitArgs {
    /// Most connections at once. When full, a new connection takes the
    /// place of the oldest one whose handshake has not ended (closed as a
    /// failed handshake); only when every one has is it closed at once,
    /// with a log line. Default: from the open-file limit (raised to its
    /// hard maximum at start), with headroom, so the process never runs
    /// out of fds.
    #[arg(long)]
    max_connections: Option<usize>,
    /// A server's connection whose guest has not taken the client in (no
    /// byte through to the upstream) this many seconds after setup, plus a
    /// random part of up to as much again, is closed as a failed handshake
    /// (default 60, as shadowsocks-libev; 0 turns it off).
    #[arg(long, value_name = "SECONDS", value_parser = orphan_seconds)]
    handshake_timeout: Option<std::time::Duration>,
    /// Cancel a connection through which no byte has moved for this many
    /// seconds, whatever its guest does (default: none).
    #[arg(long, value_name = "SECONDS", value_parser = idle_seconds)]
    idle_timeout: Option<std::time::Duration>,
    /// Once a connection's side has closed (or half-closed) and the guest
    /// has not passed that on, cancel it when no byte has moved for this
    /// many seconds (default 60; 0 turns it off).
    #[arg(long, value_name = "SECONDS", value_parser = orphan_seconds)]
    orphan_timeout: Option<std::time::Duration>,
    #[command(flatten)]
    drain: Drain,
}

/// `--drain`, for every command that serves.
#[derive(Debug, Clone, Copy, clap::Args)]
struct Drain {
    /// After SIGINT or SIGTERM, stop accepting and let open connections go
    /// on for at most this many seconds; then cut the rest, and report how
    /// many. A second signal cuts them at once. (water pt: after its first
    /// SIGINT; SIGTERM ends it at once, per pt-spec.)
    #[arg(long = "drain", value_name = "SECONDS", value_parser = drain_seconds, default_value = "10")]
    seconds: std::time::Duration,
}

fn drain_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => {
            Ok(std::time::Duration::from_secs_f64(secs))
        }
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

impl TransportArgs {
    fn limits(&self) -> tunnel::Limits {
        self.limits.limits()
    }

    /// The transport as a re-readable source (SIGHUP reloads it).
    fn source(&self) -> anyhow::Result<transport::Source> {
        let keys =
            self.trusted_key.iter().map(|k| trust::TrustedKey::from_file(k)).collect::<Result<_, _>>()?;
        Ok(transport::Source {
            transport: self.transport.clone(),
            config: self.config.clone(),
            trust: trust::Trust { sha256: self.transport_sha256, keys },
            library: tunnel::library_config(self.limits(), 1).metrics_label(&metrics::label(&self.transport)),
        })
    }

    fn listen(&self, addr: String) -> tunnel::Listen {
        tunnel::Listen { addr, reuse_port: self.reuse_port }
    }
}

impl LimitArgs {
    fn limits(&self) -> tunnel::Limits {
        tunnel::Limits {
            max_connections: self.max_connections,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            orphan_timeout: self.orphan_timeout,
            drain: self.drain.seconds,
        }
    }
}

/// `--orphan-timeout`: as `--idle-timeout`, and 0 (off).
fn orphan_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(std::time::Duration::ZERO),
        _ => idle_seconds(s),
    }
}

fn idle_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
            Ok(std::time::Duration::from_secs_f64(secs))
        }
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept plain TCP on --listen; carry each connection through the
    /// transport (dialer role) to --remote. With --socks5, accept SOCKS5
    /// instead: without --remote the SOCKS target is what the transport
    /// dials and the username/password are the connection's transport
    /// arguments (k=v;k=v, Tor's convention); with --remote, that is
    /// dialed and the guest gets the target as argument target=host:port.
    Client {
        #[command(flatten)]
        t: TransportArgs,
        #[arg(long)]
        listen: String,
        #[arg(long, required_unless_present = "socks5")]
        remote: Option<String>,
        /// Serve SOCKS5 (RFC 1928 CONNECT; no auth or RFC 1929
        /// username/password) on --listen.
        #[arg(long)]
        socks5: bool,
    },
    /// Accept transport connections on --listen (listener role); forward each
    /// decoded stream to --forward over plain TCP.
    Server {
        #[command(flatten)]
        t: TransportArgs,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        forward: String,
    },
    /// The relay role: join each plain connection on --listen to a transport
    /// connection to --remote.
    Relay {
        #[command(flatten)]
        t: TransportArgs,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        remote: String,
    },
    /// Run as a Tor pluggable transport (managed mode, pt-spec version 1):
    /// tor starts it from a ClientTransportPlugin or ServerTransportPlugin
    /// line and configures it through TOR_PT_* environment variables;
    /// answers go to stdout as PT protocol lines, logs to water-pt.log in
    /// TOR_PT_STATE_LOCATION. Built-in transports by name; others with
    /// --transport.
    #[command(after_help = "Example torrc lines (client, then bridge):\n  \
        ClientTransportPlugin plain exec /usr/local/bin/water pt\n  \
        Bridge plain 192.0.2.1:443 <FINGERPRINT>\n  \
        ServerTransportPlugin mine exec /usr/local/bin/water pt --transport mine=/etc/water/mine.wasm\n  \
        ServerTransportListenAddr mine 0.0.0.0:443")]
    Pt {
        /// A transport from a file: NAME=PATH.wasm (repeatable); NAME is
        /// what tor's lines call it.
        #[arg(long = "transport", short = 't', value_name = "NAME=PATH")]
        transports: Vec<String>,
        /// The config file of transport NAME (what its pull_config reads
        /// before the bridge line's or ServerTransportOptions' arguments);
        /// repeatable.
        #[arg(long = "config", value_name = "NAME=FILE")]
        configs: Vec<String>,
        /// Refuse transport NAME's module (at start and on SIGHUP) unless
        /// its SHA-256 is HEX.
        #[arg(long = "transport-sha256", value_name = "NAME=HEX")]
        sha256: Vec<String>,
        /// Refuse a module file without a minisign signature
        /// `<module>.minisig` by this key (repeat for several; built-ins
        /// need none).
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
        /// One endpoint for every transport of the process.
        #[command(flatten)]
        metrics: MetricsArg,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Validate a transport and self-test every role it exports on loopback.
    Check {
        /// Built-in transport or path to a .wasm file.
        transport: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run echo service, server and client with the built-in xor on loopback,
    /// push a few MiB through and print the figures.
    Demo,
    /// An echo service (for `bench --scale`, which needs it in a process of
    /// its own).
    #[command(hide = true)]
    Echo {
        #[arg(long)]
        listen: String,
    },
    /// Measure throughput, round trip, setup and concurrency on loopback,
    /// each next to a native baseline from the same run, with the ratio.
    Bench {
        /// Built-in transport or path to a .wasm file.
        #[arg(long, short = 't', default_value = "plain")]
        transport: String,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Connections for the aggregate-throughput figure.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Rough total time to spend measuring.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// Also hold this many connections at once through a `water server`
        /// child (plain or xor), reporting its peak RSS and fds.
        #[arg(long)]
        scale: Option<usize>,
        /// Also measure the transport's throughput and 64-byte round trip
        /// (median, p99) beside this many spinning guests, then this many
        /// busy movers (spinning, a byte written now and then), against
        /// the same alone.
        #[arg(long)]
        fairness: Option<usize>,
        /// Instead of the benchmarks: hold --connections healthy connections
        /// with churn beside a stream of hostile guests for this many
        /// seconds, printing RSS and open fds once a second.
        #[arg(long, value_name = "SECONDS")]
        soak: Option<f64>,
        /// Instead of the benchmarks: the shape of Lantern's published
        /// benchmark (1 KiB echo per iteration, 4-byte ping-pong, setup
        /// time, CPU and memory per connection) through the transport's
        /// client and server roles, beside raw TCP and native forwarders.
        #[arg(long, conflicts_with_all = ["scale", "fairness", "soak"])]
        lantern: bool,
        /// With --lantern (implied): against shadowsocks-libev, Lantern's own
        /// paths: raw TCP, ss-tunnel → ss-server, and water::Dialer →
        /// ss-server (-t ss; --config gives method= and password=, else
        /// chacha20-ietf-poly1305 with a random password).
        #[arg(long, conflicts_with_all = ["scale", "fairness", "soak"])]
        libev: bool,
        /// With --lantern: connections held open at once for the memory
        /// per connection.
        #[arg(long, default_value_t = 1000)]
        hold: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    water::logging::set_unsafe_logging(cli.unsafe_logging);
    transport::set_compile_cache(cli.compile_cache);
    // The PT logs to a file in its state directory, never to stderr.
    let command = match cli.command {
        Command::Pt { transports, configs, sha256, trusted_keys, metrics, limits } => {
            let trust = pt::TrustArgs { sha256, keys: trusted_keys };
            return pt::main(transports, configs, trust, limits.limits(), metrics.addr);
        }
        command => command,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WATER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&e.into()),
    };
    let result = runtime.block_on(async {
        if let Command::Client { t, .. } | Command::Server { t, .. } | Command::Relay { t, .. } = &command
            && let Some(addr) = &t.metrics.addr
        {
            metrics::serve(addr).await?;
        }
        match command {
            Command::Client { t, listen, remote, socks5: false } => {
                let remote = remote.expect("clap requires --remote without --socks5");
                tunnel::client(t.source()?, t.limits(), &t.listen(listen), remote).await
            }
            Command::Client { t, listen, remote, socks5: true } => {
                let mode = remote.map_or(socks::Mode::Bridge, socks::Mode::Proxy);
                tunnel::socks_client(t.source()?, t.limits(), &t.listen(listen), mode).await
            }
            Command::Server { t, listen, forward } => {
                tunnel::server(t.source()?, t.limits(), &t.listen(listen), forward).await
            }
            Command::Relay { t, listen, remote } => {
                tunnel::relay(t.source()?, t.limits(), &t.listen(listen), remote).await
            }
            Command::Check { transport, config } => check::run(&transport, config.as_deref()).await,
            Command::Demo => demo::run().await,
            Command::Pt { .. } => unreachable!("dispatched before the runtime"),
            Command::Echo { listen } => tunnel::echo(&listen).await,
            Command::Bench { transport, config, connections, soak: Some(soak), .. } => {
                soak::run(&transport, config.as_deref(), soak, connections).await
            }
            Command::Bench { transport, config, seconds, json, hold, lantern, libev, soak: None, .. }
                if lantern || libev =>
            {
                bench::lantern::run(bench::lantern::Options {
                    transport: &transport,
                    config: config.as_deref(),
                    seconds,
                    json,
                    hold,
                    libev,
                })
                .await
            }
            Command::Bench {
                transport,
                config,
                connections,
                seconds,
                json,
                scale,
                fairness,
                soak: None,
                ..
            } => {
                bench::run(bench::Options {
                    transport: &transport,
                    config: config.as_deref(),
                    connections,
                    seconds,
                    json,
                    scale,
                    fairness,
                })
                .await
            }
        }
    });
    // Workers still draining after shutdown do not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    water::logging::flush_warnings();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    // One line: the causes joined.
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
