//! The PEM files of TLS to etcd: plain data, filled in by the configuration reader and turned
//! into the client's TLS options by `etcd`.

/// PEM files for TLS to etcd, as Patroni's `etcd3.cacert`, `cert` and `key`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's certificate (default: the system's roots are not used, so
    /// give it whenever etcd's certificate is not from a public CA).
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}
