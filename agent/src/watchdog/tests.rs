//! The facade over Patroni's `testing` driver writing to a plain file: what it writes when.

use std::path::{Path, PathBuf};

use patrol_dcs::Timing;

use super::*;

fn timing(ttl: u64, loop_wait: u64) -> Timing {
    Timing {
        ttl,
        loop_wait,
        ..Timing::default()
    }
}

fn testing(mode: WatchdogMode, device: &Path) -> WatchdogConfig {
    WatchdogConfig {
        mode,
        device: device.to_path_buf(),
        safety_margin: 5,
        driver: WatchdogDriver::Testing,
    }
}

fn device_file(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("watchdog");
    std::fs::write(&path, "").expect("device file");
    path
}

fn written(path: &Path) -> String {
    std::fs::read_to_string(path).expect("device file")
}

#[test]
fn armed_fed_retimed_and_closed_as_patroni_writes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = device_file(&dir);
    let mut wd = Watchdog::new(&testing(WatchdogMode::Required, &dev), timing(30, 10));
    assert_eq!(
        wd.view(),
        WatchdogView {
            enabled: true,
            required: true,
            armed: false,
            failed: false
        }
    );
    wd.keepalive(); // not armed: nothing
    wd.activate().expect("armed");
    assert!(wd.view().armed);
    assert_eq!(wd.armed_timeout(), Some(25));
    wd.activate().expect("already armed: nothing");
    wd.keepalive();
    // A new ttl is applied at the next keepalive, after feeding.
    wd.set_timing(timing(20, 10));
    assert_eq!(written(&dev), "Ctimeout=25\n1");
    wd.keepalive();
    assert_eq!(wd.armed_timeout(), Some(15));
    wd.disable();
    assert_eq!(written(&dev), "Ctimeout=25\n11Ctimeout=15\nV");
    assert!(!wd.view().armed);
    wd.disable(); // not armed: nothing
    assert_eq!(written(&dev), "Ctimeout=25\n11Ctimeout=15\nV");
}

#[test]
fn safety_margin_minus_one_is_half_the_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = device_file(&dir);
    let mut cfg = testing(WatchdogMode::Automatic, &dev);
    cfg.safety_margin = -1;
    let mut wd = Watchdog::new(&cfg, timing(31, 10));
    wd.activate().expect("armed");
    assert_eq!(written(&dev), "Ctimeout=15\n");
}

#[test]
fn required_without_slack_or_device_fails_and_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = device_file(&dir);
    // ttl 10, loop_wait 10: timeout 5 is shorter than loop_wait.
    let mut wd = Watchdog::new(&testing(WatchdogMode::Required, &dev), timing(10, 10));
    assert!(wd.view().failed);
    let err = wd.activate().expect_err("no slack");
    assert!(err.contains("less than 2x loop_wait"), "{err}");
    assert_eq!(written(&dev), "", "the device was never opened");

    let missing = dir.path().join("missing");
    let mut wd = Watchdog::new(&testing(WatchdogMode::Required, &missing), timing(30, 10));
    assert!(wd.view().failed);
    let err = wd.activate().expect_err("no device");
    assert!(err.contains("Can't open watchdog device"), "{err}");
    assert!(!wd.view().armed);
}

#[test]
fn automatic_goes_on_without_a_device_until_something_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing");
    let mut wd = Watchdog::new(&testing(WatchdogMode::Automatic, &missing), timing(30, 10));
    assert!(!wd.view().failed, "only a required watchdog fails");
    wd.activate().expect("automatic never fails");
    assert_eq!(
        wd.view(),
        WatchdogView {
            enabled: false,
            required: false,
            armed: false,
            failed: false
        },
        "no retry until the configuration or timing changes"
    );
    wd.set_timing(timing(40, 10));
    assert!(wd.view().enabled);
}

#[test]
fn mode_off_never_opens_and_turning_it_off_disarms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dev = device_file(&dir);
    let mut wd = Watchdog::new(&testing(WatchdogMode::Off, &dev), timing(30, 10));
    assert_eq!(wd.view(), WatchdogView::default());
    wd.activate().expect("nothing to do");
    assert_eq!(written(&dev), "");

    let mut wd = Watchdog::new(&testing(WatchdogMode::Automatic, &dev), timing(30, 10));
    wd.activate().expect("armed");
    wd.reload(&testing(WatchdogMode::Off, &dev));
    assert_eq!(written(&dev), "Ctimeout=25\nV");
    assert_eq!(wd.view(), WatchdogView::default());
}

#[test]
fn a_new_device_is_taken_at_the_next_keepalive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (device_file(&dir), dir.path().join("other"));
    std::fs::write(&b, "").expect("device file");
    let mut wd = Watchdog::new(&testing(WatchdogMode::Required, &a), timing(30, 10));
    wd.activate().expect("armed");
    wd.reload(&testing(WatchdogMode::Required, &b));
    assert_eq!(written(&a), "Ctimeout=25\n");
    wd.keepalive();
    assert_eq!(written(&a), "Ctimeout=25\n1V");
    assert_eq!(written(&b), "Ctimeout=25\n");
    assert!(wd.view().armed);
}
