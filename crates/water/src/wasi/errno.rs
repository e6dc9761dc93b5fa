//! Conversion from host errors to WASI errnos, in one place.

use std::io;

use water_abi::Errno;

/// The errno a guest sees for a host I/O error.
pub fn from_io(e: &io::Error) -> Errno {
    use io::ErrorKind as K;
    match e.kind() {
        K::NotFound => Errno::NOENT,
        K::PermissionDenied => Errno::ACCES,
        K::ConnectionRefused => Errno::CONNREFUSED,
        K::ConnectionReset => Errno::CONNRESET,
        K::HostUnreachable => Errno::HOSTUNREACH,
        K::NetworkUnreachable => Errno::NETUNREACH,
        K::ConnectionAborted => Errno::CONNABORTED,
        K::NotConnected => Errno::NOTCONN,
        K::AddrInUse => Errno::ADDRINUSE,
        K::AddrNotAvailable => Errno::ADDRNOTAVAIL,
        K::NetworkDown => Errno::NETDOWN,
        K::BrokenPipe => Errno::PIPE,
        K::AlreadyExists => Errno::EXIST,
        K::WouldBlock => Errno::AGAIN,
        K::InvalidInput => Errno::INVAL,
        K::InvalidData => Errno::ILSEQ,
        K::TimedOut => Errno::TIMEDOUT,
        K::Interrupted => Errno::INTR,
        K::Unsupported => Errno::NOTSUP,
        K::OutOfMemory => Errno::NOMEM,
        _ => match e.raw_os_error() {
            Some(code) => from_os(code),
            None => Errno::IO,
        },
    }
}

fn from_os(code: i32) -> Errno {
    match code {
        libc_codes::EHOSTUNREACH => Errno::HOSTUNREACH,
        libc_codes::ENETUNREACH => Errno::NETUNREACH,
        libc_codes::ETIMEDOUT => Errno::TIMEDOUT,
        _ => Errno::IO,
    }
}

/// The few Linux errno values `io::ErrorKind` does not already name on every
/// toolchain. (Values are the same on all Linux architectures we build for.)
mod libc_codes {
    pub const EHOSTUNREACH: i32 = 113;
    pub const ENETUNREACH: i32 = 101;
    pub const ETIMEDOUT: i32 = 110;
}

/// The `io::ErrorKind` an application sees for a guest errno.
pub fn to_io_kind(errno: Errno) -> io::ErrorKind {
    use io::ErrorKind as K;
    match errno {
        Errno::CONNREFUSED => K::ConnectionRefused,
        Errno::CONNRESET => K::ConnectionReset,
        Errno::CONNABORTED => K::ConnectionAborted,
        Errno::HOSTUNREACH => K::HostUnreachable,
        Errno::NETUNREACH => K::NetworkUnreachable,
        Errno::NOTCONN => K::NotConnected,
        Errno::PIPE => K::BrokenPipe,
        Errno::TIMEDOUT => K::TimedOut,
        Errno::ACCES | Errno::PERM => K::PermissionDenied,
        Errno::INVAL => K::InvalidInput,
        Errno::PROTO | Errno::ILSEQ => K::InvalidData,
        Errno::NOTSUP | Errno::NOSYS => K::Unsupported,
        Errno::AGAIN => K::WouldBlock,
        Errno::INTR => K::Interrupted,
        _ => K::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_kinds_round_trip() {
        for kind in
            [io::ErrorKind::ConnectionRefused, io::ErrorKind::ConnectionReset, io::ErrorKind::TimedOut]
        {
            assert_eq!(to_io_kind(from_io(&kind.into())), kind);
        }
        assert_eq!(from_io(&io::Error::from_raw_os_error(113)), Errno::HOSTUNREACH);
    }
}
