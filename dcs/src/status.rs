//! A member's `GET /patroni` answer as the agent (checking its peers before a promotion) and
//! the router (probing every member) both read it: one reading, so the two never disagree on
//! what "a live primary" or "this replica's position" means.

use serde_json::{Map, Value};

/// The parts of a `GET /patroni` body that failover and routing decisions use. Missing or
/// mistyped fields read as absent (false, zero, none): a body from an older or foreign agent
/// never makes a member look better than it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeStatus {
    /// `state` is `running` (PostgreSQL is up).
    pub running: bool,
    /// Running and reporting as a primary (`xlog.location`, or `role` primary/master).
    pub primary: bool,
    /// A live primary's `xlog.location`; otherwise the furthest of received and replayed.
    pub wal_position: u64,
    pub received: u64,
    pub replayed: u64,
    /// `xlog.replayed_timestamp`, as written (the commit time of the last replayed
    /// transaction).
    pub replayed_timestamp: Option<String>,
    /// `xlog.paused`: replay is paused.
    pub paused: bool,
    /// `replication_state` is `streaming`.
    pub streaming: bool,
    pub timeline: u64,
    pub tags: Map<String, Value>,
    pub watchdog_failed: bool,
    /// `failsafe_mode_is_active`: a primary leading on its members' `POST /failsafe` answers
    /// (or a standby such a primary called).
    pub failsafe_active: bool,
}

impl NodeStatus {
    pub fn from_json(body: &Value) -> NodeStatus {
        // Patroni writes the positions under `xlog`; accept `wal` too.
        let xlog = body.get("xlog").or_else(|| body.get("wal"));
        let num = |k: &str| xlog.and_then(|x| x.get(k)).and_then(Value::as_u64);
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        let role = text("role");
        let running = text("state") == "running";
        let location = num("location");
        let reports_primary = location.is_some() || role == "primary" || role == "master";
        // A primary whose PostgreSQL is down (crashed, stopping) is not a live primary, and its
        // last location is no position a candidate must reach.
        let primary = running && reports_primary;
        let received = num("received_location").unwrap_or(0);
        let replayed = num("replayed_location").unwrap_or(0);
        NodeStatus {
            running,
            primary,
            wal_position: if primary {
                location.unwrap_or(0)
            } else {
                received.max(replayed)
            },
            received,
            replayed,
            replayed_timestamp: xlog
                .and_then(|x| x.get("replayed_timestamp"))
                .and_then(Value::as_str)
                .map(String::from),
            paused: xlog
                .and_then(|x| x.get("paused"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            streaming: text("replication_state") == "streaming",
            timeline: body.get("timeline").and_then(Value::as_u64).unwrap_or(0),
            tags: body
                .get("tags")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            watchdog_failed: body
                .get("watchdog_failed")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            failsafe_active: body
                .get("failsafe_mode_is_active")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn primary_replica_and_stopped_primary() {
        let p = NodeStatus::from_json(&json!({
            "state": "running", "role": "primary", "timeline": 3,
            "xlog": {"location": 500}, "tags": {"nofailover": true}
        }));
        assert!(p.running && p.primary);
        assert_eq!((p.wal_position, p.timeline), (500, 3));
        assert_eq!(p.tags.get("nofailover"), Some(&json!(true)));

        let r = NodeStatus::from_json(&json!({
            "state": "running", "role": "replica", "replication_state": "streaming",
            "xlog": {"received_location": 400, "replayed_location": 300, "paused": true,
                     "replayed_timestamp": "2024-03-01 12:34:56.5+00:00"}
        }));
        assert!(r.running && !r.primary && r.streaming && r.paused);
        assert_eq!((r.wal_position, r.received, r.replayed), (400, 400, 300));
        assert_eq!(
            r.replayed_timestamp.as_deref(),
            Some("2024-03-01 12:34:56.5+00:00")
        );

        let down = NodeStatus::from_json(&json!({
            "state": "crashed", "role": "primary", "xlog": {"location": 100}
        }));
        assert!(!down.running && !down.primary);
        assert_eq!(down.wal_position, 0);

        let old_role = NodeStatus::from_json(&json!({"state": "running", "role": "master"}));
        assert!(old_role.primary);
        let wal_key = NodeStatus::from_json(&json!({
            "state": "running", "role": "replica", "wal": {"replayed_location": 7}
        }));
        assert_eq!(wal_key.wal_position, 7);
    }

    #[test]
    fn anything_else_reads_as_absent() {
        for body in [
            json!(null),
            json!([1, 2]),
            json!("running"),
            json!({"state": 1, "role": ["primary"], "xlog": "x", "timeline": "3",
                   "tags": [], "watchdog_failed": "yes"}),
            json!({"xlog": {"location": -5, "received_location": 1.5}}),
        ] {
            assert_eq!(
                NodeStatus::from_json(&body),
                NodeStatus::default(),
                "{body}"
            );
        }
    }
}
