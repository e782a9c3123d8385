//! The Linux watchdog device (`<linux/watchdog.h>`): the agent's only `unsafe` code, four
//! `ioctl`s (through `nix`'s macros) behind safe methods of an open device.
//!
//! Dangerous: once the device is open the host is reset unless it is fed within its timeout.
//! Only [`LinuxDevice::close`] (the magic close, a `V` written before closing) stops it, and
//! only when the driver supports it (`WDIOF_MAGICCLOSE`, and the kernel was not built with
//! `nowayout`). Dropping a device without closing it leaves it running, on purpose: an agent
//! that dies while it leads must not leave a writable primary behind.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::libc::c_int;

/// `struct watchdog_info`.
#[repr(C)]
#[derive(Default)]
struct WatchdogInfo {
    options: u32,
    firmware_version: u32,
    identity: [u8; 32],
}

nix::ioctl_read!(wdioc_getsupport, b'W', 0, WatchdogInfo);
nix::ioctl_read!(wdioc_keepalive, b'W', 5, c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, c_int);

/// `WDIOF_SETTIMEOUT`: the timeout can be set.
pub const WDIOF_SETTIMEOUT: u32 = 0x0080;
/// `WDIOF_MAGICCLOSE`: writing `V` before closing stops the watchdog.
pub const WDIOF_MAGICCLOSE: u32 = 0x0100;

/// What `WDIOC_GETSUPPORT` says about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Support {
    pub options: u32,
    pub firmware_version: u32,
    pub identity: String,
}

/// An open watchdog device: running from the moment it was opened.
#[derive(Debug)]
pub struct LinuxDevice {
    file: File,
}

impl LinuxDevice {
    /// Opens the device for writing, which starts the watchdog.
    pub fn open(path: &Path) -> std::io::Result<LinuxDevice> {
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(LinuxDevice { file })
    }

    pub fn support(&self) -> nix::Result<Support> {
        let mut info = WatchdogInfo::default();
        // SAFETY: the descriptor is open for as long as `self` lives, and `info` is a writable
        // `struct watchdog_info` of the size the request code encodes, which the kernel fills.
        unsafe { wdioc_getsupport(self.file.as_raw_fd(), &mut info) }?;
        let end = info.identity.iter().position(|b| *b == 0).unwrap_or(32);
        Ok(Support {
            options: info.options,
            firmware_version: info.firmware_version,
            identity: String::from_utf8_lossy(&info.identity[..end]).into_owned(),
        })
    }

    /// Sets the timeout in seconds; returns the one the driver chose (it may round).
    pub fn set_timeout(&self, seconds: c_int) -> nix::Result<c_int> {
        let mut value = seconds;
        // SAFETY: as in `support`; `value` is a writable `int` the kernel reads and updates.
        unsafe { wdioc_settimeout(self.file.as_raw_fd(), &mut value) }?;
        Ok(value)
    }

    /// The timeout in effect, in seconds.
    pub fn timeout(&self) -> nix::Result<c_int> {
        let mut value: c_int = 0;
        // SAFETY: as in `support`; `value` is a writable `int` the kernel fills.
        unsafe { wdioc_gettimeout(self.file.as_raw_fd(), &mut value) }?;
        Ok(value)
    }

    /// Resets the timer.
    pub fn keepalive(&self) -> nix::Result<()> {
        let mut unused: c_int = 0;
        // SAFETY: as in `support`; the kernel ignores the argument of WDIOC_KEEPALIVE.
        unsafe { wdioc_keepalive(self.file.as_raw_fd(), &mut unused) }?;
        Ok(())
    }

    /// The magic close: writes `V`, then closes the device.
    pub fn close(mut self) -> std::io::Result<()> {
        self.file.write_all(b"V")?;
        self.file.flush()
    }
}
