//! Keeps `docs/patroni-compatibility.md` true. Its tables are checked against the table of
//! unimplemented keys (`config::unsupported::UNSUPPORTED`), the keys the configuration parser
//! knows, the REST API's routes (`api::all_routes`) and `patrolctl`'s commands
//! (`ctl::COMMANDS`), both ways where the document makes a claim.
//!
//! The document's tables: one row per line, `| keys | state | notes |`, the keys (or methods
//! and paths, or commands) as code spans in the first cell. A key ending in `.*` stands for the
//! other keys at that level.

use std::collections::BTreeSet;

use crate::config::unsupported::{Effect, Scope, Unsupported, UNSUPPORTED};

const DOC: &str = include_str!("../../docs/patroni-compatibility.md");

const LOCAL: &str = "Local configuration";
const DYNAMIC: &str = "Dynamic configuration";
const REST: &str = "REST API";
const COMMANDS: &str = "patronictl commands";

const STATES: &[&str] = &[
    "yes",
    "differs",
    "not yet",
    "not yet, refused",
    "n/a",
    "no",
    "extra",
];

#[derive(Debug)]
struct Row {
    /// The code spans of the first cell.
    keys: Vec<String>,
    state: String,
    line: usize,
}

/// The table rows of the section `## <title>`.
fn rows(title: &str) -> Vec<Row> {
    let heading = format!("## {title}");
    let mut inside = false;
    let mut out = Vec::new();
    for (i, line) in DOC.lines().enumerate() {
        if line.starts_with("## ") {
            inside = line == heading;
            continue;
        }
        if !inside || !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.split('|').collect();
        let (Some(first), Some(state)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        // Code spans are the odd pieces between backticks.
        let keys: Vec<String> = first
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        if keys.is_empty() {
            continue; // the header
        }
        out.push(Row {
            keys,
            state: state.trim().to_string(),
            line: i + 1,
        });
    }
    assert!(!out.is_empty(), "no table under {heading:?}");
    out
}

fn in_section(scope: Scope) -> &'static str {
    match scope {
        Scope::Local | Scope::Both => LOCAL,
        Scope::Dynamic => DYNAMIC,
    }
}

/// Whether a table entry covers a key the document names.
fn entry_covers(entry: &Unsupported, key: &str) -> bool {
    if entry.key == key {
        return true;
    }
    let Some(prefix) = entry.key.strip_suffix('*') else {
        return false;
    };
    key.strip_prefix(prefix)
        .is_some_and(|rest| !rest.contains('.') && rest != "*" && !entry.except.contains(&rest))
}

#[test]
fn every_state_is_one_of_the_legend() {
    for title in [LOCAL, DYNAMIC, REST, COMMANDS] {
        for row in rows(title) {
            assert!(
                STATES.contains(&row.state.as_str()),
                "line {}: state {:?} is not one of {STATES:?}",
                row.line,
                row.state
            );
        }
    }
}

#[test]
fn every_unimplemented_key_is_documented_as_not_yet() {
    for entry in UNSUPPORTED {
        let title = in_section(entry.scope);
        let section = rows(title);
        let Some(row) = section
            .iter()
            .find(|r| r.keys.iter().any(|k| k == entry.key))
        else {
            panic!("`{}` is not in the doc's {title:?} table", entry.key);
        };
        // A key with any refused value is documented as refused.
        let refused = UNSUPPORTED
            .iter()
            .any(|e| e.key == entry.key && e.effect == Effect::Refuse);
        let want = if refused {
            "not yet, refused"
        } else {
            "not yet"
        };
        assert_eq!(row.state, want, "line {}: `{}`", row.line, entry.key);
    }
}

#[test]
fn what_the_doc_calls_not_yet_is_warned_about() {
    for (title, scopes) in [
        (LOCAL, [Scope::Local, Scope::Both]),
        (DYNAMIC, [Scope::Dynamic, Scope::Both]),
    ] {
        for row in rows(title)
            .into_iter()
            .filter(|r| r.state.starts_with("not yet"))
        {
            for key in &row.keys {
                assert!(
                    UNSUPPORTED
                        .iter()
                        .any(|e| scopes.contains(&e.scope) && entry_covers(e, key)),
                    "line {}: the doc says `{key}` is {:?}, but config::unsupported::UNSUPPORTED has no entry for it, so nothing warns about it",
                    row.line,
                    row.state
                );
            }
        }
    }
}

#[test]
fn every_key_the_parser_knows_is_documented() {
    let (local, dynamic) = crate::config::known_keys();
    for (title, known) in [(LOCAL, local), (DYNAMIC, dynamic)] {
        let documented: Vec<String> = rows(title).into_iter().flat_map(|r| r.keys).collect();
        for key in known {
            let covered = documented.iter().any(|d| {
                d == &key
                    || d.starts_with(&format!("{key}."))
                    // `a.b.*` (at least two named levels) covers `a.b.x`.
                    || d.strip_suffix('*').is_some_and(|prefix| {
                        prefix.matches('.').count() >= 2
                            && key
                                .strip_prefix(prefix)
                                .is_some_and(|rest| !rest.contains('.'))
                    })
            });
            assert!(covered, "`{key}` is not in the doc's {title:?} table");
        }
    }
}

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

#[test]
fn the_parser_of_this_test_reads_the_tables() {
    // A guard against a test that checks nothing: the tables are found and sized.
    assert!(rows(LOCAL).len() > 50);
    assert!(rows(DYNAMIC).len() > 15);
    assert!(rows(REST).len() > 15);
    assert!(rows(COMMANDS).len() > 8);
}
