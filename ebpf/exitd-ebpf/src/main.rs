//! exitd's eBPF programs. Entry points are thin: each calls a `try_*` function and maps its
//! error to a safe verdict, so no code path can return an undefined action.
#![no_std]
#![no_main]

mod bench;
mod counter;
mod firewall;
mod fwd6;
mod nat4;
mod nat64;
mod net;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; no program can actually panic.
    loop {}
}

/// License string the kernel reads from the object; GPL-compatible so the programs may use
/// GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
