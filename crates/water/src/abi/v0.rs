//! WATM v0: the `env` imports. (Its exports' names are in [`super::Names`];
//! the life of an instance is the session's, shared by every ABI.)

use wasmtime::{Caller, Linker};
use water_abi::{status, v0 as abi};

use crate::session::{Ctx, config_fd, dial_app_target, hand_over_accepted};

/// Links the v0 `env` imports.
pub fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::HOST_DIAL.name,
        |mut caller: Caller<'_, Ctx>, (): ()| {
            Box::new(async move { Ok(status::encode(dial_app_target(&mut caller).await)) })
        },
    )?;
    linker.func_wrap(abi::IMPORT_MODULE, abi::HOST_ACCEPT.name, |mut caller: Caller<'_, Ctx>| -> i32 {
        status::encode(hand_over_accepted(caller.data_mut()))
    })?;
    linker.func_wrap(abi::IMPORT_MODULE, abi::PULL_CONFIG.name, |mut caller: Caller<'_, Ctx>| -> i32 {
        status::encode(config_fd(caller.data_mut()))
    })?;
    linker.func_wrap(abi::IMPORT_MODULE, abi::HOST_DEFER.name, |_: Caller<'_, Ctx>| {})?;
    Ok(())
}
