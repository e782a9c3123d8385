//! Reading YAML documents (a file, every `*.yml`/`*.yaml` of a directory, or a string) into
//! `serde_json::Value`, and Patroni's `patch_config` merge.
//!
//! YAML types and key order are kept. Mapping keys that are not strings (`1: x`, `true: x`) are
//! turned into their JSON spelling, because JSON objects only have string keys.

use std::path::Path;

use serde_json::{Map, Value};

use super::error::ConfigError;

/// Parse one YAML document. `origin` names it in errors (a path or an environment variable).
/// An empty document is `Value::Null`.
pub(crate) fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    let yaml_err = |message: String| ConfigError::Yaml {
        path_or_source: origin.to_string(),
        message,
    };
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| yaml_err(e.to_string()))?;
    doc.apply_merge().map_err(|e| yaml_err(e.to_string()))?;
    yaml_to_json(doc).map_err(yaml_err)
}

/// Parse a YAML document whose top level must be a mapping (or empty, which gives an empty map).
pub(crate) fn parse_yaml_mapping(
    text: &str,
    origin: &str,
) -> Result<Map<String, Value>, ConfigError> {
    match parse_yaml(text, origin)? {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(ConfigError::Yaml {
            path_or_source: origin.to_string(),
            message: format!(
                "the top level must be a mapping of sections, found {}",
                describe(&other)
            ),
        }),
    }
}

fn yaml_to_json(value: serde_yaml_ng::Value) -> Result<Value, String> {
    use serde_yaml_ng::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                match n.as_f64().and_then(serde_json::Number::from_f64) {
                    Some(f) => Value::Number(f),
                    // NaN and infinities have no JSON form; keep their YAML spelling.
                    None => Value::String(n.to_string()),
                }
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(seq) => Value::Array(
            seq.into_iter()
                .map(yaml_to_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = Map::new();
            for (k, v) in mapping {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_string(),
                    Y::Tagged(t) => match t.value {
                        Y::String(s) => s,
                        _ => return Err("mapping keys must be scalars".to_string()),
                    },
                    Y::Sequence(_) | Y::Mapping(_) => {
                        return Err("mapping keys must be scalars".to_string())
                    }
                };
                map.insert(key, yaml_to_json(v)?);
            }
            Value::Object(map)
        }
        // Tags (`!!str`, custom `!Foo`) are not meaningful in Patroni's configuration: keep the value.
        Y::Tagged(tagged) => yaml_to_json(tagged.value)?,
    })
}

/// Patroni's `patch_config`: merge `patch` into `config`. Mappings merge recursively, a `null`
/// in the patch deletes the key, anything else replaces.
pub(crate) fn patch(config: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (name, value) in patch {
        match value {
            Value::Null => {
                config.remove(&name);
            }
            Value::Object(sub) => match config.get_mut(&name) {
                Some(Value::Object(existing)) => self::patch(existing, sub),
                _ => {
                    config.insert(name, Value::Object(sub));
                }
            },
            other => {
                config.insert(name, other);
            }
        }
    }
}

/// Read a file, or every `*.yml`/`*.yaml` regular file of a directory in sorted name order,
/// merged with [`patch`] (later files win). Returns the merged mapping and warnings.
pub(crate) fn read_path(path: &Path) -> Result<(Map<String, Value>, Vec<String>), ConfigError> {
    let io_err = |p: &Path, source: std::io::Error| ConfigError::Io {
        path: p.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    let mut warnings = Vec::new();
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| io_err(path, e))? {
            let entry = entry.map_err(|e| io_err(path, e))?;
            let p = entry.path();
            let is_yaml = p
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yml" || e == "yaml");
            if is_yaml && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            warnings.push(format!(
                "configuration directory {} contains no *.yml or *.yaml files",
                path.display()
            ));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };

    let mut merged = Map::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| io_err(&file, e))?;
        let doc = parse_yaml_mapping(&text, &file.display().to_string())?;
        patch(&mut merged, doc);
    }
    Ok((merged, warnings))
}

/// A short description of a value for error messages: `a list`, `'abc'`, `42`.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let mut short: String = s.chars().take(60).collect();
            if short.len() < s.len() {
                short.push_str("...");
            }
            format!("'{short}'")
        }
        Value::Array(_) => "a list".to_string(),
        Value::Object(_) => "a mapping".to_string(),
    }
}
