//! `cargo xtask build-guests`: the guests, for people (the tests build their
//! own copies through `watm-artifacts`, with the same code).

#[path = "../../crates/watm-artifacts/guest_builder.rs"]
mod guest_builder;

use std::path::Path;

pub fn run(root: &Path) -> Result<(), guest_builder::BuildError> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(Into::into).unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut say = |line: &str| eprintln!("{line}");
    let built = guest_builder::build(
        &cargo,
        "rustc",
        root,
        &target.join("watm-build"),
        &[guest_builder::Kind::Reference, guest_builder::Kind::ReferenceV1, guest_builder::Kind::Test],
        &mut say,
    )?;
    let out = target.join("watm");
    std::fs::create_dir_all(&out)
        .map_err(|e| guest_builder::BuildError(format!("cannot create {}: {e}", out.display())))?;
    for guest in built {
        // Test-only guests (test-guests/) as test-<name>.wasm, to try by hand.
        let file = match guest.kind {
            guest_builder::Kind::Reference => format!("{}.wasm", guest.name),
            // The same transport for v1 hosts (water-go's v1, Lantern).
            guest_builder::Kind::ReferenceV1 => format!("{}.v1.wasm", guest.name),
            guest_builder::Kind::Test => format!("test-{}.wasm", guest.name),
        };
        let dest = out.join(file);
        std::fs::copy(&guest.path, &dest)
            .map_err(|e| guest_builder::BuildError(format!("cannot copy to {}: {e}", dest.display())))?;
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        println!("{:<12} {:>7} bytes  {}", guest.name, size, dest.display());
    }
    Ok(())
}
