//! Synchronous replication's pure rules (spec 5.7), the groundwork of P9: which members may be
//! synchronous standbys and in what order, and the `synchronous_standby_names` value that names
//! them. Not wired into `decide` yet: `synchronous_mode` is still refused at start.

/// A member as the leader sees it when choosing synchronous standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCandidate {
    pub name: String,
    /// Its member key says `running`.
    pub running: bool,
    /// It streams from us now (`pg_stat_replication`, matched by `application_name`).
    pub streaming: bool,
    /// `sync_priority` (0, or the `nosync` tag: never synchronous).
    pub sync_priority: i64,
    pub nofailover: bool,
    /// It is to stream from another member (`replicatefrom`), not from us.
    pub cascades: bool,
    /// The position it confirmed (write, flush or replay as `synchronous_commit` asks).
    pub lsn: u64,
    /// It is in the current `sync` key.
    pub in_sync: bool,
}

/// The members that may be synchronous standbys, best first: running, streaming from us, not
/// `nosync`, not cascading, within `maximum_lag_on_syncnode` bytes of `max_lsn` when that is
/// positive (Patroni's reference: the most advanced standby when there are several, else the
/// primary's position); ordered by `nofailover` last, `sync_priority` descending, those already
/// synchronous first (no churn), then the most advanced, then by name (deterministic).
pub fn sync_candidates(
    members: &[SyncCandidate],
    max_lsn: u64,
    maximum_lag_on_syncnode: i64,
) -> Vec<&SyncCandidate> {
    let mut out: Vec<&SyncCandidate> = members
        .iter()
        .filter(|m| m.running && m.streaming && m.sync_priority > 0 && !m.cascades)
        .filter(|m| {
            maximum_lag_on_syncnode <= 0
                || max_lsn.saturating_sub(m.lsn) <= maximum_lag_on_syncnode as u64
        })
        .collect();
    out.sort_by(|a, b| {
        a.nofailover
            .cmp(&b.nofailover)
            .then(b.sync_priority.cmp(&a.sync_priority))
            .then(b.in_sync.cmp(&a.in_sync))
            .then(b.lsn.cmp(&a.lsn))
            .then(a.name.cmp(&b.name))
    });
    out
}

/// A standby name as `synchronous_standby_names` needs it: bare when it is a plain identifier
/// that is not one of the list's keywords, else double-quoted with `"` doubled.
pub fn quote_standby_name(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    let keyword = ["first", "any"].contains(&name.to_ascii_lowercase().as_str());
    if plain && !keyword {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `synchronous_standby_names` as Patroni sets it: the names sorted, then each quoted when it
/// must be. `synchronous_mode: on`: one name alone, several as `N (a,b)` with `N` all of them
/// (the set is already `synchronous_node_count` long), none empty, or `*` in strict mode (commits
/// wait for any standby rather than fall back to asynchronous). `quorum`: `ANY n (a,b)` even for
/// one name, `ANY n (*)` in strict mode with none.
pub fn standby_names(names: &[String], quorum: Option<usize>, strict: bool) -> String {
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let list: Vec<String> = if sorted.is_empty() && strict {
        vec!["*".to_string()]
    } else {
        sorted.into_iter().map(|n| quote_standby_name(n)).collect()
    };
    match (quorum, list.len()) {
        (_, 0) => String::new(),
        (Some(n), _) => format!("ANY {} ({})", n.max(1), list.join(",")),
        (None, 1) => list[0].clone(),
        (None, len) => format!("{len} ({})", list.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, prio: i64, lsn: u64) -> SyncCandidate {
        SyncCandidate {
            name: name.into(),
            running: true,
            streaming: true,
            sync_priority: prio,
            nofailover: false,
            cascades: false,
            lsn,
            in_sync: false,
        }
    }

    fn names(v: Vec<&SyncCandidate>) -> Vec<&str> {
        v.into_iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn nosync_stopped_not_streaming_and_cascading_members_are_never_candidates() {
        let mut stopped = c("b", 1, 10);
        stopped.running = false;
        let mut away = c("c", 1, 10);
        away.streaming = false;
        let mut cascading = c("d", 1, 10);
        cascading.cascades = true;
        let all = [c("a", 0, 10), stopped, away, cascading, c("e", 1, 10)];
        assert_eq!(names(sync_candidates(&all, 10, 0)), ["e"]);
    }

    #[test]
    fn order_priority_then_current_sync_then_position_nofailover_last() {
        let mut current = c("b", 1, 5);
        current.in_sync = true;
        let mut nofailover = c("z", 9, 100);
        nofailover.nofailover = true;
        let all = [
            c("a", 1, 9),
            current,
            c("c", 2, 1),
            nofailover,
            c("d", 1, 9),
        ];
        assert_eq!(
            names(sync_candidates(&all, 100, 0)),
            ["c", "b", "a", "d", "z"]
        );
    }

    #[test]
    fn maximum_lag_on_syncnode_drops_laggards_only_when_positive() {
        let all = [c("a", 1, 90), c("b", 1, 10)];
        assert_eq!(names(sync_candidates(&all, 100, 50)), ["a"]);
        assert_eq!(names(sync_candidates(&all, 100, -1)), ["a", "b"]);
    }

    #[test]
    fn standby_names_as_patroni_writes_them() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(standby_names(&s(&[]), None, false), "");
        assert_eq!(standby_names(&s(&[]), None, true), "*");
        assert_eq!(standby_names(&s(&["node1"]), None, false), "node1");
        assert_eq!(
            standby_names(&s(&["postgres-1"]), None, false),
            "\"postgres-1\""
        );
        assert_eq!(standby_names(&s(&["b", "a"]), None, false), "2 (a,b)");
        assert_eq!(quote_standby_name("first"), "\"first\"");
        assert_eq!(quote_standby_name("ANY"), "\"ANY\"");
        assert_eq!(quote_standby_name("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            standby_names(&s(&["postgres-2", "postgres-0"]), Some(1), false),
            "ANY 1 (\"postgres-0\",\"postgres-2\")"
        );
        assert_eq!(standby_names(&s(&["a"]), Some(1), false), "ANY 1 (a)");
        assert_eq!(standby_names(&s(&[]), Some(1), true), "ANY 1 (*)");
        assert_eq!(standby_names(&s(&[]), Some(1), false), "");
    }
}
