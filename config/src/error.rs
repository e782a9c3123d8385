//! Errors of the local configuration loader.
//!
//! Every variant names where the problem is: a file, a YAML source, or the dotted key of the
//! offending setting, so that the message alone is enough for an operator to fix the file.

use std::path::PathBuf;

/// Why the local configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file or directory could not be read (including: it does not exist).
    #[error("cannot read configuration {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML, or its top level is not a mapping.
    /// `path_or_source` is a file path or the name of the environment variable it came from.
    #[error("invalid YAML in {path_or_source}: {message}")]
    Yaml {
        path_or_source: String,
        message: String,
    },
    /// The YAML parsed, but a setting is missing, has the wrong type or an invalid value.
    /// `key` is the dotted path of the setting, e.g. `postgresql.listen`.
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
    /// The configuration asks for guarantees Patrol does not give (and
    /// `PATROL_ALLOW_UNSUPPORTED` is not set); one message per key, each naming it.
    #[error("{}", refusals.join("; "))]
    Unsupported { refusals: Vec<String> },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn missing(key: impl Into<String>) -> Self {
        Self::invalid(key, "missing (required)")
    }
}
