//! Quorum commit (`synchronous_mode: quorum`): the order in which the primary changes the `/sync`
//! key (`leader`, `quorum`, voters in `sync_standby`) and `synchronous_standby_names`
//! (`ANY numsync (sync)`) to reach the state it wants, step for step as Patroni's
//! `QuorumStateResolver` does. Pure: [`resolve`] returns the [`Transition`]s, the caller
//! performs them in order and stops at the first failure or at [`Transition::Restart`].
//!
//! What is dangerous here is the order. A commit waits for `numsync` of `sync`; a replica is
//! promoted after it has seen `quorum` of the voters. Every step keeps the two kinds of sets
//! overlapping (`|voters ∪ {leader} ∪ sync ∪ {primary}| <= quorum + numsync + 1`), so it
//! raises the one number before it lowers the other, and adds or drops names on the side that
//! keeps the overlap first. A reordering loses commits on failover; the property tests in
//! `quorum/tests.rs` check the overlap after every step of random runs.
//!
//! Where Patroni would raise and leave the cycle without a change (a failed `assert`, an
//! impossible step), [`resolve`] returns no transitions and says why in a warning. Patroni's
//! choices are kept even where they look odd, one of them included: it gives up for good on a
//! reachable state (`patroni_gives_up_when_the_factor_rises_past_the_standbys_to_add`).

use std::collections::BTreeMap;
use std::fmt;
use std::mem::discriminant;

/// What the primary knows when it resolves, Patroni's arguments by the same names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuorumInput {
    /// `leader` of the `/sync` key.
    pub leader: String,
    /// `quorum` of the `/sync` key, as read (it may be anything).
    pub quorum: i64,
    /// `sync_standby` of the `/sync` key: the voters of a leader race.
    pub voters: Vec<String>,
    /// `n` of `synchronous_standby_names = 'ANY n (..)'`.
    pub numsync: usize,
    /// The names listed in `synchronous_standby_names`.
    pub sync: Vec<String>,
    /// How many of `sync` are known to have reached a safe position since they were listed.
    pub numsync_confirmed: usize,
    /// The members streaming from us that may be synchronous.
    pub active: Vec<String>,
    /// `synchronous_node_count`, as the configuration gives it.
    pub sync_wanted: i64,
    /// Our own name: the leader the `/sync` key should name (different right after a failover).
    pub leader_wanted: String,
}

/// One step towards the wanted state. Names are in the order of their lower-cased spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Write the `/sync` key (compare-and-swap on the version read).
    Quorum {
        leader: String,
        quorum: usize,
        voters: Vec<String>,
    },
    /// Set `synchronous_standby_names` to `ANY numsync (names)` (empty when `names` is).
    Sync { numsync: usize, names: Vec<String> },
    /// Nothing more can be done on this state: read it again and resolve anew soon (standbys
    /// that were just listed may confirm within a second). Always the last transition.
    Restart,
}

/// The transitions to perform in order, and the warnings to log (an unsafe state found and
/// reset, or a resolution given up).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolution {
    pub transitions: Vec<Transition>,
    pub warnings: Vec<String>,
}

/// The transitions from `input` to the wanted state: `sync = voters = active`,
/// `numsync = min(sync_wanted, |active|)`, `quorum = |active| - numsync`, with the overlap
/// kept after every step. Consecutive transitions of one kind are merged (skipping the first
/// is as if nobody saw it), and nothing follows a [`Transition::Restart`].
pub fn resolve(input: &QuorumInput) -> Resolution {
    let mut warnings = Vec::new();
    let transitions = match run(input, &mut warnings) {
        Ok(transitions) => transitions,
        Err(e) => {
            warnings.push(format!("quorum state not resolved, nothing changed: {e}"));
            Vec::new()
        }
    };
    Resolution {
        transitions,
        warnings,
    }
}

/// [`resolve`] with the reason it gave up as an error: Patroni's exception.
fn run(input: &QuorumInput, warnings: &mut Vec<String>) -> Result<Vec<Transition>, QuorumError> {
    let mut resolver = Resolver::new(input);
    resolver.generate(warnings)?;
    Ok(merge(resolver.out))
}

fn merge(all: Vec<Transition>) -> Vec<Transition> {
    let mut out = Vec::new();
    let mut all = all.into_iter().peekable();
    while let Some(t) = all.next() {
        if all
            .peek()
            .is_some_and(|next| discriminant(next) == discriminant(&t))
        {
            continue;
        }
        let restart = t == Transition::Restart;
        out.push(t);
        if restart {
            break;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct QuorumError(String);

impl fmt::Display for QuorumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Step = Result<(), QuorumError>;

/// Names matched case-insensitively that keep a spelling (Patroni's `CaseInsensitiveSet`):
/// keyed by the lower-cased name, iterated in that order. Which spelling an operation keeps
/// follows Python's set operators, see each one.
#[derive(Debug, Clone, Default)]
struct Names(BTreeMap<String, String>);

impl Names {
    /// The last spelling of a name given wins.
    fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Names {
        Names(
            names
                .into_iter()
                .map(|n| (n.as_ref().to_lowercase(), n.as_ref().to_string()))
                .collect(),
        )
    }

    fn one(name: &str) -> Names {
        Names::new([name])
    }

    fn len(&self) -> i128 {
        self.0.len() as i128
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `self | other`: `other`'s spelling of a name in both.
    fn union(&self, other: &Names) -> Names {
        let mut out = self.clone();
        out.0
            .extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// `self - other` (also `self -= other`): `self`'s spelling.
    fn minus(&self, other: &Names) -> Names {
        Names(
            self.0
                .iter()
                .filter(|(k, _)| !other.0.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// `self & other`: `other`'s spelling (Python builds it from `other`).
    fn and(&self, other: &Names) -> Names {
        other.minus(&other.minus(self))
    }

    /// `self &= other`: `self`'s spelling.
    fn keep_in(&self, other: &Names) -> Names {
        self.minus(&self.minus(other))
    }

    fn is_subset(&self, other: &Names) -> bool {
        self.0.keys().all(|k| other.0.contains_key(k))
    }

    fn is_proper_subset(&self, other: &Names) -> bool {
        self.len() < other.len() && self.is_subset(other)
    }

    /// The first `n` spellings in code point order (descending when `rev`), as Python's
    /// `sorted(names)[:n]` takes them, a negative `n` included.
    fn sorted_prefix(&self, n: i128, rev: bool) -> Names {
        let mut sorted: Vec<&String> = self.0.values().collect();
        sorted.sort();
        if rev {
            sorted.reverse();
        }
        let len = sorted.len() as i128;
        let take = if n >= 0 { n.min(len) } else { (len + n).max(0) };
        Names::new(sorted.into_iter().take(take as usize))
    }

    fn to_vec(&self) -> Vec<String> {
        self.0.values().cloned().collect()
    }
}

/// Equal when the same names, whatever the spelling (Python's set equality).
impl PartialEq for Names {
    fn eq(&self, other: &Names) -> bool {
        self.0.len() == other.0.len() && self.is_subset(other)
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.values().map(String::as_str).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

/// A count of a transition: never negative once the step's checks passed.
fn count(n: i128, what: &str) -> Result<usize, QuorumError> {
    usize::try_from(n).map_err(|_| QuorumError(format!("{what} {n} out of range")))
}

/// Patroni's resolver: the state as the steps so far left it, and the steps. Counts are
/// `i128` so that no sum of the inputs overflows and a negative difference is seen as such.
struct Resolver {
    leader: String,
    quorum: i128,
    voters: Names,
    numsync: i128,
    sync: Names,
    numsync_confirmed: i128,
    active: Names,
    sync_wanted: i128,
    leader_wanted: String,
    out: Vec<Transition>,
}

impl Resolver {
    fn new(input: &QuorumInput) -> Resolver {
        let sync = Names::new(&input.sync);
        Resolver {
            leader: input.leader.clone(),
            quorum: i128::from(input.quorum),
            voters: Names::new(&input.voters),
            // More than the names listed cannot be waited for.
            numsync: (input.numsync as i128).min(sync.len()),
            sync,
            numsync_confirmed: input.numsync_confirmed as i128,
            active: Names::new(&input.active),
            sync_wanted: i128::from(input.sync_wanted),
            leader_wanted: input.leader_wanted.clone(),
            out: Vec::new(),
        }
    }

    /// Any set that can acknowledge a commit (the primary and `numsync` of `sync`) meets any
    /// set that can promote (the leader of `/sync` and `quorum` of the voters), and in a state
    /// between two steps one of the two lists holds the other.
    fn check_invariants(&self) -> Step {
        let voters = self.voters.union(&Names::one(&self.leader));
        let sync = self.sync.union(&Names::one(&self.leader_wanted));
        let nodes = voters.union(&sync).len();
        if !self.voters.is_empty() && nodes > self.quorum + self.numsync + 1 {
            return Err(QuorumError(format!(
                "quorum and synchronous standbys not guaranteed to overlap: \
                 {nodes} nodes > quorum {} + numsync {} + 1",
                self.quorum, self.numsync
            )));
        }
        if !(voters.is_subset(&sync) || sync.is_subset(&voters)) {
            return Err(QuorumError(format!(
                "voters and synchronous standbys differ: only voters {}, only synchronous {}",
                voters.minus(&sync),
                sync.minus(&voters)
            )));
        }
        Ok(())
    }

    /// Write `quorum` and `voters` (and `leader` when given) to `/sync`. Unless a leader is
    /// given: with no voter and no confirmed standby, reset to none; with `adjust_quorum`,
    /// raise the quorum by the listed standbys not confirmed yet, so that the race still finds
    /// one that has every commit.
    fn quorum_update(
        &mut self,
        mut quorum: i128,
        mut voters: Names,
        leader: Option<String>,
        adjust_quorum: bool,
    ) -> Step {
        if quorum < 0 {
            return Err(QuorumError(format!("quorum {quorum} < 0 of {voters}")));
        }
        if quorum > 0 && quorum >= voters.len() {
            return Err(QuorumError(format!(
                "quorum {quorum} >= {} voters {voters}",
                voters.len()
            )));
        }
        let leader_changes = leader.as_ref().is_some_and(|l| *l != self.leader);
        if let Some(leader) = leader {
            self.leader = leader;
        } else if self.numsync_confirmed == 0 && self.voters.is_empty() {
            quorum = 0;
            voters = Names::default();
        } else if adjust_quorum {
            quorum += (self.numsync - self.numsync_confirmed).max(0);
        }
        if !leader_changes && quorum == self.quorum && voters == self.voters {
            if !self.voters.is_empty() {
                return Ok(());
            }
            // Still no voter: the caller should read the state again (Patroni then goes on
            // with the same write, which the merge drops after this).
            self.out.push(Transition::Restart);
        }
        self.quorum = quorum;
        self.voters = voters;
        self.check_invariants()?;
        self.out.push(Transition::Quorum {
            leader: self.leader.clone(),
            quorum: count(self.quorum, "quorum")?,
            voters: self.voters.to_vec(),
        });
        Ok(())
    }

    /// Set `synchronous_standby_names` to `ANY numsync (sync)`.
    fn sync_update(&mut self, numsync: i128, sync: Names) -> Step {
        if numsync < 0 {
            return Err(QuorumError(format!("numsync {numsync} < 0 of {sync}")));
        }
        if numsync > sync.len() {
            return Err(QuorumError(format!(
                "numsync {numsync} > {} names {sync}",
                sync.len()
            )));
        }
        self.numsync = numsync;
        self.sync = sync;
        self.check_invariants()?;
        self.out.push(Transition::Sync {
            numsync: count(self.numsync, "numsync")?,
            names: self.sync.to_vec(),
        });
        Ok(())
    }

    fn generate(&mut self, warnings: &mut Vec<String>) -> Step {
        let start = if self.leader_wanted != self.leader {
            self.take_over()
        } else {
            self.check_invariants().map(|()| true)
        };
        match start {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                // Unsafe (or the takeover impossible): the voters become what is listed.
                warnings.push(format!(
                    "{e}; resetting /sync from synchronous_standby_names"
                ));
                self.quorum_update(
                    self.sync.len() - self.numsync,
                    self.sync.clone(),
                    None,
                    true,
                )?;
            }
        }
        if self.leader != self.leader_wanted {
            return Err(QuorumError(format!(
                "/sync still names {} as the leader, not {}",
                self.leader, self.leader_wanted
            )));
        }

        // After a restart or a failover nothing is confirmed yet: assume what the quorum allows.
        let listed_active = self.sync.and(&self.active);
        if self.numsync_confirmed == 0 && !listed_active.is_empty() {
            self.numsync_confirmed = listed_active.len().min(self.voters.len() - self.quorum);
        }

        self.finish_interrupted()?;
        // A steady state now: move towards the wanted one.
        self.remove_gone()?;
        self.add_new()?;
        self.change_replication_factor()
    }

    /// Right after a failover (`/sync` names the old leader): make the old leader a voter and
    /// name us. Ok(false) when no listed standby streams from us yet: give them time.
    fn take_over(&mut self) -> Result<bool, QuorumError> {
        let voters = self
            .voters
            .minus(&Names::one(&self.leader_wanted))
            .union(&Names::one(&self.leader));
        if self.sync.is_empty() {
            // Nothing listed yet: list first, then write the key.
            self.sync_update(voters.len() - self.quorum, voters.clone())?;
        }
        self.quorum_update(self.quorum, voters, Some(self.leader_wanted.clone()), true)?;
        Ok(!self.sync.and(&self.active).is_empty())
    }

    /// Finish what an interrupted run left half done, until voters and `sync` are the same.
    fn finish_interrupted(&mut self) -> Step {
        if self.sync.is_proper_subset(&self.voters) {
            // Voters were being changed: drop those that are gone and not listed, then list
            // those that stream.
            let gone = self.voters.minus(&self.sync.union(&self.active));
            if !gone.is_empty() {
                let adjust = self.sync.minus(&self.active).is_empty();
                self.quorum_update(
                    self.voters.len() - gone.len() - self.numsync,
                    self.voters.minus(&gone),
                    None,
                    adjust,
                )?;
            }
            let to_list = self.voters.and(&self.active).minus(&self.sync);
            if !to_list.is_empty() {
                self.sync_update(self.numsync, self.sync.union(&to_list))?;
            }
        } else if self.voters.is_proper_subset(&self.sync) {
            // `sync` was being changed. Unlist those that are gone while some stay listed and
            // some of those are voters; make voters of the listed that stream; unlist the
            // rest.
            let gone = self.sync.minus(&self.active);
            let sync = self.sync.minus(&gone);
            if !gone.is_empty()
                && !sync.is_empty()
                && (self.voters.is_empty() || !sync.and(&self.voters).is_empty())
            {
                self.sync_update(self.numsync.min(self.sync.len() - gone.len()), sync)?;
            }
            let to_vote = self.sync.minus(&self.voters).and(&self.active);
            if !to_vote.is_empty() {
                let voters = self.voters.union(&to_vote);
                self.quorum_update(voters.len() - self.numsync, voters, None, true)?;
            }
            let not_voting = self.sync.minus(&self.voters);
            if !not_voting.is_empty() {
                self.sync_update(
                    self.numsync.min(self.sync.len() - not_voting.len()),
                    self.sync.minus(&not_voting),
                )?;
            }
        }
        if self.voters != self.sync {
            return Err(QuorumError(format!(
                "voters {} and synchronous standbys {} still differ",
                self.voters, self.sync
            )));
        }

        let margin = self.quorum + self.numsync.min(self.numsync_confirmed)
            - self.voters.union(&self.sync).len();
        if margin > 0 {
            // The replication factor was being changed.
            if self.numsync > self.sync_wanted {
                let numsync = self.sync_wanted.max(self.voters.len() - self.quorum);
                self.sync_update(numsync, self.sync.clone())?;
            } else {
                let quorum = self.sync.len() - self.numsync;
                self.quorum_update(quorum, self.voters.clone(), None, true)?;
            }
        } else {
            let margin = self.quorum + self.numsync - self.voters.union(&self.sync).len();
            if self.numsync == self.sync_wanted
                && margin > 0
                && self.numsync > self.numsync_confirmed
            {
                let quorum = self.sync.len() - self.numsync;
                self.quorum_update(quorum, self.voters.clone(), None, true)?;
            }
        }
        Ok(())
    }

    /// Drop the listed standbys that no longer stream from us, from `sync` and the voters.
    fn remove_gone(&mut self) -> Step {
        let mut gone = self.sync.minus(&self.active);
        if gone.is_empty() {
            return Ok(());
        }
        if self.sync == gone {
            self.quorum_update(0, Names::default(), None, false)?;
            return self.sync_update(0, Names::default());
        }
        // While the quorum allows, drop them by lowering it (in reverse name order, Patroni's
        // deterministic choice), raising numsync towards the wanted on the way.
        if self.quorum != 0 {
            let drop = gone.sorted_prefix(self.quorum, true);
            let sync = self.sync.minus(&drop);
            let numsync = self.sync_wanted.max(self.numsync).min(sync.len());
            self.sync_update(numsync, sync)?;
            let voters = self.voters.minus(&drop);
            gone = gone.keep_in(&self.sync);
            self.quorum_update(voters.len() - self.numsync, voters, None, gone.is_empty())?;
        }
        if gone.is_empty() {
            return Ok(());
        }
        if self.quorum != 0 {
            return Err(QuorumError(format!(
                "quorum {} left while removing {gone}",
                self.quorum
            )));
        }
        // The rest lowers numsync: voters first (raising the quorum by what numsync will
        // lose beyond the wanted), then `sync`.
        let numsync = self.numsync - gone.len();
        let sync = self.sync.minus(&gone);
        let voters = self.voters.minus(&gone);
        let sync_decrease = numsync - self.sync_wanted.min(sync.len());
        let quorum = if sync_decrease != 0 {
            sync_decrease.min(voters.len() - 1)
        } else {
            0
        };
        self.quorum_update(quorum, voters, None, false)?;
        self.sync_update(numsync, sync)
    }

    /// List the standbys that stream from us and are not listed yet, and make them voters.
    fn add_new(&mut self) -> Step {
        let mut to_add = self.active.minus(&self.sync);
        if to_add.is_empty() {
            return Ok(());
        }
        let sync_wanted = self.sync_wanted.min(self.sync.union(&to_add).len());
        let increase = sync_wanted - self.numsync;
        if increase > 0 {
            // First reach the wanted numsync, with the first names (in code point order) when
            // some are listed already, with all of them when none is.
            let (add, increase) = if self.sync.is_empty() {
                (to_add.clone(), increase)
            } else {
                let add = to_add.sorted_prefix(increase, false);
                let len = add.len();
                (add, len)
            };
            self.sync_update(self.numsync + increase, self.sync.union(&add))?;
            let voters = self.voters.union(&add);
            self.quorum_update(voters.len() - sync_wanted, voters, None, true)?;
            to_add = to_add.minus(&self.sync);
        }
        if !to_add.is_empty() {
            let voters = self.voters.union(&to_add);
            let adjust = sync_wanted > self.numsync_confirmed;
            self.quorum_update(voters.len() - sync_wanted, voters, None, adjust)?;
            self.sync_update(sync_wanted, self.sync.union(&to_add))?;
        }
        Ok(())
    }

    /// Apply a change of `synchronous_node_count`: numsync up then quorum down, or quorum up
    /// then numsync down.
    fn change_replication_factor(&mut self) -> Step {
        let increase = self.sync_wanted.min(self.sync.len()) - self.numsync;
        if increase > 0 {
            self.sync_update(self.numsync + increase, self.sync.clone())?;
            let quorum = self.voters.len() - self.numsync;
            self.quorum_update(quorum, self.voters.clone(), None, true)?;
        } else if increase < 0 {
            if self.quorum - increase < self.voters.len() {
                let quorum = self.voters.len() - self.numsync - increase;
                let adjust = self.sync_wanted > self.numsync_confirmed;
                self.quorum_update(quorum, self.voters.clone(), None, adjust)?;
            }
            self.sync_update(self.numsync + increase, self.sync.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
