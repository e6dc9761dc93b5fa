//! `water`: WATER transports from the command line.
//!
//! `main` parses arguments and dispatches; one module per command family:
//! - `transport`: resolving `T` (a built-in name or a `.wasm` path) and the
//!   config.
//! - `tunnel`: `client`, `server`, `relay`, and their shutdown.
//! - `check`: validation plus a loopback self-test of every exported role.
//! - `demo`: the whole chain on loopback, with a table of figures.
//!
//! Long-running commands print exactly one line, `listening on <ip:port>`,
//! to stdout; everything else goes to stderr. Errors are one line,
//! `error: ...`, and a non-zero exit.

mod bench;
mod check;
mod demo;
mod loopback;
mod scale;
mod transport;
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
}

#[derive(Debug, clap::Args)]
struct TransportArgs {
    /// Built-in transport (plain, xor, reverse) or path to a .wasm file.
    #[arg(long, short = 't')]
    transport: String,
    /// File whose bytes the transport gets from pull_config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Most connections at once; past it new ones are closed at once, with
    /// a log line (default: no limit).
    #[arg(long)]
    max_connections: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept plain TCP on --listen; carry each connection through the
    /// transport (dialer role) to --remote.
    Client {
        #[command(flatten)]
        t: TransportArgs,
        #[arg(long)]
        listen: String,
        #[arg(long)]
        remote: String,
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
        /// (p99) beside this many spinning guests, against the same alone.
        #[arg(long)]
        fairness: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        match cli.command {
            Command::Client { t, listen, remote } => {
                tunnel::client(&t.transport, t.config.as_deref(), t.max_connections, &listen, remote).await
            }
            Command::Server { t, listen, forward } => {
                tunnel::server(&t.transport, t.config.as_deref(), t.max_connections, &listen, forward).await
            }
            Command::Relay { t, listen, remote } => {
                tunnel::relay(&t.transport, t.config.as_deref(), t.max_connections, &listen, remote).await
            }
            Command::Check { transport, config } => check::run(&transport, config.as_deref()).await,
            Command::Demo => demo::run().await,
            Command::Echo { listen } => tunnel::echo(&listen).await,
            Command::Bench { transport, config, connections, seconds, json, scale, fairness } => {
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
