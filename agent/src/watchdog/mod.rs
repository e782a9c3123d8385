//! The watchdog (Patroni's `patroni/watchdog/`): a device that resets the host unless the
//! agent feeds it, so that a leader whose agent hangs (frozen, swapped out, stuck) is reset
//! before its leader key expires and a replica takes over. When to arm and disarm it is the
//! core's rule (rows W-1..W-4 of `docs/ha-decision-table.md`); this module holds the device:
//! [`Watchdog`] opens it with the timeout `ttl - safety_margin`, feeds it (the runner calls
//! [`Watchdog::keepalive`] after every successful refresh of the leader key), applies a new
//! `ttl`/`loop_wait` at the next feed, and closes it cleanly.
//!
//! Drivers: `default`, the Linux device (`linux.rs`, the agent's only unsafe code), and
//! `testing`, Patroni's test driver: plain writes to a file or FIFO (`1` a keepalive, `V` the
//! magic close, `Ctimeout=N\n` the timeout), which its acceptance tests and ours read.
//!
//! Dangerous: an armed device that is not fed resets the host, and only [`Watchdog::disable`]
//! stops it. Dropping a [`Watchdog`] leaves an armed device running, on purpose.

mod linux;

use std::fs::{File, OpenOptions};
use std::io::Write;

use patrol_ha::WatchdogView;

use crate::config::{Watchdog as WatchdogConfig, WatchdogDriver, WatchdogMode};
use linux::{LinuxDevice, Support, WDIOF_MAGICCLOSE, WDIOF_SETTIMEOUT};

/// An open device of either driver.
enum Device {
    Linux {
        dev: LinuxDevice,
        support: Support,
    },
    /// Patroni's `TestingWatchdogDevice`: it reports support for setting the timeout and for
    /// the magic close, and remembers the timeout it wrote.
    Testing {
        file: File,
        timeout: i64,
    },
}

impl Device {
    fn open(cfg: &WatchdogConfig) -> Result<Device, String> {
        match cfg.driver {
            WatchdogDriver::Default => {
                let dev = LinuxDevice::open(&cfg.device)
                    .map_err(|e| format!("Can't open watchdog device: {e}"))?;
                match dev.support() {
                    Ok(support) => Ok(Device::Linux { dev, support }),
                    Err(e) => {
                        let err = format!("Could not get information about watchdog device: {e}");
                        // Without the support flags the magic close is all that can be tried.
                        let _ = dev.close();
                        Err(err)
                    }
                }
            }
            // Blocks until a reader opens a FIFO, as Patroni's driver does (tests only).
            WatchdogDriver::Testing => OpenOptions::new()
                .write(true)
                .open(&cfg.device)
                .map(|file| Device::Testing { file, timeout: 60 })
                .map_err(|e| format!("Can't open watchdog device: {e}")),
            WatchdogDriver::Unknown => Err("no watchdog driver".into()),
        }
    }

    fn describe(&self, cfg: &WatchdogConfig) -> String {
        let at = if cfg.device.as_os_str() == "/dev/watchdog" {
            String::new()
        } else {
            format!(" at {}", cfg.device.display())
        };
        match self {
            Device::Linux { support, .. } => {
                let identity = if support.identity.is_empty() {
                    "Linux watchdog device"
                } else {
                    &support.identity
                };
                let firmware = match support.firmware_version {
                    0 => String::new(),
                    v => format!(" (firmware {v})"),
                };
                format!("{identity}{firmware}{at}")
            }
            Device::Testing { .. } => format!("Watchdog test harness{at}"),
        }
    }

    fn options(&self) -> u32 {
        match self {
            Device::Linux { support, .. } => support.options,
            Device::Testing { .. } => WDIOF_MAGICCLOSE | WDIOF_SETTIMEOUT,
        }
    }

    fn can_be_disabled(&self) -> bool {
        self.options() & WDIOF_MAGICCLOSE != 0
    }

    fn set_timeout(&mut self, seconds: i64) -> Result<(), String> {
        if !(1..0xFFFF).contains(&seconds) {
            return Err(format!(
                "Invalid timeout {seconds}. Supported values are between 1 and 65535"
            ));
        }
        let err =
            |e: &dyn std::fmt::Display| format!("Could not set timeout on watchdog device: {e}");
        match self {
            Device::Linux { dev, .. } => {
                // In range: checked above.
                let s = i32::try_from(seconds).map_err(|e| err(&e))?;
                dev.set_timeout(s).map(|_| ()).map_err(|e| err(&e))
            }
            Device::Testing { file, timeout } => {
                file.write_all(format!("Ctimeout={seconds}\n").as_bytes())
                    .map_err(|e| err(&e))?;
                *timeout = seconds;
                Ok(())
            }
        }
    }

    fn timeout(&self) -> Result<i64, String> {
        match self {
            Device::Linux { dev, .. } => dev
                .timeout()
                .map(i64::from)
                .map_err(|e| format!("Could not get timeout on watchdog device: {e}")),
            Device::Testing { timeout, .. } => Ok(*timeout),
        }
    }

    fn keepalive(&mut self) -> Result<(), String> {
        match self {
            Device::Linux { dev, .. } => dev.keepalive().map_err(|e| e.to_string()),
            Device::Testing { file, .. } => file.write_all(b"1").map_err(|e| e.to_string()),
        }
        .map_err(|e| format!("Could not send watchdog keepalive: {e}"))
    }

    /// The magic close.
    fn close(self) -> Result<(), String> {
        match self {
            Device::Linux { dev, .. } => dev.close(),
            Device::Testing { mut file, .. } => file.write_all(b"V"),
        }
        .map_err(|e| e.to_string())
    }
}

/// The device while it is armed, with what it was armed for.
struct Armed {
    device: Device,
    /// The configuration it was armed (or last re-timed) with.
    cfg: WatchdogConfig,
    /// The timeout asked for, and the one the device took.
    wanted: i64,
    timeout: i64,
}

/// Patroni's `Watchdog` facade: the local `watchdog` configuration, the current timing, and
/// the device while armed. Activation is retried only once the configuration or the timing
/// changed (Patroni: "to avoid log spam").
pub struct Watchdog {
    cfg: WatchdogConfig,
    ttl: u64,
    loop_wait: u64,
    armed: Option<Armed>,
    /// `automatic` mode: activation failed with this configuration and timing.
    gave_up: bool,
    /// The last activation got as far as opening the device.
    device_opened_before_failing: bool,
}

impl Watchdog {
    pub fn new(cfg: &WatchdogConfig, timing: patrol_dcs::Timing) -> Watchdog {
        Watchdog {
            cfg: cfg.clone(),
            ttl: timing.ttl,
            loop_wait: timing.loop_wait,
            armed: None,
            gave_up: false,
            device_opened_before_failing: false,
        }
    }

    fn required(&self) -> bool {
        self.cfg.mode == WatchdogMode::Required
    }

    fn timeout(&self) -> i64 {
        self.cfg.timeout(self.ttl)
    }

    fn slack(&self) -> i64 {
        self.cfg.timing_slack(self.ttl, self.loop_wait)
    }

    /// The local configuration was reloaded: turning it off disarms at once; a new driver or
    /// device while armed is taken at the next keepalive.
    pub fn reload(&mut self, cfg: &WatchdogConfig) {
        if *cfg == self.cfg {
            return;
        }
        self.cfg = cfg.clone();
        self.gave_up = false;
        if cfg.mode == WatchdogMode::Off {
            self.disable();
        }
    }

    /// The timing in effect (from the dynamic configuration); applied to an armed device at
    /// the next keepalive, so that the timeout changes together with the leader key's ttl.
    pub fn set_timing(&mut self, timing: patrol_dcs::Timing) {
        if (timing.ttl, timing.loop_wait) != (self.ttl, self.loop_wait) {
            self.ttl = timing.ttl;
            self.loop_wait = timing.loop_wait;
            self.gave_up = false;
        }
    }

    /// What the core needs to know (Patroni's `is_running` and `is_healthy`).
    pub fn view(&self) -> WatchdogView {
        let usable = self.cfg.driver != WatchdogDriver::Unknown;
        WatchdogView {
            enabled: self.cfg.mode != WatchdogMode::Off && usable && !self.gave_up,
            required: self.required(),
            armed: self.armed.is_some(),
            failed: self.required() && !(self.slack() >= 0 && usable && self.device_writable()),
        }
    }

    /// The timeout of the armed device, for the metrics.
    pub fn armed_timeout(&self) -> Option<i64> {
        self.armed.as_ref().map(|a| a.timeout)
    }

    fn device_writable(&self) -> bool {
        nix::unistd::access(&self.cfg.device, nix::unistd::AccessFlags::W_OK).is_ok()
    }

    /// Arms the watchdog (Patroni's `activate`). `Err` only in `required` mode, when no safe
    /// watchdog could be armed; in `automatic` mode a failure is logged and the node goes on
    /// without one until the configuration or the timing changes.
    pub fn activate(&mut self) -> Result<(), String> {
        if self.armed.is_some() || self.cfg.mode == WatchdogMode::Off {
            return Ok(());
        }
        match self.try_activate() {
            Ok(()) => Ok(()),
            Err(why) if self.required() => {
                tracing::error!(
                    "Configuration requires watchdog, but watchdog could not be activated: {why}"
                );
                Err(why)
            }
            Err(why) => {
                // Patroni logs a device it cannot open in automatic mode (the default, also
                // without a `watchdog` section) at debug level only; anything else is a warning.
                if self.device_opened_before_failing {
                    tracing::warn!("not using a watchdog: {why}");
                } else {
                    tracing::info!("not using a watchdog: {why}");
                }
                self.gave_up = true;
                Ok(())
            }
        }
    }

    fn try_activate(&mut self) -> Result<(), String> {
        self.device_opened_before_failing = false;
        let (timeout, slack) = (self.timeout(), self.slack());
        if slack < 0 {
            return Err(format!(
                "Watchdog not supported because leader TTL {} is less than 2x loop_wait {}",
                self.ttl, self.loop_wait
            ));
        }
        let mut device = Device::open(&self.cfg)?;
        self.device_opened_before_failing = true;
        let describe = device.describe(&self.cfg);
        let set = if device.options() & WDIOF_SETTIMEOUT != 0 {
            device.set_timeout(timeout)
        } else {
            Ok(())
        };
        let actual = set.and_then(|()| device.timeout());
        let refuse = |device: Device, why: String| {
            if !device.can_be_disabled() {
                tracing::warn!("Watchdog implementation can't be disabled. System will reboot after it times out.");
            }
            if let Err(e) = device.close() {
                tracing::error!("Error while disabling watchdog: {e}");
            }
            Err(format!("Could not activate {describe}: {why}"))
        };
        let actual = match actual {
            Ok(t) => t,
            Err(e) => return refuse(device, e),
        };
        if actual < i64::try_from(self.loop_wait).unwrap_or(i64::MAX) {
            return refuse(
                device,
                format!(
                    "loop_wait of {} seconds is too long for watchdog {actual} second timeout",
                    self.loop_wait
                ),
            );
        }
        if actual > timeout {
            let why = format!("a safe watchdog timeout {timeout} could not be configured. Watchdog timeout is {actual}.");
            if self.required() {
                return refuse(device, why);
            }
            tracing::warn!("Watchdog timeout {actual} seconds does not ensure safe termination within {timeout} seconds");
        }
        if !device.can_be_disabled() {
            tracing::warn!("Watchdog implementation can't be disabled. Watchdog will trigger after the agent loses the leader key.");
        }
        tracing::info!(
            "{describe} activated with {actual} second timeout, timing slack {slack} seconds"
        );
        self.armed = Some(Armed {
            device,
            cfg: self.cfg.clone(),
            wanted: timeout,
            timeout: actual,
        });
        Ok(())
    }

    /// Feeds an armed watchdog (after every successful refresh of the leader key), then applies
    /// a changed timing or device.
    pub fn keepalive(&mut self) {
        let (timeout, slack) = (self.timeout(), self.slack());
        let Some(armed) = self.armed.as_mut() else {
            return;
        };
        if let Err(e) = armed.device.keepalive() {
            tracing::error!("Error while sending keepalive: {e}");
        }
        let same_device =
            (armed.cfg.driver, &armed.cfg.device) == (self.cfg.driver, &self.cfg.device);
        if !same_device {
            self.disable();
            if let Err(e) = self.activate() {
                tracing::error!("Error while re-arming the watchdog on its new device: {e}");
            }
            return;
        }
        if timeout != armed.wanted {
            let describe = armed.device.describe(&self.cfg);
            let result = armed
                .device
                .set_timeout(timeout)
                .and_then(|()| armed.device.timeout());
            match result {
                Ok(actual) => {
                    armed.wanted = timeout;
                    armed.timeout = actual;
                    tracing::info!(
                        "{describe} updated with {actual} second timeout, timing slack {slack} seconds"
                    );
                }
                Err(e) => {
                    // Tried again at the next keepalive.
                    tracing::error!("Error while sending keepalive: {e}");
                }
            }
            armed.cfg = self.cfg.clone();
        }
    }

    /// Disarms the watchdog with the magic close (Patroni's `disable`).
    pub fn disable(&mut self) {
        let Some(mut armed) = self.armed.take() else {
            return;
        };
        if !armed.device.can_be_disabled() {
            // Give the administrator some time to clean up.
            let _ = armed.device.keepalive();
            tracing::warn!(
                "Watchdog implementation can't be disabled. System will reboot after {} seconds when watchdog times out.",
                armed.timeout
            );
        }
        let describe = armed.device.describe(&armed.cfg);
        match armed.device.close() {
            Ok(()) => tracing::info!("{describe} disarmed"),
            Err(e) => tracing::error!("Error while disabling watchdog: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
