//! The system calls of the kernel data paths that `nix` does not wrap, and with them every
//! `unsafe` block of the router: `bpf(2)` (maps and their entries, program load, attach, link),
//! `getsockopt` of the options read as plain data (`TCP_INFO`, the cookies of a socket and of
//! its network namespace), `SIOCOUTQ`, and registering a descriptor with tokio's reactor.
//!
//! Every function here is safe to call: it takes plain data (integers, byte slices) and
//! descriptors it borrows or returns owned. Whatever the kernel reads or writes through a
//! pointer is a slice passed in, whose length is checked against what the kernel will use (a
//! map's buffers against the key and value sizes it was created with, which [`Map`] keeps), so
//! no caller can make the kernel touch memory outside it.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;

// From include/uapi/linux/bpf.h.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_LINK_CREATE: libc::c_long = 28;
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
/// Map flag: allocate elements on update instead of all at creation.
pub const BPF_F_NO_PREALLOC: u32 = 1;
// From include/uapi/asm-generic/socket.h (Linux 5.14).
const SO_NETNS_COOKIE: libc::c_int = 71;

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// One `bpf(2)` command.
///
/// # Safety
///
/// `attr` must be the `#[repr(C)]` prefix of `union bpf_attr` that `cmd` takes, and every
/// pointer in it must be null where the command allows it or point to live memory of at least
/// the size the kernel reads or writes there for `cmd` (the map's key or value size, the
/// instruction count, the log size).
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is live and its exact size is passed, so the kernel reads (and for some
    // commands writes) only that much of it; the pointers inside are the caller's contract.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor a `bpf(2)` command just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// A BPF map, with the key and value sizes it was created with: every call checks its buffers
/// against them, so the kernel never reads or writes past one.
pub struct Map {
    fd: OwnedFd,
    key_size: usize,
    value_size: usize,
}

impl Map {
    pub fn create(
        map_type: u32,
        key_size: usize,
        value_size: usize,
        max_entries: usize,
        map_flags: u32,
    ) -> io::Result<Map> {
        let mut create = MapCreate {
            map_type,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries: max_entries.clamp(1, u32::MAX as usize) as u32,
            map_flags,
        };
        // SAFETY: no pointers in `MapCreate`.
        let fd = unsafe { bpf(BPF_MAP_CREATE, &mut create)? };
        Ok(Map {
            fd: owned(fd),
            key_size,
            value_size,
        })
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
        if key.len() != self.key_size || value.is_some_and(|v| v.len() != self.value_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bpf map: key or value of the wrong size",
            ));
        }
        Ok(())
    }

    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.check(key, Some(value))?;
        let mut elem = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `key` and `value` are live and of this map's sizes (checked above).
        unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut elem) }.map(|_| ())
    }

    /// Deletes `key`; one that is not there is not an error.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.check(key, None)?;
        let mut elem = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `key` is live and of this map's key size (checked above).
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut elem) } {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.check(key, None)?;
        let mut value = vec![0u8; self.value_size];
        let mut elem = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `key` is live and of this map's key size (checked above); `value` is a live
        // buffer of its value size, which the kernel fills.
        match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut elem) } {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every key (a snapshot: entries added or removed meanwhile may or may not be in it).
    pub fn keys(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        let mut prev: Option<Vec<u8>> = None;
        loop {
            let mut next = vec![0u8; self.key_size];
            let mut elem = MapElem {
                map_fd: self.fd.as_raw_fd() as u32,
                key: prev.as_ref().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: `prev` (null for the first key) and `next` are live buffers of this map's
            // key size; the kernel writes the next key into `next`.
            match unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut elem) } {
                Ok(_) => {
                    keys.push(next.clone());
                    prev = Some(next);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }

    /// The descriptor as a program's map reference takes it (`ld_imm64` of a map fd).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Map {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Loads a GPL program of `prog_type` (for `expected_attach_type`, 0 when the type has no
/// choice) from `insns`, each the eight bytes of a `struct bpf_insn`. The verifier writes its
/// log into `log` (a NUL-terminated text, read it on a refusal).
pub fn prog_load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[[u8; 8]],
    name: &str,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut load = ProgLoad {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type,
        ..Default::default()
    };
    let n = name.len().min(15);
    load.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: `insns` holds at least `insn_cnt` instructions of eight bytes and `log` at least
    // `log_size` bytes (the casts can only shorten them); `license` is a live NUL-terminated
    // string.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &mut load)? };
    Ok(owned(fd))
}

/// Attaches `prog` to `target` (a map, for the sockhash verdict); detached when both are gone.
pub fn prog_attach(
    target: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    let mut attach = ProgAttach {
        target_fd: target.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: 0,
    };
    // SAFETY: no pointers in `ProgAttach`.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attach) }.map(|_| ())
}

/// Attaches `prog` to `target` (a cgroup directory) through a link: the program is detached
/// when the returned descriptor is closed, so also when the process ends, however it ends.
pub fn link_create(
    target: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut create = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
    };
    // SAFETY: no pointers in `LinkCreate`.
    let fd = unsafe { bpf(BPF_LINK_CREATE, &mut create)? };
    Ok(owned(fd))
}

/// A socket option value the kernel writes whole: plain integers, valid for any bytes (all
/// zero included). Implemented only for the types read here.
trait Plain: Copy {}

impl Plain for u64 {}
impl Plain for libc::tcp_info {}

fn getsockopt<T: Plain>(s: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<T> {
    // SAFETY: `T: Plain` is plain integers, for which all-zero is a valid value.
    let mut v: T = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live locals; the kernel writes at most `len` bytes into `v`, and
    // any bytes are a valid `T: Plain`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            level,
            name,
            &mut v as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(v)
    }
}

/// The socket's cookie (`SO_COOKIE`): what BPF programs key sockets by.
pub fn socket_cookie(s: &impl AsFd) -> io::Result<u64> {
    getsockopt(s.as_fd(), libc::SOL_SOCKET, libc::SO_COOKIE)
}

/// The cookie of the socket's network namespace (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn netns_cookie(s: &impl AsFd) -> io::Result<u64> {
    getsockopt(s.as_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE)
}

/// The TCP socket's `TCP_INFO`.
pub fn tcp_info(s: &impl AsFd) -> io::Result<libc::tcp_info> {
    getsockopt(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_INFO)
}

/// Bytes written to the socket and not yet acknowledged by its peer (`SIOCOUTQ`).
pub fn outq(s: &impl AsFd) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int to the live local `n`.
    let r = unsafe { libc::ioctl(s.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n.max(0) as u64)
    }
}

/// Registers `fd` with the current tokio reactor for readiness to read.
pub fn register_readable(fd: BorrowedFd<'_>) -> io::Result<AsyncFd<BorrowedFd<'_>>> {
    // SAFETY: the borrow keeps `fd` open, and the same descriptor, for as long as the returned
    // `AsyncFd` lives (it cannot outlive the borrow).
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
}
