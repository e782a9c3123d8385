//! TLS for the agent's own TCP connection to its PostgreSQL, from the superuser's libpq
//! options in `postgresql.authentication.superuser` (`sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`), with libpq's meaning of each mode:
//!
//! - `disable`: no TLS;
//! - `allow`, `prefer`: TLS if the server offers it, the server's certificate not checked;
//! - `require`: TLS, not checked, unless `sslrootcert` is given (then as `verify-ca`, as libpq);
//! - `verify-ca`: the certificate must chain to `sslrootcert` (or be one of its certificates,
//!   as OpenSSL accepts a self-signed root given as the server's certificate); the host name is
//!   not checked;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host.
//!
//! `sslcert`/`sslkey` (PEM) are presented as the client certificate. Not supported, and said
//! so in the error: an encrypted key (`sslpassword`), certificate revocation lists (`sslcrl`,
//! `sslcrldir`) are named in the configuration warnings.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PgUser;

/// How the agent's TCP connection negotiates TLS.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: SslMode,
    /// `None` with `SslMode::Disable`.
    pub connector: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .field("connector", &self.connector.is_some())
            .finish()
    }
}

/// The TLS settings of `user`'s libpq options; an error names the option that cannot be used.
pub fn client_tls(user: &PgUser) -> Result<ClientTls, String> {
    let opt = |k: &str| {
        user.extra
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let mode = opt("sslmode").unwrap_or("prefer");
    if opt("sslpassword").is_some() {
        return Err("sslpassword: encrypted client keys are not supported for the agent's own connection; use an unencrypted key (mode 0600)".into());
    }
    let rootcert = opt("sslrootcert");
    let verify = match mode {
        "disable" => {
            return Ok(ClientTls {
                mode: SslMode::Disable,
                connector: None,
            })
        }
        "allow" | "prefer" => Verify::Nothing,
        // As libpq: with a root certificate file `require` verifies like `verify-ca`; a file
        // that does not exist is no error for `require` (only for the verify modes).
        "require" if rootcert.is_some_and(|p| Path::new(p).exists()) => Verify::Ca,
        "require" => Verify::Nothing,
        "verify-ca" => Verify::Ca,
        "verify-full" => Verify::Full,
        other => return Err(format!("sslmode: unknown value {other:?}")),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(AnyCertificate(provider.clone())),
        Verify::Ca | Verify::Full => {
            let path = rootcert.ok_or_else(|| {
                format!("sslrootcert: sslmode {mode} needs the CA certificate to verify the server with")
            })?;
            let anchors = read_certs("sslrootcert", Path::new(path))?;
            let mut roots = RootCertStore::empty();
            for c in &anchors {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("sslrootcert: {path}: {e}"))?;
            }
            let inner =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert: {path}: {e}"))?;
            Arc::new(Chained {
                inner,
                anchors,
                check_name: verify == Verify::Full,
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (opt("sslcert"), opt("sslkey")) {
        (Some(cert), key) => {
            let chain = read_certs("sslcert", Path::new(cert))?;
            let key_path = key.unwrap_or(cert);
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| format!("sslkey: {key_path}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {cert}: {e}"))?
        }
        (None, Some(_)) => return Err("sslkey is set without sslcert".into()),
        (None, None) => builder.with_no_client_auth(),
    };
    let mode = match verify {
        Verify::Nothing if mode != "require" => SslMode::Prefer,
        _ => SslMode::Require,
    };
    Ok(ClientTls {
        mode,
        connector: Some(MakeRustlsConnect::new(config)),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Ca,
    Full,
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// `verify-ca` / `verify-full`: webpki's chain verification against `sslrootcert`. With
/// `verify-ca`, a server certificate that is itself in `sslrootcert` is trusted as it is
/// (OpenSSL's behaviour, which libpq users rely on with one self-signed certificate), and the
/// host name is not checked. `verify-full` takes webpki's answer as it is (a self-signed CA
/// certificate used as the server's is refused there).
#[derive(Debug)]
struct Chained {
    inner: Arc<WebPkiServerVerifier>,
    anchors: Vec<CertificateDer<'static>>,
    check_name: bool,
}

impl ServerCertVerifier for Chained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchored = self
            .anchors
            .iter()
            .any(|a| a.as_ref() == end_entity.as_ref());
        if anchored && !self.check_name {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a root certificate: encryption without server authentication,
/// as libpq. The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(pairs: &[(&str, &str)]) -> PgUser {
        PgUser {
            username: "postgres".into(),
            password: None,
            extra: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn modes() {
        assert_eq!(
            client_tls(&user(&[])).expect("prefer").mode,
            SslMode::Prefer
        );
        let off = client_tls(&user(&[("sslmode", "disable")])).expect("disable");
        assert_eq!(off.mode, SslMode::Disable);
        assert!(off.connector.is_none());
        assert_eq!(
            client_tls(&user(&[("sslmode", "require")]))
                .expect("require")
                .mode,
            SslMode::Require
        );
        // A root file that does not exist is not an error for require (libpq).
        let r = client_tls(&user(&[
            ("sslmode", "require"),
            ("sslrootcert", "/nonexistent/root.crt"),
        ]))
        .expect("require");
        assert_eq!(r.mode, SslMode::Require);
    }

    #[test]
    fn errors_name_the_option() {
        let e = client_tls(&user(&[("sslmode", "verify-ca")])).expect_err("no root");
        assert!(e.starts_with("sslrootcert:"), "{e}");
        let e = client_tls(&user(&[("sslmode", "bogus")])).expect_err("bogus");
        assert!(e.starts_with("sslmode:"), "{e}");
        let e = client_tls(&user(&[
            ("sslmode", "verify-full"),
            ("sslrootcert", "/nonexistent/ca.pem"),
        ]))
        .expect_err("missing file");
        assert!(e.starts_with("sslrootcert: /nonexistent/ca.pem"), "{e}");
        let e = client_tls(&user(&[("sslpassword", "x")])).expect_err("sslpassword");
        assert!(e.starts_with("sslpassword:"), "{e}");
    }
}
