//! Every built reference guest is a well-formed WATM v0 module, and its v1
//! build a well-formed v1 module, within the size and memory targets,
//! checked with wasmtime against the ABI tables.

use wasmtime::{Engine, ExternType, FuncType, Module, ValType};
use water_abi::{FuncSig, v0, v1};
use watm_artifacts::{GUESTS, GUESTS_V1};

/// Size and initial-memory limits per guest: (name, bytes, 64 KiB pages).
/// The reference templates stay small; `ss` carries four AEADs built for
/// speed (opt-level 3), which the issue budgets at 160 KiB and 8 pages.
const LIMITS: &[(&str, usize, u64)] = &[
    ("plain", 48 * 1024, 4),
    ("reverse", 48 * 1024, 4),
    ("xor", 48 * 1024, 4),
    ("ss", 160 * 1024, 8),
    ("obfs4", 256 * 1024, 8),
];

fn limits(name: &str) -> (usize, u64) {
    let &(_, bytes, pages) =
        LIMITS.iter().find(|(n, ..)| *n == name).unwrap_or_else(|| panic!("{name}: no size limit in LIMITS"));
    (bytes, pages)
}

fn matches(ty: &FuncType, sig: &FuncSig) -> bool {
    let conv = |t: &water_abi::ValType| match t {
        water_abi::ValType::I32 => ValType::I32,
    };
    let same = |have: &mut dyn ExactSizeIterator<Item = ValType>, want: &[water_abi::ValType]| {
        have.len() == want.len() && have.zip(want).all(|(h, w)| ValType::eq(&h, &conv(w)))
    };
    same(&mut ty.params(), sig.params) && same(&mut ty.results(), sig.results)
}

#[test]
fn every_guest_is_built() {
    let names: Vec<_> = GUESTS.iter().map(|g| g.name).collect();
    assert_eq!(names, ["obfs4", "plain", "reverse", "ss", "xor"]);
    let v1: Vec<_> = GUESTS_V1.iter().map(|g| g.name).collect();
    assert_eq!(v1, names, "every guest has a v1 build");
    for (a, b) in GUESTS.iter().zip(GUESTS_V1) {
        assert_ne!(a.wasm, b.wasm, "{}: the v1 build is the v0 module", a.name);
    }
}

/// A v1 build exports v1's set with exact signatures (every role but the
/// guest-named dialer, which a byte transform has no address for), our
/// replay-filter extension, and nothing of v0; and it imports only v1's
/// `env` functions: water-go's v1 host refuses a module that imports
/// `env.host_dial` or `env.pull_config`.
#[test]
fn every_v1_build_has_exactly_the_v1_exports_and_imports() {
    let engine = Engine::default();
    for guest in GUESTS_V1 {
        let module = Module::new(&engine, guest.bytes()).unwrap();
        let want = [v1::INIT, v1::CTRLPIPE, v1::START, v1::DIAL, v1::ACCEPT, v1::ASSOCIATE];
        for sig in want.iter().chain(v0::EXTENSION_EXPORTS) {
            match module.get_export(sig.name) {
                Some(ExternType::Func(ty)) => {
                    assert!(matches(&ty, sig), "{}: {} is {ty:?}, want {sig}", guest.name, sig.name)
                }
                other => panic!("{}: export {} is {other:?}, want {sig}", guest.name, sig.name),
            }
        }
        assert!(module.get_export(v1::DIAL_FIXED.name).is_none(), "{}", guest.name);
        for sig in v0::EXPORTS {
            assert!(
                module.get_export(sig.name).is_none(),
                "{}: v1 build exports v0's {}",
                guest.name,
                sig.name
            );
        }
        for import in module.imports() {
            match import.module() {
                v1::IMPORT_MODULE => {
                    let sig = v1::import_sig(import.name()).unwrap_or_else(|| {
                        panic!("{}: env import {} is not v1's", guest.name, import.name())
                    });
                    let ExternType::Func(ty) = import.ty() else {
                        panic!("{}: {} is not a function", guest.name, sig)
                    };
                    assert!(matches(&ty, sig), "{}: import {} is {ty:?}", guest.name, sig);
                }
                v0::WASI_MODULE => {}
                other => panic!("{}: import from module {other:?}", guest.name),
            }
        }
    }
}

#[test]
fn every_guest_exports_the_v0_set_with_exact_signatures() {
    let engine = Engine::default();
    for guest in GUESTS {
        let module = Module::new(&engine, guest.bytes()).unwrap();
        assert!(module.get_export(v0::VERSION_EXPORT).is_some(), "{}: no {}", guest.name, v0::VERSION_EXPORT);
        // Our extensions too: every SDK guest exports them.
        for sig in v0::EXPORTS.iter().chain(v0::EXTENSION_EXPORTS) {
            match module.get_export(sig.name) {
                Some(ExternType::Func(ty)) => {
                    assert!(matches(&ty, sig), "{}: {} is {ty:?}, want {sig}", guest.name, sig.name)
                }
                other => panic!("{}: export {} is {other:?}, want {sig}", guest.name, sig.name),
            }
        }
        assert!(
            matches!(module.get_export("memory"), Some(ExternType::Memory(_))),
            "{}: no memory",
            guest.name
        );
    }
}

#[test]
fn every_guest_imports_only_env_and_wasi() {
    let engine = Engine::default();
    for guest in GUESTS {
        let module = Module::new(&engine, guest.bytes()).unwrap();
        for import in module.imports() {
            match import.module() {
                v0::IMPORT_MODULE => {
                    let sig = v0::import_sig(import.name())
                        .unwrap_or_else(|| panic!("{}: unknown env import {}", guest.name, import.name()));
                    let ExternType::Func(ty) = import.ty() else {
                        panic!("{}: {} is not a function", guest.name, sig)
                    };
                    assert!(matches(&ty, sig), "{}: import {} is {ty:?}", guest.name, sig);
                }
                v0::WASI_MODULE => {}
                other => panic!("{}: import from module {other:?}", guest.name),
            }
        }
    }
}

#[test]
fn every_guest_is_within_size_and_memory_targets() {
    let engine = Engine::default();
    #[allow(non_snake_case)]
    for guest in GUESTS.iter().chain(GUESTS_V1) {
        let (MAX_BYTES, MAX_INITIAL_PAGES) = limits(guest.name);
        let bytes = guest.bytes();
        assert!(bytes.len() <= MAX_BYTES, "{}: {} bytes > {MAX_BYTES}", guest.name, bytes.len());
        let module = Module::new(&engine, &bytes).unwrap();
        let Some(ExternType::Memory(mem)) = module.get_export("memory") else {
            panic!("{}: no memory", guest.name)
        };
        assert!(
            mem.minimum() <= MAX_INITIAL_PAGES,
            "{}: {} initial pages > {MAX_INITIAL_PAGES}",
            guest.name,
            mem.minimum()
        );
    }
}
