//! `synchronous_standby_names`: the value Patroni writes, and what a value in effect says.

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
/// must be; `*` (any standby) when the names include it or when none is given but `num` asks
/// for at least one (commits wait rather than go asynchronous). One name alone is written as it
/// is; several as `N (a,b)` with `N` = `num` or all of them; in quorum mode `ANY N (...)` even
/// for one name. No name and no number: empty (asynchronous).
pub fn standby_names(names: &[String], num: Option<usize>, quorum: bool) -> String {
    let star = names.iter().any(|n| n == "*") || (names.is_empty() && num.unwrap_or(0) >= 1);
    let list: Vec<String> = if star {
        vec!["*".to_string()]
    } else {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        sorted.into_iter().map(|n| quote_standby_name(n)).collect()
    };
    if list.is_empty() {
        return String::new();
    }
    if list.len() > 1 || quorum {
        let n = num.unwrap_or(list.len()).max(1);
        let prefix = if quorum { "ANY " } else { "" };
        format!("{prefix}{n} ({})", list.join(","))
    } else {
        list[0].clone()
    }
}

/// What a `synchronous_standby_names` value in effect says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedNames {
    /// `ANY n (...)`.
    pub quorum: bool,
    /// How many standbys must confirm (0: asynchronous).
    pub num: usize,
    /// The names listed, unquoted, as spelt (PostgreSQL compares them case-insensitively;
    /// `*` kept as a name).
    pub members: Vec<String>,
}

impl ParsedNames {
    pub fn has_star(&self) -> bool {
        self.members.iter().any(|m| m == "*")
    }
}

/// Reads a `synchronous_standby_names` value as PostgreSQL does: `FIRST n (a, b)`,
/// `ANY n (a, b)`, `n (a, b)`, or a plain list `a, b` (the first one synchronous); names are
/// identifiers (compared case-insensitively by PostgreSQL) or double-quoted. Anything else
/// reads as `Err` with why.
pub fn parse_standby_names(value: &str) -> Result<ParsedNames, String> {
    let tokens = tokenize(value)?;
    if tokens.is_empty() {
        return Ok(ParsedNames::default());
    }
    let mut i = 0;
    let mut quorum = false;
    let mut num = None;
    if let Tok::Word(w) = &tokens[0] {
        let kw = w.to_ascii_lowercase();
        if (kw == "any" || kw == "first") && matches!(tokens.get(1), Some(Tok::Number(_))) {
            quorum = kw == "any";
            i = 1;
        }
    }
    if let Some(Tok::Number(n)) = tokens.get(i) {
        if tokens.get(i + 1) != Some(&Tok::Open) || tokens.last() != Some(&Tok::Close) {
            return Err(format!(
                "{value:?}: a number must be followed by a list in parentheses"
            ));
        }
        num = Some(*n);
        i += 2;
    }
    let end = if num.is_some() {
        tokens.len() - 1
    } else {
        tokens.len()
    };
    let mut members = Vec::new();
    let mut want_name = true;
    for t in &tokens[i..end] {
        match (t, want_name) {
            (Tok::Word(w) | Tok::Quoted(w), true) => {
                members.push(w.clone());
                want_name = false;
            }
            (Tok::Star, true) => {
                members.push("*".to_string());
                want_name = false;
            }
            (Tok::Comma, false) => want_name = true,
            _ => return Err(format!("{value:?}: unexpected token")),
        }
    }
    if want_name {
        return Err(format!("{value:?}: a name is missing"));
    }
    Ok(ParsedNames {
        quorum,
        num: num.unwrap_or(1),
        members,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Number(usize),
    Star,
    Comma,
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' | '(' | ')' | '*' => {
                chars.next();
                out.push(match c {
                    ',' => Tok::Comma,
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    _ => Tok::Star,
                });
            }
            '"' => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            w.push('"');
                        }
                        Some('"') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("{s:?}: unterminated quote")),
                    }
                }
                out.push(Tok::Quoted(w));
            }
            c if c.is_ascii_digit() => {
                let mut w = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_ascii_alphanumeric() || d == '_' || d == '$' {
                        w.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                match w.parse::<usize>() {
                    Ok(n) => out.push(Tok::Number(n)),
                    Err(_) => out.push(Tok::Word(w)),
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::new();
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' || d == '$' || d == '-' || d == '.' {
                        w.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Tok::Word(w));
            }
            other => return Err(format!("{s:?}: unexpected character {other:?}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_names_as_patroni_writes_them() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(standby_names(&s(&[]), None, false), "");
        assert_eq!(standby_names(&s(&["*"]), None, false), "*");
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
            standby_names(&s(&["postgres-2", "postgres-0"]), Some(1), true),
            "ANY 1 (\"postgres-0\",\"postgres-2\")"
        );
        assert_eq!(standby_names(&s(&["a"]), Some(1), true), "ANY 1 (a)");
        assert_eq!(standby_names(&s(&[]), Some(1), true), "ANY 1 (*)");
        assert_eq!(standby_names(&s(&[]), Some(0), true), "");
        assert_eq!(standby_names(&s(&["b", "a"]), Some(1), false), "1 (a,b)");
    }

    #[test]
    fn values_in_effect_read_as_postgresql_reads_them() {
        let p = |v: &str| parse_standby_names(v).unwrap();
        assert_eq!(p(""), ParsedNames::default());
        assert_eq!(p("node1").members, ["node1"]);
        assert_eq!(p("node1").num, 1);
        let q = p("ANY 2 (\"postgres-0\",\"Postgres-2\")");
        assert!(q.quorum);
        assert_eq!(q.num, 2);
        assert_eq!(q.members, ["postgres-0", "Postgres-2"]);
        let f = p("FIRST 1 (a, B)");
        assert!(!f.quorum);
        assert_eq!(f.members, ["a", "B"]);
        assert_eq!(p("2 (a,b)").num, 2);
        assert!(p("*").has_star());
        assert!(p("ANY 1 (*)").has_star());
        assert_eq!(p("a, b").members, ["a", "b"]);
        assert_eq!(p("first").members, ["first"]);
        for bad in ["2 a", "(a", "a,", "ANY 1 (a", "\"a"] {
            assert!(parse_standby_names(bad).is_err(), "{bad}");
        }
    }
}
