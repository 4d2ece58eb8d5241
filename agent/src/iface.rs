//! Network interface names and indexes in the current network namespace.

use anyhow::{Result, bail};
use std::ffi::{CStr, CString};

/// Linux limits interface names to 15 bytes (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks that `name` can be a Linux interface name, saying what is wrong if not.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("interface name is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        bail!(
            "interface name {name:?} is {} bytes; Linux allows at most {MAX_IFNAME_LEN}",
            name.len()
        );
    }
    if name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        bail!("interface name {name:?} contains characters Linux does not allow");
    }
    Ok(())
}

/// The ifindex of `name` in this network namespace, with an error naming the interface.
pub fn index_of(name: &str) -> Result<u32> {
    validate_name(name)?;
    let c_name = CString::new(name)?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("interface {name:?} does not exist in this network namespace");
    }
    Ok(index)
}

/// The name of interface `index` in this network namespace, if it still exists.
pub fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Switches transmit checksum offload of `name` on or off (the ethtool ioctl).
///
/// A veth whose frames are redirected by XDP on its peer must compute checksums itself:
/// with offload on, locally sent TCP/UDP leaves with only a partial checksum, which the
/// skb would have completed later, and XDP passes on the raw bytes.
pub fn set_tx_checksum(name: &str, on: bool) -> Result<()> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IF_NAMESIZE],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    validate_name(name)?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    let mut req = IfReq {
        name: [0; libc::IF_NAMESIZE],
        data: &mut value,
        _pad: [0; 16],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq whose data points at a valid ethtool_value.
    unsafe { interface_ioctl(SIOCETHTOOL, &mut req) }
        .map_err(|err| anyhow::anyhow!("cannot set tx checksum offload of {name}: {err}"))
}

/// Runs the interface ioctl `request` on `req` (a `struct ifreq`) through a throwaway
/// datagram socket of the calling thread's network namespace.
///
/// # Safety
/// `req` must be the structure the kernel expects for `request`.
unsafe fn interface_ioctl<T>(request: libc::c_ulong, req: &mut T) -> std::io::Result<()> {
    // SAFETY: a plain datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the caller guarantees `req` matches `request`.
    let rc = unsafe { libc::ioctl(fd, request, req as *mut T) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if rc != 0 { Err(err) } else { Ok(()) }
}

/// Whether `name`'s frames start with an Ethernet header (ARPHRD_ETHER: veths, NICs),
/// rather than with the IP header (WireGuard and TUN devices).
pub fn has_ethernet_header(name: &str) -> Result<bool> {
    const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
    const ARPHRD_ETHER: u16 = 1;
    /// `struct ifreq` with its `ifr_hwaddr` member: the name, then a sockaddr whose family
    /// is the hardware type; 40 bytes in all.
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IF_NAMESIZE],
        hw_family: u16,
        _rest: [u8; 22],
    }
    validate_name(name)?;
    let mut req = IfReq {
        name: [0; libc::IF_NAMESIZE],
        hw_family: 0,
        _rest: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq the kernel fills.
    unsafe { interface_ioctl(SIOCGIFHWADDR, &mut req) }
        .map_err(|err| anyhow::anyhow!("cannot read the link type of {name}: {err}"))?;
    Ok(req.hw_family == ARPHRD_ETHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_ethernet_header() {
        // ARPHRD_LOOPBACK; every namespace has `lo`.
        assert!(!has_ethernet_header("lo").unwrap());
        assert!(has_ethernet_header("no-such-link0").is_err());
    }

    #[test]
    fn names_longer_than_15_bytes_are_refused() {
        assert!(validate_name("veth-1abc-12345").is_ok());
        let err = validate_name("veth-1abc-123456").unwrap_err().to_string();
        assert!(err.contains("16 bytes"), "{err}");
    }

    #[test]
    fn names_with_slash_or_space_are_refused() {
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("..").is_err());
    }

    #[test]
    fn loopback_resolves_both_ways() {
        let index = index_of("lo").expect("every namespace has lo");
        assert_eq!(name_of(index).as_deref(), Some("lo"));
    }

    #[test]
    fn missing_interface_is_named_in_the_error() {
        let err = index_of("nosuchif0").unwrap_err().to_string();
        assert!(err.contains("\"nosuchif0\" does not exist"), "{err}");
    }
}
