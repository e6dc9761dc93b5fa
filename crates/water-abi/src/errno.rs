//! The WASI preview1 errno set, as WATM v0 uses it.
//!
//! [`Errno`] keeps any code, known or not: one older guest library used
//! private codes (-1..-8), and a host must report those with their raw number
//! instead of folding them into a known name.

use core::fmt;

/// A WASI preview1 error number (or an unknown code a guest returned).
///
/// The value is the positive code; on the wire it travels negated (see
/// [`crate::status`]). `Errno(0)` is `success` and never describes a failure
/// produced by [`crate::status::decode`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(pub u32);

impl Errno {
    /// `success` (0).
    pub const SUCCESS: Errno = Errno(0);
    /// `2big` (1).
    pub const TOO_BIG: Errno = Errno(1);
    /// `acces` (2).
    pub const ACCES: Errno = Errno(2);
    /// `addrinuse` (3).
    pub const ADDRINUSE: Errno = Errno(3);
    /// `addrnotavail` (4).
    pub const ADDRNOTAVAIL: Errno = Errno(4);
    /// `afnosupport` (5).
    pub const AFNOSUPPORT: Errno = Errno(5);
    /// `again` (6).
    pub const AGAIN: Errno = Errno(6);
    /// `already` (7).
    pub const ALREADY: Errno = Errno(7);
    /// `badf` (8).
    pub const BADF: Errno = Errno(8);
    /// `badmsg` (9).
    pub const BADMSG: Errno = Errno(9);
    /// `busy` (10).
    pub const BUSY: Errno = Errno(10);
    /// `canceled` (11).
    pub const CANCELED: Errno = Errno(11);
    /// `child` (12).
    pub const CHILD: Errno = Errno(12);
    /// `connaborted` (13).
    pub const CONNABORTED: Errno = Errno(13);
    /// `connrefused` (14).
    pub const CONNREFUSED: Errno = Errno(14);
    /// `connreset` (15).
    pub const CONNRESET: Errno = Errno(15);
    /// `deadlk` (16).
    pub const DEADLK: Errno = Errno(16);
    /// `destaddrreq` (17).
    pub const DESTADDRREQ: Errno = Errno(17);
    /// `dom` (18).
    pub const DOM: Errno = Errno(18);
    /// `dquot` (19).
    pub const DQUOT: Errno = Errno(19);
    /// `exist` (20).
    pub const EXIST: Errno = Errno(20);
    /// `fault` (21).
    pub const FAULT: Errno = Errno(21);
    /// `fbig` (22).
    pub const FBIG: Errno = Errno(22);
    /// `hostunreach` (23).
    pub const HOSTUNREACH: Errno = Errno(23);
    /// `idrm` (24).
    pub const IDRM: Errno = Errno(24);
    /// `ilseq` (25).
    pub const ILSEQ: Errno = Errno(25);
    /// `inprogress` (26).
    pub const INPROGRESS: Errno = Errno(26);
    /// `intr` (27).
    pub const INTR: Errno = Errno(27);
    /// `inval` (28).
    pub const INVAL: Errno = Errno(28);
    /// `io` (29).
    pub const IO: Errno = Errno(29);
    /// `isconn` (30).
    pub const ISCONN: Errno = Errno(30);
    /// `isdir` (31).
    pub const ISDIR: Errno = Errno(31);
    /// `loop` (32).
    pub const LOOP: Errno = Errno(32);
    /// `mfile` (33).
    pub const MFILE: Errno = Errno(33);
    /// `mlink` (34).
    pub const MLINK: Errno = Errno(34);
    /// `msgsize` (35).
    pub const MSGSIZE: Errno = Errno(35);
    /// `multihop` (36).
    pub const MULTIHOP: Errno = Errno(36);
    /// `nametoolong` (37).
    pub const NAMETOOLONG: Errno = Errno(37);
    /// `netdown` (38).
    pub const NETDOWN: Errno = Errno(38);
    /// `netreset` (39).
    pub const NETRESET: Errno = Errno(39);
    /// `netunreach` (40).
    pub const NETUNREACH: Errno = Errno(40);
    /// `nfile` (41).
    pub const NFILE: Errno = Errno(41);
    /// `nobufs` (42).
    pub const NOBUFS: Errno = Errno(42);
    /// `nodev` (43).
    pub const NODEV: Errno = Errno(43);
    /// `noent` (44).
    pub const NOENT: Errno = Errno(44);
    /// `noexec` (45).
    pub const NOEXEC: Errno = Errno(45);
    /// `nolck` (46).
    pub const NOLCK: Errno = Errno(46);
    /// `nolink` (47).
    pub const NOLINK: Errno = Errno(47);
    /// `nomem` (48).
    pub const NOMEM: Errno = Errno(48);
    /// `nomsg` (49).
    pub const NOMSG: Errno = Errno(49);
    /// `noprotoopt` (50).
    pub const NOPROTOOPT: Errno = Errno(50);
    /// `nospc` (51).
    pub const NOSPC: Errno = Errno(51);
    /// `nosys` (52).
    pub const NOSYS: Errno = Errno(52);
    /// `notconn` (53).
    pub const NOTCONN: Errno = Errno(53);
    /// `notdir` (54).
    pub const NOTDIR: Errno = Errno(54);
    /// `notempty` (55).
    pub const NOTEMPTY: Errno = Errno(55);
    /// `notrecoverable` (56).
    pub const NOTRECOVERABLE: Errno = Errno(56);
    /// `notsock` (57).
    pub const NOTSOCK: Errno = Errno(57);
    /// `notsup` (58).
    pub const NOTSUP: Errno = Errno(58);
    /// `notty` (59).
    pub const NOTTY: Errno = Errno(59);
    /// `nxio` (60).
    pub const NXIO: Errno = Errno(60);
    /// `overflow` (61).
    pub const OVERFLOW: Errno = Errno(61);
    /// `ownerdead` (62).
    pub const OWNERDEAD: Errno = Errno(62);
    /// `perm` (63).
    pub const PERM: Errno = Errno(63);
    /// `pipe` (64).
    pub const PIPE: Errno = Errno(64);
    /// `proto` (65).
    pub const PROTO: Errno = Errno(65);
    /// `protonosupport` (66).
    pub const PROTONOSUPPORT: Errno = Errno(66);
    /// `prototype` (67).
    pub const PROTOTYPE: Errno = Errno(67);
    /// `range` (68).
    pub const RANGE: Errno = Errno(68);
    /// `rofs` (69).
    pub const ROFS: Errno = Errno(69);
    /// `spipe` (70).
    pub const SPIPE: Errno = Errno(70);
    /// `srch` (71).
    pub const SRCH: Errno = Errno(71);
    /// `stale` (72).
    pub const STALE: Errno = Errno(72);
    /// `timedout` (73).
    pub const TIMEDOUT: Errno = Errno(73);
    /// `txtbsy` (74).
    pub const TXTBSY: Errno = Errno(74);
    /// `xdev` (75).
    pub const XDEV: Errno = Errno(75);
    /// `notcapable` (76).
    pub const NOTCAPABLE: Errno = Errno(76);

    /// The raw code.
    pub const fn code(self) -> u32 {
        self.0
    }

    /// The WASI name of a known code (`"connrefused"`), or `None`.
    pub const fn name(self) -> Option<&'static str> {
        if (self.0 as usize) < NAMES.len() { Some(NAMES[self.0 as usize]) } else { None }
    }

    /// Looks a code up by its WASI name.
    pub fn from_name(name: &str) -> Option<Errno> {
        NAMES.iter().position(|n| *n == name).map(|i| Errno(i as u32))
    }

    /// Whether this is one of the 77 codes WASI preview1 defines.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }
}

/// WASI preview1 errno names, indexed by code.
const NAMES: [&str; 77] = [
    "success",
    "2big",
    "acces",
    "addrinuse",
    "addrnotavail",
    "afnosupport",
    "again",
    "already",
    "badf",
    "badmsg",
    "busy",
    "canceled",
    "child",
    "connaborted",
    "connrefused",
    "connreset",
    "deadlk",
    "destaddrreq",
    "dom",
    "dquot",
    "exist",
    "fault",
    "fbig",
    "hostunreach",
    "idrm",
    "ilseq",
    "inprogress",
    "intr",
    "inval",
    "io",
    "isconn",
    "isdir",
    "loop",
    "mfile",
    "mlink",
    "msgsize",
    "multihop",
    "nametoolong",
    "netdown",
    "netreset",
    "netunreach",
    "nfile",
    "nobufs",
    "nodev",
    "noent",
    "noexec",
    "nolck",
    "nolink",
    "nomem",
    "nomsg",
    "noprotoopt",
    "nospc",
    "nosys",
    "notconn",
    "notdir",
    "notempty",
    "notrecoverable",
    "notsock",
    "notsup",
    "notty",
    "nxio",
    "overflow",
    "ownerdead",
    "perm",
    "pipe",
    "proto",
    "protonosupport",
    "prototype",
    "range",
    "rofs",
    "spipe",
    "srch",
    "stale",
    "timedout",
    "txtbsy",
    "xdev",
    "notcapable",
];

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "Errno({name})"),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    /// `connrefused (errno 14)`, or `unknown error code 1000` for a code
    /// outside the WASI set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (errno {})", self.0),
            None => write!(f, "unknown error code {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_wasi_table() {
        assert_eq!(Errno::AGAIN.code(), 6);
        assert_eq!(Errno::BADF.code(), 8);
        assert_eq!(Errno::CANCELED.code(), 11);
        assert_eq!(Errno::CONNREFUSED.code(), 14);
        assert_eq!(Errno::INVAL.code(), 28);
        assert_eq!(Errno::NOSYS.code(), 52);
        assert_eq!(Errno::NOTCAPABLE.code(), 76);
    }

    #[test]
    fn names_round_trip() {
        for code in 0..77 {
            let e = Errno(code);
            assert_eq!(Errno::from_name(e.name().unwrap()), Some(e));
        }
        assert_eq!(Errno(77).name(), None);
        assert_eq!(Errno::from_name("nope"), None);
    }
}
