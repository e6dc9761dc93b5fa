//! Builds the reference guests so that tests need no manual pre-step, and
//! writes their paths into `$OUT_DIR/guests.rs`.

#[path = "guest_builder.rs"]
mod guest_builder;

use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.join("../..").canonicalize().expect("workspace root");
    for dir in [
        "guests",
        "test-guests",
        "crates/water-guest",
        "crates/watm-aead",
        "crates/water-abi",
        ".cargo/config.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=guest_builder.rs");
    // The nested build gets a target directory of its own: the outer build
    // holds the lock on the usual one.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("watm-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let kinds = [guest_builder::Kind::Reference, guest_builder::Kind::ReferenceV1, guest_builder::Kind::Test];
    let mut say = |line: &str| println!("cargo:warning={line}");
    let built = match guest_builder::build(&cargo, &rustc, &root, &target_dir, &kinds, &mut say) {
        Ok(built) => built,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut code = String::new();
    for (kind, list, what) in [
        (
            guest_builder::Kind::Reference,
            "GUESTS",
            "Every guest of `guests/`, by name: the built-in transports.",
        ),
        (
            guest_builder::Kind::Test,
            "TEST_GUESTS",
            "Every guest of `test-guests/`: for tests only, never built in.",
        ),
        (
            guest_builder::Kind::ReferenceV1,
            "GUESTS_V1",
            "Every guest of `guests/` built as WATM v1 (feature `v1`), by name.",
        ),
    ] {
        let of_kind: Vec<_> = built.iter().filter(|b| b.kind == kind).collect();
        code += &format!("/// {what}\npub const {list}: &[Guest] = &[\n");
        for b in &of_kind {
            let path = b.path.display().to_string();
            code += &format!(
                "    Guest {{ name: {:?}, path: {path:?}, wasm: include_bytes!({path:?}) }},\n",
                b.name
            );
        }
        code += "];\n";
        for (i, b) in of_kind.iter().enumerate() {
            let (suffix, what) =
                if kind == guest_builder::Kind::ReferenceV1 { ("_V1", " built as v1") } else { ("", "") };
            code += &format!(
                "/// The `{0}` guest{what}.\npub const {1}{suffix}: Guest = {list}[{i}];\n",
                b.name,
                b.name.to_uppercase().replace('-', "_"),
            );
        }
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("guests.rs");
    std::fs::write(out, code).expect("write guests.rs");
}
