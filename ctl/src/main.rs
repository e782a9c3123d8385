//! `patrolctl`: parse the command line, run the command, map the result to patronictl's exit
//! codes and messages. The commands live in the `patrol_ctl` library.
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use patrol_ctl::{Aborted, Args, CtlError};

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(patrol_ctl::run(args));
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Aborted>().is_some() => {
            eprintln!("\nAborted!");
            ExitCode::from(1)
        }
        Err(e) if e.downcast_ref::<CtlError>().is_some() => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}
