//! Keeps the REST API table of `docs/patroni-compatibility.md` true against the routes the agent
//! serves (`api::all_routes`), both ways. The document's other tables are checked where their
//! code lives: `patrol_config::compatibility_doc` (configuration keys), `patrol-ctl`'s `cli`
//! (commands).

use std::collections::BTreeSet;

use patrol_config::compatibility_doc::{rows, REST};

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
