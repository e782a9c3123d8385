//! Row D-3, the lease guard's rule. A task independent of the HA loop (which may be stuck
//! waiting on etcd) asks it every 100 ms while we hold the key.

use std::time::Duration;

use patrol_dcs::Timing;

/// What the lease guard must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Not the leader, or the lease is far enough from its end.
    Idle,
    /// The lease ends within the margin without a refresh: stop PostgreSQL (`left` to go).
    Stop { left: Duration },
    /// As `Stop`, but the cluster is paused: Patroni never stops PostgreSQL in maintenance
    /// mode, not even when the leader lock cannot be refreshed.
    KeepPaused { left: Duration },
}

/// While we hold the key (`left`: how long until etcd could have expired the lease, `None`
/// when we do not hold it), PostgreSQL must be stopped once less than a margin is left without
/// a refresh. The margin is the smaller of `margin_at_refresh` (the `retry_timeout` in effect
/// when the lease was refreshed) and the current one: both belong to timings that satisfy
/// `loop_wait + 2*retry_timeout <= ttl`, so a loop that refreshes on time never comes that
/// close, whatever the timing changed from or to (a margin taken from another timing than the
/// lease's stops a healthy leader: a `retry_timeout` of 10 against a lease of ttl 10). In
/// maintenance mode nothing is stopped (Patroni's `update_lock` failure and DCS-error paths
/// both leave a paused primary running).
pub fn lease_guard(
    left: Option<Duration>,
    margin_at_refresh: Duration,
    timing: Timing,
    paused: bool,
) -> Guard {
    let Some(left) = left else {
        return Guard::Idle;
    };
    let margin = margin_at_refresh.min(timing.retry_timeout());
    if margin < left {
        return Guard::Idle;
    }
    if paused {
        Guard::KeepPaused { left }
    } else {
        Guard::Stop { left }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn d_3_guard_is_safe_while_the_timing_changes_under_a_lease() {
        // Lengthening: the lease in hand is the old 10 s one, refreshed under retry_timeout 3;
        // the new retry_timeout of 10 must not be applied to it.
        let long = Timing::adjusted(30, 10, 10);
        assert_eq!(
            lease_guard(Some(secs(10)), secs(3), long, false),
            Guard::Idle
        );
        // Shortening: a 30 s lease refreshed under retry_timeout 10, the new one is 3.
        let fast = Timing::adjusted(10, 1, 3);
        assert_eq!(
            lease_guard(Some(secs(30)), secs(10), fast, false),
            Guard::Idle
        );
        assert_eq!(
            lease_guard(Some(secs(2)), secs(10), fast, false),
            Guard::Stop { left: secs(2) }
        );
        assert_eq!(lease_guard(None, secs(3), fast, false), Guard::Idle);
    }

    #[test]
    fn d_3_an_expired_lease_stops_with_nothing_left() {
        let t = Timing::adjusted(10, 1, 3);
        assert_eq!(
            lease_guard(Some(Duration::ZERO), secs(3), t, false),
            Guard::Stop {
                left: Duration::ZERO
            }
        );
        assert_eq!(
            lease_guard(Some(secs(1)), secs(3), t, true),
            Guard::KeepPaused { left: secs(1) }
        );
    }
}
