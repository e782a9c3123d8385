//! Why the REST API could not start. Request-level failures are HTTP answers, not errors.

/// Failures of [`super::bind`] and [`super::ApiContext::new`]: all are configuration or
/// start-up problems that must stop the agent before it joins the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listen address could not be bound.
    #[error("cannot listen on restapi.listen {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A `restapi` TLS setting is unusable (file missing, no certificate, bad key, ...).
    #[error("restapi.{key}: {why}")]
    Tls { key: &'static str, why: String },
}

impl ApiError {
    pub(crate) fn tls(key: &'static str, why: impl Into<String>) -> ApiError {
        ApiError::Tls {
            key,
            why: why.into(),
        }
    }
}
