//! The tables of `docs/patroni-compatibility.md`, for the tests that keep the document true:
//! the configuration tables here, against the table of unimplemented keys
//! ([`crate::unsupported::UNSUPPORTED`]) and the keys the parser knows, both ways where the
//! document makes a claim; the REST API's table in the agent (`api::all_routes`); patronictl's
//! commands in `patrol-ctl` (`COMMANDS`).
//!
//! The document's tables: one row per line, `| keys | state | notes |`, the keys (or methods
//! and paths, or commands) as code spans in the first cell. A key ending in `.*` stands for the
//! other keys at that level.

/// The document, built in.
pub const DOC: &str = include_str!("../../docs/patroni-compatibility.md");

/// Section titles.
pub const LOCAL: &str = "Local configuration";
pub const DYNAMIC: &str = "Dynamic configuration";
pub const REST: &str = "REST API";
pub const COMMANDS: &str = "patronictl commands";

/// The states a row may give, as the document's legend lists them.
pub const STATES: &[&str] = &[
    "yes",
    "differs",
    "not yet",
    "not yet, refused",
    "n/a",
    "no",
    "extra",
];

/// A row of a table.
#[derive(Debug)]
pub struct Row {
    /// The code spans of the first cell.
    pub keys: Vec<String>,
    pub state: String,
    /// Its line in the document, from 1.
    pub line: usize,
}

/// The table rows of the section `## <title>`.
///
/// # Panics
/// If the section has no table: the tests that read it would check nothing.
pub fn rows(title: &str) -> Vec<Row> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unsupported::{Effect, Scope, Unsupported, UNSUPPORTED};

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
        let (local, dynamic) = crate::known_keys();
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

    #[test]
    fn the_parser_of_this_test_reads_the_tables() {
        // A guard against a test that checks nothing: the tables are found and sized.
        assert!(rows(LOCAL).len() > 50);
        assert!(rows(DYNAMIC).len() > 15);
        assert!(rows(REST).len() > 15);
        assert!(rows(COMMANDS).len() > 8);
    }
}
