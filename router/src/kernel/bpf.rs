//! The BPF instruction assembler of the router's two kernel programs (the splice verdict and
//! the connect-time redirect), and loading a program with the verifier's log on failure. The
//! `bpf(2)` commands themselves (maps, load, attach, link) are in `super::sys`.
//!
//! A loader crate such as aya takes a compiled BPF object, which would make clang or a nightly
//! toolchain a build dependency for programs of a few dozen instructions; these few commands
//! are all the router uses.

// The instruction encoding (register nibbles) and the byte order of the maps' keys assume a
// little-endian machine.
#[cfg(target_endian = "big")]
compile_error!("the BPF programs are assembled for little-endian machines");

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use super::sys;

// From include/uapi/linux/bpf.h.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// One instruction.
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

    /// The eight bytes of `struct bpf_insn`: opcode, registers, offset, immediate.
    fn to_bytes(self) -> [u8; 8] {
        let [o0, o1] = self.off.to_le_bytes();
        let [i0, i1, i2, i3] = self.imm.to_le_bytes();
        [self.code, self.regs, o0, o1, i0, i1, i2, i3]
    }
}

/// `dst = map` (a 64-bit immediate load of a map descriptor: two instruction slots).
pub fn ld_map(dst: u8, map_fd: RawFd) -> [Insn; 2] {
    [
        insn(0x18, dst, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
    ]
}

/// Loads a GPL program of `prog_type` (for `expected_attach_type`, 0 when the type has no
/// choice); a refusal carries the verifier's log.
pub fn load(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    name: &str,
) -> io::Result<OwnedFd> {
    let bytes: Vec<[u8; 8]> = insns.iter().map(|i| i.to_bytes()).collect();
    let mut log = vec![0u8; 16384];
    sys::prog_load(prog_type, expected_attach_type, &bytes, name, &mut log).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        io::Error::new(e.kind(), format!("{e}; verifier: {}", text.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_laid_out_as_the_kernel_reads_them() {
        // r6 = r1: opcode, then source register in the high nibble, destination in the low.
        assert_eq!(
            insn(0xbf, 6, 1, 0, 0).to_bytes(),
            [0xbf, 0x16, 0, 0, 0, 0, 0, 0]
        );
        // *(u64 *)(r10 - 8) = r0: the offset and immediate little-endian, signed.
        assert_eq!(
            insn(0x7b, 10, 0, -8, -2).to_bytes(),
            [0x7b, 0x0a, 0xf8, 0xff, 0xfe, 0xff, 0xff, 0xff]
        );
        let [ld, next] = ld_map(2, 7);
        assert_eq!(ld.to_bytes(), [0x18, 0x12, 0, 0, 7, 0, 0, 0]);
        assert_eq!(next.to_bytes(), [0; 8]);
    }
}
