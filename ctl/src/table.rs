//! patronictl's `print_output`: a prettytable (with the cluster title injected into its top
//! border), tab-separated values, or JSON/YAML lists of objects.

use serde_json::{Map, Value};

use super::pyfmt::{json_dumps, py_str, yaml_dump};

/// Output formats of `-f/--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pretty,
    Tsv,
    Json,
    Yaml,
    /// `topology`: pretty, with tags in flow style and members as a tree.
    Topology,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "pretty" => Some(Format::Pretty),
            "tsv" => Some(Format::Tsv),
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            "topology" => Some(Format::Topology),
            _ => None,
        }
    }
}

/// Column alignment in pretty tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// A prettytable with `hrules` FRAME (or ALL when `all_rules`), every column padded by one
/// space, and `title` written over the start of the top border.
pub fn pretty_table(
    title: &str,
    columns: &[String],
    aligns: &[Align],
    rows: &[Vec<String>],
    all_rules: bool,
) -> String {
    let ncols = columns.len();
    let widths: Vec<usize> = (0..ncols)
        .map(|i| {
            rows.iter()
                .flat_map(|r| r[i].split('\n').map(width))
                .chain(std::iter::once(width(&columns[i])))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut rule = String::from("+");
    for w in &widths {
        rule.push_str(&"-".repeat(w + 2));
        rule.push('+');
    }
    let justify = |s: &str, i: usize| {
        let pad = " ".repeat(widths[i] - width(s));
        if aligns[i] == Align::Right {
            format!("{pad}{s}")
        } else {
            format!("{s}{pad}")
        }
    };
    let line = |cells: &[&str]| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            s.push(' ');
            s.push_str(&justify(c, i));
            s.push_str(" |");
        }
        s
    };
    let mut top = rule.clone();
    if !title.is_empty() {
        let chars: Vec<char> = rule.chars().collect();
        let head: String = title.chars().take(chars.len().saturating_sub(2)).collect();
        let n = width(&head);
        top = format!(
            "{}{}{}",
            chars[0],
            head,
            chars[1 + n..].iter().collect::<String>()
        );
    }
    let mut out = vec![top];
    let hdr: Vec<&str> = columns.iter().map(String::as_str).collect();
    out.push(line(&hdr));
    out.push(rule.clone());
    for (ri, r) in rows.iter().enumerate() {
        let split: Vec<Vec<&str>> = r.iter().map(|c| c.split('\n').collect()).collect();
        let height = split.iter().map(Vec::len).max().unwrap_or(1);
        for h in 0..height {
            let cells: Vec<&str> = split.iter().map(|c| *c.get(h).unwrap_or(&"")).collect();
            out.push(line(&cells));
        }
        if all_rules && ri + 1 < rows.len() {
            out.push(rule.clone());
        }
    }
    out.push(rule);
    out.join("\n")
}

/// patronictl's `print_output(columns, rows, alignment, fmt, header, delimiter)`; returns the
/// text `click.echo` would print (with the final newline). `header` is the table title; for
/// list-like output (`columns[0] == "Cluster"`) it also drops the Cluster column in pretty
/// formats, formats `Tags` as YAML and omits empty values in JSON/YAML.
pub fn print_output(
    columns: &[String],
    rows: &[Vec<Value>],
    right_aligned: &[&str],
    fmt: Format,
    header: &str,
    delimiter: &str,
) -> String {
    match fmt {
        Format::Json | Format::Yaml => {
            let elements: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let mut o = Map::new();
                    for (k, v) in columns.iter().zip(r) {
                        if header.is_empty() || !py_str(v).is_empty() {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    Value::Object(o)
                })
                .collect();
            let list = Value::Array(elements);
            if fmt == Format::Json {
                format!("{}\n", json_dumps(&list))
            } else {
                format!("{}\n", yaml_dump(&list, false))
            }
        }
        Format::Pretty | Format::Tsv | Format::Topology => {
            let mut columns: Vec<String> = columns.to_vec();
            let mut rows: Vec<Vec<Value>> = rows.to_vec();
            let list_cluster =
                !header.is_empty() && columns.first().is_some_and(|c| c == "Cluster");
            if list_cluster {
                if let Some(i) = columns.iter().position(|c| c == "Tags") {
                    for r in &mut rows {
                        if !is_falsy(&r[i]) {
                            let y = yaml_dump(&r[i], fmt != Format::Pretty);
                            r[i] = Value::String(y.trim().to_string());
                        }
                    }
                }
                if fmt != Format::Tsv {
                    let skip = if header.contains(" (group: ") { 2 } else { 1 };
                    columns.drain(..skip.min(columns.len()));
                    for r in &mut rows {
                        r.drain(..skip.min(r.len()));
                    }
                }
            }
            if fmt == Format::Tsv {
                let mut out = String::new();
                if !columns.is_empty() {
                    out.push_str(&columns.join(delimiter));
                    out.push('\n');
                }
                for r in &rows {
                    let cells: Vec<String> = r.iter().map(py_str).collect();
                    out.push_str(&cells.join(delimiter));
                    out.push('\n');
                }
                return out;
            }
            if columns.is_empty() {
                let n = rows.iter().map(Vec::len).max().unwrap_or(0);
                columns = (1..=n).map(|i| format!("Field {i}")).collect();
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| r.iter().map(py_str).collect())
                .collect();
            let all_rules = rows.iter().any(|r| {
                r.iter()
                    .any(|c| matches!(c, Value::String(s) if s.contains('\n')))
            });
            let aligns: Vec<Align> = columns
                .iter()
                .map(|c| {
                    if right_aligned.contains(&c.as_str()) {
                        Align::Right
                    } else {
                        Align::Left
                    }
                })
                .collect();
            format!(
                "{}\n",
                pretty_table(header, &columns, &aligns, &cells, all_rules)
            )
        }
    }
}

/// Python truthiness of a decoded JSON value.
pub fn is_falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_table_has_header_and_two_rules() {
        let out = print_output(
            &cols(&["TL", "LSN", "Reason", "Timestamp", "New Leader"]),
            &[],
            &["TL", "LSN"],
            Format::Pretty,
            "",
            "\t",
        );
        // Captured from patronictl 4.1 (`history` of a cluster without failovers).
        assert_eq!(
            out,
            "\
+----+-----+--------+-----------+------------+
| TL | LSN | Reason | Timestamp | New Leader |
+----+-----+--------+-----------+------------+
+----+-----+--------+-----------+------------+
"
        );
    }

    #[test]
    fn right_aligned_headers_and_values() {
        let out = print_output(
            &cols(&["a", "num"]),
            &[
                vec![json!("x"), json!(123456)],
                vec![json!(null), json!(true)],
            ],
            &["num"],
            Format::Pretty,
            "",
            "\t",
        );
        assert_eq!(
            out,
            "\
+------+--------+
| a    |    num |
+------+--------+
| x    | 123456 |
| None |   True |
+------+--------+
"
        );
        let tsv = print_output(
            &cols(&["a", "num"]),
            &[vec![json!("x"), json!(1.5)]],
            &[],
            Format::Tsv,
            "",
            ";",
        );
        assert_eq!(tsv, "a;num\nx;1.5\n");
        let js = print_output(
            &cols(&["a", "b"]),
            &[vec![json!(""), json!(1)]],
            &[],
            Format::Json,
            "",
            "\t",
        );
        assert_eq!(js, "[{\"a\": \"\", \"b\": 1}]\n");
        let js = print_output(
            &cols(&["a", "b"]),
            &[vec![json!(""), json!(1)]],
            &[],
            Format::Json,
            " T ",
            "\t",
        );
        assert_eq!(js, "[{\"b\": 1}]\n");
    }

    #[test]
    fn title_longer_than_first_columns() {
        let out = pretty_table(
            " Cluster: a-very-long-name (7311111111111111111) ",
            &cols(&["M", "H"]),
            &[Align::Left, Align::Left],
            &[],
            false,
        );
        assert_eq!(out.lines().next().unwrap(), "+ Cluste+");
    }
}
