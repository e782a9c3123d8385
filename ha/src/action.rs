//! What `decide` returns: the actions of one cycle, in order.

use patrol_dcs::History;

use crate::Upstream;

/// Imperative steps, executed in order. The executor's contract: an action that fails (a lost
/// race, a compare that failed, an error) ends the cycle and the next cycle decides again
/// (row U-2.2/1.2: a lost leader race is followed by following the winner next cycle); a
/// [`Setback`] is answered at once by [`crate::after_setback`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for `initialize` (create `""` if absent); losing is a failure that ends the cycle.
    RaceInitialize,
    /// initdb, configure, start as primary, create roles (long operation).
    Bootstrap,
    /// Bootstrap finished: store the sysid in `initialize`, `config` = bootstrap.dcs, take the
    /// leader key.
    FinishBootstrap {
        sysid: String,
    },
    /// Bootstrap failed: release what we hold, remove `initialize` and the data directory, exit.
    AbortBootstrap {
        reason: String,
    },
    /// Create the data directory with `create_replica_methods` (long operation), then start
    /// as a standby: from `from`, or without a leader (`None`: only the methods marked
    /// `no_leader`); `basebackup_only` after `POST /reinitialize` with `from_leader`.
    CreateReplica {
        from: Option<Upstream>,
        basebackup_only: bool,
    },
    /// Adopt an existing data directory as the cluster's (no `initialize` key yet).
    WriteInitialize {
        sysid: String,
    },
    /// Start PostgreSQL: as primary (`None`) or as standby following `Some(upstream)` or nobody
    /// (`Some(None)`: read-only, waiting for a leader).
    Start {
        standby_of: Option<Option<Upstream>>,
    },
    AcquireLeaderKey,
    RefreshLeaderKey,
    ReleaseLeaderKey,
    Promote,
    /// Stop PostgreSQL at once (immediate); the data directory then needs a rewind before it
    /// can follow. With `leader: None` (no usable DCS) it restarts read-only following nobody.
    Demote {
        leader: Option<Upstream>,
    },
    /// Stop (if running), finish crash recovery, `pg_rewind` from the leader, start as its
    /// standby (long operation).
    Rewind(Upstream),
    /// Remove the data directory so the next cycle clones it again.
    RemoveDataDirectory {
        reason: String,
    },
    /// Publish the timeline history after a promotion.
    WriteHistory(History),
    /// Planned switchover on the leader: CHECKPOINT, fast stop, release the key once stopped
    /// (replicas have the shutdown checkpoint), restart as a standby (long operation).
    GracefulDemote,
    /// Row SC-2: the leader's primary becomes the standby leader of a standby cluster: fast
    /// stop keeping the key, archive the WAL segment of the shutdown checkpoint when archiving
    /// is on (so that a primary promoted from that archive needs no rewind of this node), then
    /// start as a standby of the remote source (long operation).
    DemoteCluster(Upstream),
    /// Row H-1.6: write the dynamic configuration in effect as the `config` key, which is
    /// missing (an adopted data directory, a wiped DCS).
    WriteConfig,
    /// Reset the `failover` key to `{}` (compare-and-swap on the revision observed).
    ClearFailover {
        version: i64,
    },
    /// Point the standby at this upstream (rewrite config and reload) if it is not already.
    Follow(Upstream),
    /// Row H-1.2n: stop streaming (the configuration rewritten without `primary_conninfo`, then
    /// reloaded): a `nostream` member recovers from the archive only.
    Unfollow,
    /// Leader only: make sure every other member has its physical slot.
    EnsureSlots {
        names: Vec<String>,
    },
    /// Leader only: write the `sync` key (compare-and-swap on the revision observed, then on
    /// the one the previous write of this cycle left).
    WriteSync {
        leader: String,
        voters: Vec<String>,
        quorum: usize,
    },
    /// Delete the `sync` key (compare-and-swap): synchronous replication was turned off.
    DeleteSync,
    /// Set `synchronous_standby_names` (rewrite the configuration and reload); `None` gives
    /// the user's own value back.
    SetSyncStandbyNames(Option<String>),
    /// Open the watchdog and set its timeout (rows W-2, W-4): from now on it must be fed (after
    /// every refresh of the leader key) or it resets the host. In `required` mode a failure is
    /// [`Setback::WatchdogUnavailable`]; in `automatic` mode it is a warning.
    ArmWatchdog,
    /// Close the watchdog cleanly (magic close) (row W-3).
    DisarmWatchdog,
    /// Run the next cycle soon (about a second): PostgreSQL is taking up new synchronous
    /// standbys that the `sync` key may name once it counts them.
    RecheckSoon,
    /// Row D-2F: every member of the `failsafe` key accepted our `POST /failsafe` (sent at the
    /// observation's `now`): keep leading without the DCS until `ttl` after that call (the
    /// lease guard's deadline), and ask again within [`crate::failsafe::hold_wait`].
    HoldAsFailsafe,
    /// Row PP-1: do not take part in a leader race before `until` (monotonic, as the
    /// observation's `now`), after giving up the key because the pre-promote script failed.
    SkipRacesUntil(std::time::Duration),
    /// Unrecoverable: log and exit non-zero.
    Fatal {
        reason: String,
    },
}

/// The actions of one cycle with the human reason (logged when it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reason: String,
    pub actions: Vec<Action>,
    /// What else is worth logging this cycle (synchronous replication's changes).
    pub notes: Vec<String>,
}

/// What an action ran into that the core must answer at once, in the same cycle, before any
/// other call can wait another `retry_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setback {
    /// The leader-key transaction says the key is not ours (row D-1/H-1.3).
    KeyNotOurs,
    /// etcd did not answer a call the leader needs (keep-alive, refresh, status write) within
    /// `retry_timeout` (row D-2).
    DcsUnreachable,
    /// `watchdog.mode: required` and the watchdog could not be armed (row W-4).
    WatchdogUnavailable,
}

pub(crate) fn decision(reason: impl Into<String>, actions: Vec<Action>) -> Decision {
    Decision {
        reason: reason.into(),
        actions,
        notes: Vec::new(),
    }
}
