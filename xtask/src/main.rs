//! `cargo xtask <task>`: the project's chores, in Rust.
//!
//! Tasks:
//! - `build-guests`: build every crate under `guests/` for `wasm32-wasip1`
//!   (profile `watm`) and copy each module to `target/watm/<name>.wasm`
//!   (its WATM v1 build as `<name>.v1.wasm`; test-only guests from
//!   `test-guests/` as `test-<name>.wasm`).
//! - `fuzz [--seconds N]`: the host's bounded fuzz tests, N seconds each
//!   (default 60; `cargo test` gives them a few).
//!
//! `main` only dispatches; each task has its own module. Commands run from
//! the workspace root.

mod build_guests;
mod fuzz;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>\n\ntasks:\n  build-guests          build guests/* for wasm32-wasip1 into target/watm/\n  fuzz [--seconds N]    run the host's fuzz tests for N seconds each (default 60)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = project_root();
    let result = match args.first().map(String::as_str) {
        Some("build-guests") if args.len() == 1 => build_guests::run(&root).map_err(|e| e.to_string()),
        Some("fuzz") => fuzz::run(&root, &args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}
