//! The etcd members a process talks to: one at a time, in the order configured, moving on to the
//! next when the current one fails or stalls, as Patroni's etcd3 client does (it switches its
//! base URI to the next machine and restarts its watcher).
//!
//! Why not the crate's own balancing: `etcd_client::Client::connect` with several endpoints
//! puts them all behind one tower power-of-two-choices balancer. A member that refuses
//! connections drops out of it, but a frozen one (SIGSTOP, a hung host: TCP still accepts,
//! nothing answers) stays "ready" and keeps getting its share of the requests until the HTTP/2
//! keep-alive gives up on the connection, and then again after every reconnect; a caller never
//! learns which member a request went to, so it cannot steer away from it. Here every member
//! has its own client, a call knows which one it used (the [`Conn::generation`]), and a failure
//! moves everyone — the calls, the lease keep-alive stream and the watch stream — to the next
//! member.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

use super::{classify, DcsError};

/// The least time one attempt on one member gets (Patroni: one second per node); with a short
/// `retry_timeout` fewer members are tried.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// A pause after every member failed at once (all refuse connections), so that a call keeps
/// trying until its deadline without spinning.
const PAUSE: Duration = Duration::from_millis(100);

/// The pacing of one call's attempts, as Patroni's `Retry` with its per-node timeouts: attempt
/// after attempt, each on the member in use (the previous failure moved it on) and bounded by
/// its share of the deadline, until one answers or the deadline passes. A member being elected
/// etcd's leader, or all of them refusing for a moment, costs attempts, not the call.
pub(super) struct Retry {
    end: Instant,
    each: Duration,
    members: usize,
    started: Instant,
    /// Failures in a row that came at once.
    quick: usize,
}

impl Retry {
    /// The limit of the next attempt, or `None` once the deadline has passed.
    pub async fn next(&mut self) -> Option<Duration> {
        if self.quick >= self.members {
            self.quick = 0;
            tokio::time::sleep_until(self.end.min(Instant::now() + PAUSE)).await;
        }
        let left = self.end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        self.started = Instant::now();
        Some(self.each.min(left))
    }

    /// The last attempt failed on its member.
    pub fn failed(&mut self) {
        if self.started.elapsed() < PAUSE {
            self.quick += 1;
        } else {
            self.quick = 0;
        }
    }
}

/// The member in use and its client.
struct Current {
    index: usize,
    client: Option<Client>,
    /// Bumped at every switch: a failure reported for an older generation is about a member
    /// already left, and moves nobody.
    generation: u64,
}

/// A client of the member in use, with the generation it belongs to.
pub(super) struct Conn {
    pub client: Client,
    pub generation: u64,
}

pub(super) struct Members {
    endpoints: Vec<String>,
    options: ConnectOptions,
    current: Mutex<Current>,
    /// The generation in use, for the streams that must follow a switch (the watch).
    switched: watch::Sender<u64>,
}

impl Members {
    pub fn new(endpoints: Vec<String>, options: ConnectOptions) -> Result<Members, DcsError> {
        if endpoints.is_empty() {
            return Err(DcsError::Other("no etcd endpoints".into()));
        }
        Ok(Members {
            endpoints,
            options,
            current: Mutex::new(Current {
                index: 0,
                client: None,
                generation: 0,
            }),
            switched: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long one attempt may take: `total` split evenly across the members, at least
    /// [`MIN_ATTEMPT`] (so with a short `total` fewer members get a full attempt), the whole of
    /// `total` when there is one member.
    pub fn share(&self, total: Duration) -> Duration {
        let n = self.endpoints.len();
        let k = (1..=n)
            .rev()
            .find(|&k| total / k as u32 >= MIN_ATTEMPT)
            .unwrap_or(1);
        total / k as u32
    }

    /// The attempts of one call within `total`: see [`Retry`].
    pub fn retry(&self, total: Duration) -> Retry {
        let each = self.share(total);
        let now = Instant::now();
        Retry {
            end: now + total,
            each,
            members: self.endpoints.len(),
            started: now,
            quick: 0,
        }
    }

    /// The member in use (`scheme://host:port`).
    pub fn endpoint(&self) -> String {
        self.endpoints[self.lock().index].clone()
    }

    /// Wakes when the member in use changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.switched.subscribe()
    }

    /// The generation in use now.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// A client of the member in use, connecting first if needed (lazily: the channel connects
    /// on the first request; with a user and password, `connect` authenticates, so it can fail
    /// or stall like any call: the caller bounds it). A failed connect moves to the next member.
    pub async fn conn(&self) -> Result<Conn, DcsError> {
        let (endpoint, generation) = {
            let cur = self.lock();
            if let Some(c) = &cur.client {
                return Ok(Conn {
                    client: c.clone(),
                    generation: cur.generation,
                });
            }
            (self.endpoints[cur.index].clone(), cur.generation)
        };
        match Client::connect([endpoint], Some(self.options.clone())).await {
            Ok(client) => {
                let mut cur = self.lock();
                if cur.generation == generation && cur.client.is_none() {
                    cur.client = Some(client.clone());
                }
                Ok(Conn { client, generation })
            }
            Err(e) => {
                let e = classify(e);
                self.failed(generation, &e);
                Err(e)
            }
        }
    }

    /// One attempt of `f` on the member in use, bounded by `limit`; returns its answer and the
    /// generation it came from. A failure that is about the member rather than the request (it
    /// is unreachable, or did not answer in time) moves to the next member.
    pub async fn attempt<T, F, Fut>(&self, limit: Duration, f: &F) -> Result<(T, u64), DcsError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut generation = self.generation();
        let answer = timeout(limit, async {
            let conn = self.conn().await?;
            generation = conn.generation;
            f(conn.client).await.map_err(classify)
        })
        .await;
        let e = match answer {
            Ok(Ok(v)) => return Ok((v, generation)),
            Ok(Err(e @ DcsError::Unavailable(_))) => e,
            Ok(Err(e)) => return Err(e),
            Err(_) => DcsError::Unavailable(format!("no answer within {limit:?}")),
        };
        self.failed(generation, &e);
        Err(e)
    }

    /// The member of `generation` failed (`why`): move to the next one, unless someone already
    /// did. With a single member, only the connection is dropped, so the next call starts a
    /// fresh one.
    pub fn failed(&self, generation: u64, why: &DcsError) {
        let mut cur = self.lock();
        if cur.generation != generation {
            return;
        }
        let from = cur.index;
        cur.index = (from + 1) % self.endpoints.len();
        cur.client = None;
        cur.generation += 1;
        let generation = cur.generation;
        drop(cur);
        if self.endpoints.len() > 1 {
            tracing::warn!(
                "etcd member {} failed ({why}); switching to {}",
                self.endpoints[from],
                self.endpoints[(from + 1) % self.endpoints.len()]
            );
        } else {
            tracing::debug!("etcd {} failed ({why}); reconnecting", self.endpoints[from]);
        }
        self.switched.send_replace(generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Members {
        let eps = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 2379 + i))
            .collect();
        Members::new(eps, ConnectOptions::new()).expect("endpoints")
    }

    #[test]
    fn the_deadline_is_split_across_members_with_at_least_a_second_each() {
        let s = Duration::from_secs;
        assert_eq!(members(1).share(s(10)), s(10));
        assert_eq!(members(3).share(s(9)), s(3));
        assert_eq!(members(3).share(s(2)), s(1));
        let short = Duration::from_millis(500);
        assert_eq!(members(3).share(short), short);
        assert_eq!(members(5).share(s(3)), s(1));
    }

    #[test]
    fn a_failure_moves_to_the_next_member_once_and_wraps_around() {
        let m = members(3);
        let e = DcsError::Unavailable("test".into());
        assert_eq!(m.endpoint(), "http://127.0.0.1:2379");
        m.failed(0, &e);
        assert_eq!(m.endpoint(), "http://127.0.0.1:2380");
        // A second report about the member already left moves nobody.
        m.failed(0, &e);
        assert_eq!(m.endpoint(), "http://127.0.0.1:2380");
        assert_eq!(m.generation(), 1);
        m.failed(1, &e);
        m.failed(2, &e);
        assert_eq!(m.endpoint(), "http://127.0.0.1:2379");
        assert_eq!(*m.subscribe().borrow(), 3);
    }

    #[test]
    fn no_endpoints_is_an_error() {
        assert!(Members::new(vec![], ConnectOptions::new()).is_err());
    }
}
