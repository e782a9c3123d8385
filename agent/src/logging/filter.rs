//! `log.level` and `log.loggers` as `EnvFilter` directives (`RUST_LOG` syntax). A more specific
//! target wins, as a Python child logger's level wins over its parent's.

use std::collections::BTreeMap;

use patrol_config::log::{Log, LogLevel};

use super::CRITICAL;

/// Crates that are chatty at INFO and DEBUG: kept at WARNING unless the level is stricter or a
/// logger names them (`urllib3`, or the crate itself).
const QUIET: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tower",
    "tokio_postgres",
    "reqwest",
];

/// Should the directives not parse (the names are checked when the configuration is read).
pub(super) const FALLBACK: &str = "info,h2=warn,hyper=warn,tower=warn,tokio_postgres=warn";

fn directive_level(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
        // Only the errors that end the agent are CRITICAL; they keep their own directive.
        LogLevel::Critical => "off",
    }
}

/// The directives for `log`: the level, the quiet crates, the loggers (least specific Patroni
/// names first, so that a more specific one decides a target they share), and the CRITICAL
/// errors, always shown.
pub(super) fn directives(log: &Log) -> String {
    let mut targets: BTreeMap<String, &'static str> = BTreeMap::new();
    let quiet = directive_level(log.level.max(LogLevel::Warning));
    for t in QUIET {
        targets.insert(t.to_string(), quiet);
    }
    let mut loggers: Vec<_> = log.loggers.iter().collect();
    loggers.sort_by_key(|l| l.name.matches('.').count());
    for l in loggers {
        let Some(level) = l.level else {
            continue; // NOTSET: follows its parent.
        };
        for t in &l.targets {
            targets.insert(t.clone(), directive_level(level));
        }
    }
    targets.insert(CRITICAL.to_string(), "error");
    let mut out = directive_level(log.level).to_string();
    for (t, level) in targets {
        out.push_str(&format!(",{t}={level}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use patrol_config::log::LoggerLevel;
    use tracing_subscriber::EnvFilter;

    use super::*;

    fn logger(name: &str, level: Option<LogLevel>) -> LoggerLevel {
        LoggerLevel {
            name: name.to_string(),
            targets: patrol_config::log::logger_targets(name).expect("a logger"),
            level,
        }
    }

    /// The map from Patroni's loggers names modules that exist (a rename must update it).
    #[test]
    fn every_mapped_target_is_a_module_of_ours() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (name, targets) in patrol_config::log::PATRONI_LOGGERS {
            for t in *targets {
                let mut parts = t.split("::");
                let dir = match parts.next() {
                    Some("patrol") => "agent/src",
                    Some("patrol_agent") => "agent/src",
                    Some("patrol_ha") => "ha/src",
                    Some("patrol_dcs") => "dcs/src",
                    Some("patrol_config") => "config/src",
                    _ => continue, // another crate (the HTTP client's)
                };
                let module = root.join(dir).join(parts.collect::<Vec<_>>().join("/"));
                assert!(
                    module.is_dir() || module.with_extension("rs").is_file(),
                    "{name} maps to {t}, but there is no {}",
                    module.display()
                );
            }
        }
    }

    #[test]
    fn the_default_is_info_with_quiet_crates_and_critical_errors() {
        let d = directives(&Log::default());
        assert_eq!(
            d,
            "info,h2=warn,hyper=warn,hyper_util=warn,patrol::critical=error,reqwest=warn,tokio_postgres=warn,tower=warn"
        );
        assert!(EnvFilter::builder().parse(&d).is_ok());
    }

    #[test]
    fn a_strict_level_applies_to_the_quiet_crates_too() {
        let log = Log {
            level: LogLevel::Critical,
            ..Log::default()
        };
        let d = directives(&log);
        assert!(d.starts_with("off,h2=off,"), "{d}");
        assert!(d.contains(",patrol::critical=error"), "{d}");
    }

    #[test]
    fn loggers_set_their_targets_the_more_specific_name_winning() {
        let log = Log {
            loggers: vec![
                logger("patroni.postgresql.slots", Some(LogLevel::Debug)),
                logger("patroni.ha", Some(LogLevel::Warning)),
                logger("patroni", Some(LogLevel::Error)),
                logger("patroni.dcs", None),
                logger("urllib3", Some(LogLevel::Debug)),
            ],
            ..Log::default()
        };
        let d = directives(&log);
        for part in [
            ",patrol=error",
            ",patrol_agent::ha=warn",
            ",patrol_ha=warn",
            ",patrol_ha::slots=debug",
            ",patrol_agent::ha::runner::slots=debug",
            ",hyper=debug",
            ",reqwest=debug",
            ",tower=warn",
        ] {
            assert!(d.contains(part), "{part} in {d}");
        }
        assert!(!d.contains("patrol_dcs"), "NOTSET adds nothing: {d}");
        assert!(EnvFilter::builder().parse(&d).is_ok(), "{d}");
    }
}
