//! The few `bpf(2)` commands the router's two kernel programs need (the splice verdict and the
//! connect-time redirect): assembling instructions, creating hash maps and reading and writing
//! their entries, loading a program (with the verifier's log on failure) and attaching it.
//!
//! A loader crate such as aya takes a compiled BPF object, which would make clang or a nightly
//! toolchain a build dependency for programs of a few dozen instructions; these commands are
//! all the router uses. This is the router's only module with `unsafe` code besides the
//! socket calls of `splice`.
#![allow(unsafe_code)]

// The instruction encoding (register nibbles) and the byte order of the maps' keys assume a
// little-endian machine.
#[cfg(target_endian = "big")]
compile_error!("the BPF programs are assembled for little-endian machines");

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

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
pub const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Map flag: allocate elements on update instead of all at creation.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// One instruction.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// An instruction from its opcode, registers, offset and immediate.
pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

impl Insn {
    pub fn code(&self) -> u8 {
        self.code
    }

    #[cfg(test)]
    pub fn off(&self) -> i16 {
        self.off
    }

    /// The same instruction with another offset (a jump's target).
    pub fn with_off(self, off: i16) -> Insn {
        Insn { off, ..self }
    }
}

/// `dst = map` (a 64-bit immediate load of a map descriptor: two instruction slots).
pub fn ld_map(dst: u8, map_fd: RawFd) -> [Insn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
    ]
}

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

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised `#[repr(C)]` prefix of `union bpf_attr` and its
    // exact size is passed; the kernel reads (and for some commands writes) only that much.
    // Every pointer inside it points to memory that outlives the call, of the size the map or
    // program was created with.
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

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel as a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// A BPF map with fixed key and value sizes.
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
        Ok(Map {
            fd: owned(bpf(BPF_MAP_CREATE, &mut create)?),
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
        bpf(BPF_MAP_UPDATE_ELEM, &mut elem).map(|_| ())
    }

    /// Deletes `key`; one that is not there is not an error.
    pub fn delete(&self, key: &[u8]) -> io::Result<()> {
        self.check(key, None)?;
        let mut elem = MapElem {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut elem) {
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
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut elem) {
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
            match bpf(BPF_MAP_GET_NEXT_KEY, &mut elem) {
                Ok(_) => {
                    keys.push(next.clone());
                    prev = Some(next);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(keys),
                Err(e) => return Err(e),
            }
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Loads a GPL program of `prog_type` (for `expected_attach_type`, 0 when the type has no
/// choice); a refusal carries the verifier's log.
pub fn load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    name: &str,
) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 16384];
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
    match bpf(BPF_PROG_LOAD, &mut load) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            Err(io::Error::new(
                e.kind(),
                format!("{e}; verifier: {}", text.trim()),
            ))
        }
    }
}

/// Attaches `prog` to `target` (a map, for the sockhash verdict); detached when both are gone.
pub fn attach(target: RawFd, prog: &OwnedFd, attach_type: u32) -> io::Result<()> {
    let mut attach = ProgAttach {
        target_fd: target as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: 0,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map(|_| ())
}

/// Attaches `prog` to `target` (a cgroup directory) through a link: the program is detached
/// when the returned descriptor is closed, so also when the process ends, however it ends.
pub fn link(target: RawFd, prog: &OwnedFd, attach_type: u32) -> io::Result<OwnedFd> {
    let mut create = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target as u32,
        attach_type,
        flags: 0,
    };
    Ok(owned(bpf(BPF_LINK_CREATE, &mut create)?))
}
