//! `patrolctl`'s own failures, reported as patronictl reports them.

/// An error patronictl reports as `Error: <text>` with exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

/// `Err(CtlError(msg))`, as `anyhow`.
pub(crate) fn fail<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(CtlError(msg.into()).into())
}
