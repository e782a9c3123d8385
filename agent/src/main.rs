//! `patrol`: the HA agent. Parse arguments, load and validate the configuration (before any
//! port is bound), set up logging, run, map the result to an exit code.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use patrol_agent::config::{self, ConfigSource};
use patrol_agent::generate;
use patrol_agent::notify::Notifier;

/// PostgreSQL high availability, a drop-in replacement for Patroni.
#[derive(Parser, Debug)]
#[command(name = "patrol", version, about)]
struct Args {
    /// Check the configuration file (or PATRONI_* environment) and exit.
    #[arg(long, group = "action")]
    validate_config: bool,
    /// Write a sample configuration (Patroni's defaults, the PATRONI_* environment, this
    /// host's name and address) to CONFIG, or to stdout, and exit.
    #[arg(long, group = "action")]
    generate_sample_config: bool,
    /// Write the configuration of a running PostgreSQL (reached with --dsn, or the PG*
    /// environment) to CONFIG, or to stdout, and exit.
    #[arg(long, group = "action")]
    generate_config: bool,
    /// Connection string of the instance --generate-config reads (a superuser connection).
    #[arg(long, value_name = "DSN")]
    dsn: Option<String>,
    /// Start even if the configuration asks for a guarantee Patrol does not give yet
    /// (a standby cluster, ...: see docs/patroni-compatibility.md).
    /// Same as PATROL_ALLOW_UNSUPPORTED=1.
    #[arg(long)]
    allow_unsupported: bool,
    /// Patroni YAML configuration file, or a directory of *.yml/*.yaml files (with
    /// --generate-config and --generate-sample-config: the file to write).
    configfile: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    if args.generate_sample_config || args.generate_config {
        let mode = if args.generate_config {
            generate::Mode::Running {
                dsn: args.dsn.clone(),
            }
        } else {
            generate::Mode::Sample
        };
        return match generate::run(&mode, args.configfile.as_deref(), &env) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("{message}");
                ExitCode::from(1)
            }
        };
    }
    if args.allow_unsupported {
        // Through the environment map, so that a reload sees it too.
        env.insert(config::ALLOW_VAR.to_string(), "1".to_string());
    }
    let source = match &args.configfile {
        Some(p) if p.exists() || args.validate_config => ConfigSource::File(p),
        _ => ConfigSource::EnvOnly,
    };
    let loaded = match config::load(source, &env) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("patrol: {e}");
            return ExitCode::from(1);
        }
    };
    if args.validate_config {
        for w in &loaded.warnings {
            println!("warning: {w}");
        }
    }
    // Before anything is bound or written: keys asking for guarantees we do not give.
    if !loaded.refusals.is_empty() {
        for r in &loaded.refusals {
            eprintln!("patrol: {r}");
        }
        return ExitCode::from(1);
    }
    if args.validate_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // Children (PostgreSQL, scripts) must not inherit our secrets (Patroni removes them too),
    // nor systemd's notification socket (PostgreSQL would report its own readiness there).
    for k in env.keys().filter(|k| k.starts_with("PATRONI_")) {
        std::env::remove_var(k);
    }
    let notifier = Notifier::from_env(&env);
    std::env::remove_var(Notifier::VAR);
    let _log_guard = match patrol_agent::logging::init(&loaded.config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("patrol: {e:#}");
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let notifier = notifier.unwrap_or_else(|e| {
        tracing::warn!("systemd will not be notified: {e}");
        Notifier::default()
    });
    if env.contains_key("WATCHDOG_USEC") {
        tracing::warn!(
            "the unit sets WatchdogSec=, but patrol sends no WATCHDOG=1 keep-alives: systemd will \
             kill it; remove WatchdogSec= (use the watchdog section for a hardware watchdog)"
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patrol: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let reload = patrol_agent::ReloadSource {
        path: match source {
            ConfigSource::File(p) => Some(p.to_path_buf()),
            ConfigSource::EnvOnly => None,
        },
        env,
    };
    match rt.block_on(patrol_agent::run(loaded.config, reload, notifier)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: patrol_agent::logging::CRITICAL, "{e:#}");
            ExitCode::from(1)
        }
    }
}
