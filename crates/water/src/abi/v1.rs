//! WATM v1: the `env` imports (`water_dial`, `water_dial_fixed`,
//! `water_accept`). Its config is a file in a preopened directory, set up
//! by the session before `_start`; cancellation is the same cancel fd as
//! v0's, given to `watm_ctrlpipe_v1`.

use wasmtime::{Caller, Linker};
use water_abi::{status, v1 as abi};

use crate::session::{Ctx, dial_app_target, dial_guest_named, hand_over_accepted};
use crate::wasi::p1::split;

/// Links the v1 `env` imports.
pub fn add_to_linker(linker: &mut Linker<Ctx>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::WATER_DIAL.name,
        |mut caller: Caller<'_, Ctx>, (net, net_len, addr, addr_len): (i32, i32, i32, i32)| {
            Box::new(async move {
                // The guest names network and address: at most 256 bytes of
                // each is read, every pointer checked.
                let named = split(&mut caller).and_then(|(mem, _)| {
                    let network = mem.gather(net as u32, net_len as u32, abi::MAX_DIAL_STRING)?;
                    let address = mem.gather(addr as u32, addr_len as u32, abi::MAX_DIAL_STRING)?;
                    Ok((network, address))
                });
                Ok(status::encode(match named {
                    Ok((network, address)) => dial_guest_named(&mut caller, &network, &address).await,
                    Err(errno) => Err(errno),
                }))
            })
        },
    )?;
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::WATER_DIAL_FIXED.name,
        |mut caller: Caller<'_, Ctx>, (): ()| {
            Box::new(async move { Ok(status::encode(dial_app_target(&mut caller).await)) })
        },
    )?;
    linker.func_wrap(abi::IMPORT_MODULE, abi::WATER_ACCEPT.name, |mut caller: Caller<'_, Ctx>| -> i32 {
        status::encode(hand_over_accepted(caller.data_mut()))
    })?;
    Ok(())
}
