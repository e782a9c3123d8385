//! Keeps the REST API table of `docs/patroni-compatibility.md` true against the routes the agent
//! serves (`api::all_routes`), and its commands table against `patrolctl`'s (`ctl::COMMANDS`),
//! both ways. The configuration tables are checked in `patrol_config::compatibility_doc`.

use std::collections::BTreeSet;

use patrol_config::compatibility_doc::{rows, COMMANDS, REST};

const METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];

#[test]
fn every_route_is_documented_and_every_documented_endpoint_is_served() {
    let served: BTreeSet<(String, String)> = crate::api::all_routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for row in rows(REST) {
        let methods: Vec<&String> = row
            .keys
            .iter()
            .filter(|k| METHODS.contains(&k.as_str()))
            .collect();
        let paths: Vec<&String> = row.keys.iter().filter(|k| k.starts_with('/')).collect();
        assert!(
            !methods.is_empty()
                && !paths.is_empty()
                && methods.len() + paths.len() == row.keys.len(),
            "line {}: a row names methods and paths: {:?}",
            row.line,
            row.keys
        );
        for m in &methods {
            for p in &paths {
                let endpoint = (m.to_string(), p.to_string());
                if matches!(row.state.as_str(), "yes" | "differs") {
                    assert!(
                        served.contains(&endpoint),
                        "line {}: the doc says {m} {p} is served ({}), but it is not in api::ROUTES or HEALTH_PATHS",
                        row.line,
                        row.state
                    );
                }
                documented.insert(endpoint);
            }
        }
    }
    for (m, p) in &served {
        assert!(
            documented.contains(&(m.clone(), p.clone())),
            "{m} {p} is served but not in the doc's REST API table"
        );
    }
}

#[test]
fn every_patrolctl_command_is_documented() {
    let mut documented = BTreeSet::new();
    for row in rows(COMMANDS) {
        for command in &row.keys {
            if matches!(row.state.as_str(), "yes" | "differs" | "extra") {
                assert!(
                    crate::ctl::COMMANDS.contains(&command.as_str()),
                    "line {}: the doc lists `{command}` as a patrolctl command, but patrolctl has none by that name",
                    row.line
                );
            }
            documented.insert(command.clone());
        }
    }
    for command in crate::ctl::COMMANDS {
        assert!(
            documented.contains(*command),
            "patrolctl {command} is not in the doc's patronictl commands table"
        );
    }
}
