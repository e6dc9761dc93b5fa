//! `cargo xtask build-guests`: the guests, for people (the tests build their
//! own copies through `watm-artifacts`, with the same code).

#[path = "../../crates/watm-artifacts/guest_builder.rs"]
mod guest_builder;

use std::path::Path;

pub fn run(root: &Path) -> Result<(), guest_builder::BuildError> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(Into::into).unwrap_or_else(|| root.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = guest_builder::build(&cargo, "rustc", root, &target.join("watm-build"))?;
    let out = target.join("watm");
    std::fs::create_dir_all(&out)
        .map_err(|e| guest_builder::BuildError(format!("cannot create {}: {e}", out.display())))?;
    for guest in built.into_iter().filter(|g| !g.test_only) {
        let dest = out.join(format!("{}.wasm", guest.name));
        std::fs::copy(&guest.path, &dest)
            .map_err(|e| guest_builder::BuildError(format!("cannot copy to {}: {e}", dest.display())))?;
        let size = std::fs::metadata(&dest).map(|m| m.len()).unwrap_or(0);
        println!("{:<10} {:>7} bytes  {}", guest.name, size, dest.display());
    }
    Ok(())
}
