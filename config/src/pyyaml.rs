//! PyYAML's `safe_dump` as patronictl calls it (`default_flow_style` False or True,
//! `allow_unicode=True`, `width=200`, sorted keys), and how PyYAML (YAML 1.1) resolves a plain
//! scalar. `patrolctl` prints with it; `patrol --generate-config` writes with it, so that
//! Patroni reads the files as Patrol does (a string `on` stays a string).

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

struct Resolvers {
    bool_: Regex,
    float: Regex,
    int: Regex,
    null: Regex,
    timestamp: Regex,
    other: Regex,
}

fn resolvers() -> &'static Resolvers {
    static R: OnceLock<Resolvers> = OnceLock::new();
    R.get_or_init(|| Resolvers {
        bool_: Regex::new(
            r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
        )
        .expect("regex"),
        float: Regex::new(
            r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        )
        .expect("regex"),
        int: Regex::new(
            r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
        )
        .expect("regex"),
        null: Regex::new(r"^(?:~|null|Null|NULL|)$").expect("regex"),
        timestamp: Regex::new(
            r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
        )
        .expect("regex"),
        other: Regex::new(r"^(?:<<|=|!|&|\*)$").expect("regex"),
    })
}

/// Whether PyYAML would read `s`, written plain, as something other than a string.
fn resolves_to_non_str(s: &str) -> bool {
    let r = resolvers();
    r.bool_.is_match(s)
        || r.float.is_match(s)
        || r.int.is_match(s)
        || r.null.is_match(s)
        || r.timestamp.is_match(s)
        || r.other.is_match(s)
}

/// The value of a plain YAML 1.1 scalar as PyYAML's `safe_load` resolves it (bool, int, float,
/// null or string). Used for `edit-config -s key=value`.
pub fn yaml11_plain_scalar(s: &str) -> Value {
    let r = resolvers();
    if r.null.is_match(s) {
        return Value::Null;
    }
    if r.bool_.is_match(s) {
        return Value::Bool(matches!(
            s.to_ascii_lowercase().as_str(),
            "yes" | "true" | "on"
        ));
    }
    if r.int.is_match(s) {
        let t = s.replace('_', "");
        let (neg, t) = match t.strip_prefix('-') {
            Some(r) => (true, r.to_string()),
            None => (false, t.strip_prefix('+').unwrap_or(&t).to_string()),
        };
        let parsed = if let Some(b) = t.strip_prefix("0b") {
            i64::from_str_radix(b, 2).ok()
        } else if let Some(x) = t.strip_prefix("0x") {
            i64::from_str_radix(x, 16).ok()
        } else if t.contains(':') {
            t.split(':')
                .try_fold(0i64, |acc, p| p.parse::<i64>().ok().map(|d| acc * 60 + d))
        } else if t.len() > 1 && t.starts_with('0') {
            i64::from_str_radix(&t[1..], 8).ok()
        } else {
            t.parse::<i64>().ok()
        };
        if let Some(i) = parsed {
            return Value::from(if neg { -i } else { i });
        }
    }
    if r.float.is_match(s) {
        let t = s.replace('_', "").to_ascii_lowercase();
        let f = if t.ends_with(".inf") {
            if t.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }
        } else if t.ends_with(".nan") {
            f64::NAN
        } else if t.contains(':') {
            let neg = t.starts_with('-');
            let body = t.trim_start_matches(['-', '+']);
            let v = body
                .split(':')
                .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0));
            if neg {
                -v
            } else {
                v
            }
        } else {
            t.parse::<f64>().unwrap_or(0.0)
        };
        if let Some(n) = serde_json::Number::from_f64(f) {
            return Value::Number(n);
        }
        return Value::String(s.to_string());
    }
    Value::String(s.to_string())
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_ws_or_end(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => matches!(c, '\0' | ' ' | '\t' | '\r') || is_break(c),
    }
}

#[derive(Debug)]
struct Analysis {
    empty: bool,
    multiline: bool,
    allow_flow_plain: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

/// PyYAML's `Emitter.analyze_scalar` with `allow_unicode=True`.
fn analyze(s: &str) -> Analysis {
    let chars: Vec<char> = s.chars().collect();
    if chars.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_flow_plain: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let mut block_ind = false;
    let mut flow_ind = false;
    let mut line_breaks = false;
    let mut special = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    if s.starts_with("---") || s.starts_with("...") {
        block_ind = true;
        flow_ind = true;
    }
    let mut preceded_ws = true;
    let mut followed_ws = is_ws_or_end(chars.get(1).copied());
    let mut prev_space = false;
    let mut prev_break = false;
    let n = chars.len();
    for (index, &ch) in chars.iter().enumerate() {
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                flow_ind = true;
                block_ind = true;
            }
            if ch == '?' || ch == ':' {
                flow_ind = true;
                if followed_ws {
                    block_ind = true;
                }
            }
            if ch == '-' && followed_ws {
                flow_ind = true;
                block_ind = true;
            }
        } else {
            if ",?[]{}".contains(ch) {
                flow_ind = true;
            }
            if ch == ':' {
                flow_ind = true;
                if followed_ws {
                    block_ind = true;
                }
            }
            if ch == '#' && preceded_ws {
                flow_ind = true;
                block_ind = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        if !(ch == '\n' || (' '..='~').contains(&ch)) {
            let c = ch as u32;
            let unicode = (ch == '\u{85}'
                || (0xA0..=0xD7FF).contains(&c)
                || (0xE000..=0xFFFD).contains(&c)
                || (0x10000..0x10FFFF).contains(&c))
                && ch != '\u{FEFF}';
            if !unicode {
                special = true;
            }
        }
        if ch == ' ' {
            if index == 0 {
                leading_space = true;
            }
            if index == n - 1 {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(ch) {
            if index == 0 {
                leading_break = true;
            }
            if index == n - 1 {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_space = false;
            prev_break = true;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_ws = is_ws_or_end(Some(ch));
        followed_ws = is_ws_or_end(chars.get(index + 2).copied());
    }
    let mut a = Analysis {
        empty: false,
        multiline: line_breaks,
        allow_flow_plain: true,
        allow_block_plain: true,
        allow_single_quoted: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
    }
    if break_space {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
        a.allow_single_quoted = false;
    }
    if space_break || special {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
        a.allow_single_quoted = false;
    }
    if line_breaks {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
    }
    if flow_ind {
        a.allow_flow_plain = false;
    }
    if block_ind {
        a.allow_block_plain = false;
    }
    a
}

const BEST_WIDTH: usize = 200;

/// A minimal PyYAML emitter: the writer state that matters for folding and indentation.
struct Emitter {
    out: String,
    column: usize,
    whitespace: bool,
    indention: bool,
    /// Indent of the scalar being written (continuation lines).
    indent: usize,
}

impl Emitter {
    fn new() -> Emitter {
        Emitter {
            out: String::new(),
            column: 0,
            whitespace: true,
            indention: true,
            indent: 0,
        }
    }

    fn write(&mut self, s: &str) {
        self.out.push_str(s);
        self.column += s.chars().count();
    }

    fn line_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
        self.whitespace = true;
        self.indention = true;
    }

    fn write_indent(&mut self) {
        let indent = self.indent;
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.line_break();
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = " ".repeat(indent - self.column);
            self.out.push_str(&pad);
            self.column = indent;
        }
    }

    /// Writes `s` at the current position (after the caller wrote `key:` or `-` and a space).
    fn scalar(&mut self, s: &str, indent: usize, simple_key: bool, flow: bool) {
        self.indent = indent;
        let a = analyze(s);
        let implicit = !resolves_to_non_str(s);
        let split = !simple_key;
        let plain_ok = implicit
            && !(simple_key && (a.empty || a.multiline))
            && ((flow && a.allow_flow_plain) || (!flow && a.allow_block_plain));
        if plain_ok {
            self.write_plain(s, split);
        } else if a.allow_single_quoted && !(simple_key && a.multiline) {
            self.write_single_quoted(s, split);
        } else {
            self.write_double_quoted(s, split);
        }
        self.whitespace = false;
        self.indention = false;
    }

    fn write_plain(&mut self, text: &str, split: bool) {
        let chars: Vec<char> = text.chars().collect();
        let (mut start, mut end) = (0usize, 0usize);
        let mut spaces = false;
        while end <= chars.len() {
            let ch = chars.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        let data: String = chars[start..end].iter().collect();
                        self.write(&data);
                    }
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c)) {
                let data: String = chars[start..end].iter().collect();
                self.write(&data);
                start = end;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
            }
            end += 1;
        }
    }

    fn write_single_quoted(&mut self, text: &str, split: bool) {
        self.write("'");
        let chars: Vec<char> = text.chars().collect();
        let (mut start, mut end) = (0usize, 0usize);
        let mut spaces = false;
        let mut breaks = false;
        while end <= chars.len() {
            let ch = chars.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != chars.len()
                    {
                        self.write_indent();
                    } else {
                        let data: String = chars[start..end].iter().collect();
                        self.write(&data);
                    }
                    start = end;
                }
            } else if breaks {
                if ch.is_none_or(|c| !is_break(c)) {
                    if chars[start] == '\n' {
                        self.line_break();
                    }
                    for &br in &chars[start..end] {
                        if br == '\n' {
                            self.line_break();
                        } else {
                            self.out.push(br);
                            self.column = 0;
                            self.whitespace = true;
                            self.indention = true;
                        }
                    }
                    self.write_indent();
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || c == '\'' || is_break(c)) && start < end {
                let data: String = chars[start..end].iter().collect();
                self.write(&data);
                start = end;
            }
            if ch == Some('\'') {
                self.write("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
        self.write("'");
    }

    fn write_double_quoted(&mut self, text: &str, split: bool) {
        self.write("\"");
        let chars: Vec<char> = text.chars().collect();
        let (mut start, mut end) = (0usize, 0usize);
        while end <= chars.len() {
            let ch = chars.get(end).copied();
            let needs_escape = match ch {
                None => true,
                Some(c) => {
                    let u = c as u32;
                    "\"\\\u{85}\u{2028}\u{2029}\u{FEFF}".contains(c)
                        || !((' '..='~').contains(&c)
                            || (0xA0..=0xD7FF).contains(&u)
                            || (0xE000..=0xFFFD).contains(&u))
                }
            };
            if needs_escape {
                if start < end {
                    let data: String = chars[start..end].iter().collect();
                    self.write(&data);
                    start = end;
                }
                if let Some(c) = ch {
                    let data = match c {
                        '\0' => "\\0".to_string(),
                        '\u{7}' => "\\a".to_string(),
                        '\u{8}' => "\\b".to_string(),
                        '\t' => "\\t".to_string(),
                        '\n' => "\\n".to_string(),
                        '\u{b}' => "\\v".to_string(),
                        '\u{c}' => "\\f".to_string(),
                        '\r' => "\\r".to_string(),
                        '\u{1b}' => "\\e".to_string(),
                        '"' => "\\\"".to_string(),
                        '\\' => "\\\\".to_string(),
                        '\u{85}' => "\\N".to_string(),
                        '\u{a0}' => "\\_".to_string(),
                        '\u{2028}' => "\\L".to_string(),
                        '\u{2029}' => "\\P".to_string(),
                        c if (c as u32) <= 0xFF => format!("\\x{:02X}", c as u32),
                        c if (c as u32) <= 0xFFFF => format!("\\u{:04X}", c as u32),
                        c => format!("\\U{:08X}", c as u32),
                    };
                    self.write(&data);
                    start = end + 1;
                }
            }
            if end > 0
                && end + 1 < chars.len()
                && (ch == Some(' ') || start >= end)
                && self.column + (end.saturating_sub(start)) > BEST_WIDTH
                && split
            {
                let mut data: String = chars[start.min(end)..end].iter().collect();
                data.push('\\');
                if start < end {
                    start = end;
                }
                self.write(&data);
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if chars.get(start) == Some(&' ') {
                    self.write("\\");
                }
            }
            end += 1;
        }
        self.write("\"");
    }

    fn node_flow(&mut self, v: &Value, indent: usize) {
        match v {
            Value::Object(o) => {
                self.write("{");
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        self.write(", ");
                    }
                    self.scalar(k, indent + 2, true, true);
                    self.write(": ");
                    self.node_flow(&o[k.as_str()], indent + 2);
                }
                self.write("}");
            }
            Value::Array(a) => {
                self.write("[");
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        self.write(", ");
                    }
                    self.node_flow(x, indent + 2);
                }
                self.write("]");
            }
            other => self.scalar_value(other, indent, true),
        }
    }

    fn scalar_value(&mut self, v: &Value, indent: usize, flow: bool) {
        match v {
            Value::Null => self.write("null"),
            Value::Bool(b) => self.write(if *b { "true" } else { "false" }),
            Value::Number(n) => {
                let s = if n.is_f64() {
                    let f = n.as_f64().unwrap_or(0.0);
                    if f.is_nan() {
                        ".nan".to_string()
                    } else if f.is_infinite() {
                        if f > 0.0 {
                            ".inf".into()
                        } else {
                            "-.inf".into()
                        }
                    } else {
                        let r = float_repr(f).to_lowercase();
                        if !r.contains('.') && r.contains('e') {
                            r.replacen('e', ".0e", 1)
                        } else {
                            r
                        }
                    }
                } else {
                    n.to_string()
                };
                self.write(&s);
            }
            Value::String(s) => self.scalar(s, indent, false, flow),
            other => self.node_flow(other, indent),
        }
    }

    fn is_empty_collection(v: &Value) -> bool {
        matches!(v, Value::Object(o) if o.is_empty())
            || matches!(v, Value::Array(a) if a.is_empty())
    }

    /// A block mapping whose first key goes at the current position; later keys at `indent`.
    fn block_mapping(&mut self, o: &serde_json::Map<String, Value>, indent: usize) {
        let mut keys: Vec<&String> = o.keys().collect();
        keys.sort();
        for (i, k) in keys.iter().enumerate() {
            if i > 0 {
                self.line_break();
                self.write(&" ".repeat(indent));
            }
            self.scalar(k, indent + 2, true, false);
            self.write(":");
            let v = &o[k.as_str()];
            match v {
                Value::Object(m) if !m.is_empty() => {
                    self.line_break();
                    self.write(&" ".repeat(indent + 2));
                    self.block_mapping(m, indent + 2);
                }
                Value::Array(a) if !a.is_empty() => {
                    self.line_break();
                    self.write(&" ".repeat(indent));
                    self.block_sequence(a, indent);
                }
                _ => {
                    self.write(" ");
                    if Self::is_empty_collection(v) {
                        self.node_flow(v, indent + 2);
                    } else {
                        self.scalar_value(v, indent + 2, false);
                    }
                }
            }
        }
    }

    /// A block sequence whose first `-` goes at the current position; later ones at `indent`.
    fn block_sequence(&mut self, a: &[Value], indent: usize) {
        for (i, v) in a.iter().enumerate() {
            if i > 0 {
                self.line_break();
                self.write(&" ".repeat(indent));
            }
            self.write("- ");
            match v {
                Value::Object(m) if !m.is_empty() => self.block_mapping(m, indent + 2),
                Value::Array(x) if !x.is_empty() => self.block_sequence(x, indent + 2),
                _ if Self::is_empty_collection(v) => self.node_flow(v, indent + 2),
                _ => self.scalar_value(v, indent + 2, false),
            }
        }
    }
}

/// `yaml.safe_dump(v, default_flow_style=flow, allow_unicode=True, width=200)`, ending in a
/// newline, as patronictl's `format_config_for_editing` returns it.
pub fn yaml_dump(v: &Value, flow: bool) -> String {
    let mut e = Emitter::new();
    match v {
        _ if flow || Emitter::is_empty_collection(v) => {
            if flow && !matches!(v, Value::Object(_) | Value::Array(_)) {
                e.scalar_value(v, 0, false);
            } else {
                e.node_flow(v, 0);
            }
        }
        Value::Object(o) => e.block_mapping(o, 0),
        Value::Array(a) => e.block_sequence(a, 0),
        other => {
            e.scalar_value(other, 0, false);
            let plain = matches!(other, Value::String(s) if !e.out.starts_with(['\'', '"']) && !s.is_empty());
            if plain || !matches!(other, Value::String(_)) {
                e.line_break();
                e.write("...");
            }
        }
    }
    e.line_break();
    e.out
}

/// Python's `repr(float)`: shortest round-trip digits, fixed notation for exponents -4..16,
/// scientific (`1e+20`) otherwise, and always a `.0` on integral fixed values.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let s = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{s}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.abs())
    }
}
