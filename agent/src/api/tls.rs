//! HTTPS for the REST API (spec 2.1, 2.2): `restapi.certfile`/`keyfile`, and client certificates
//! checked against `restapi.cafile` when `verify_client` is `optional` or `required`. rustls with
//! the `ring` provider; files are PEM.
//!
//! Not supported (refused with a clear message, never silently ignored): encrypted private keys
//! (`keyfile_password`) and OpenSSL cipher strings (`ciphers`, a warning: rustls' safe defaults
//! are used).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::error::ApiError;
use crate::config::RestApi;

/// `restapi.verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyClient {
    None,
    /// A certificate, if presented, must verify; unsafe endpoints demand one (403).
    Optional,
    /// The TLS handshake demands a verified certificate.
    Required,
}

impl VerifyClient {
    pub fn from_config(v: Option<&str>) -> VerifyClient {
        match v.map(str::to_ascii_lowercase).as_deref() {
            Some("optional") => VerifyClient::Optional,
            Some("required") => VerifyClient::Required,
            _ => VerifyClient::None,
        }
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ApiError> {
    std::fs::read(path)
        .map_err(|e| ApiError::tls(key, format!("cannot read {}: {e}", path.display())))
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::tls(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ApiError::tls(
            key,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, ApiError> {
    let pem = read(key, path)?;
    if String::from_utf8_lossy(&pem).contains("ENCRYPTED") {
        return Err(ApiError::tls(
            key,
            format!(
                "{} is an encrypted private key; Patrol cannot decrypt keys (keyfile_password): \
                 store it unencrypted (openssl pkey -in key.pem -out plain.pem) with mode 0600",
                path.display()
            ),
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ApiError::tls(
            key,
            format!("no usable private key in {}: {e}", path.display()),
        )
    })
}

/// The server TLS configuration, or `None` when `restapi.certfile` is not set (plain HTTP).
pub fn server_config(api: &RestApi) -> Result<Option<Arc<ServerConfig>>, ApiError> {
    let Some(certfile) = &api.certfile else {
        return Ok(None);
    };
    if api.ciphers.is_some() {
        tracing::warn!(
            "restapi.ciphers is an OpenSSL cipher list; Patrol uses rustls' safe default cipher suites and ignores it"
        );
    }
    let chain = certs("certfile", certfile)?;
    // As Python's `load_cert_chain(keyfile=None)`: without keyfile the key is in the certfile.
    let key = private_key("keyfile", api.keyfile.as_deref().unwrap_or(certfile))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verify = VerifyClient::from_config(api.verify_client.as_deref());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::tls("certfile", e.to_string()))?;
    let builder = match verify {
        VerifyClient::None => builder.with_no_client_auth(),
        VerifyClient::Optional | VerifyClient::Required => {
            let cafile = api.cafile.as_deref().ok_or_else(|| {
                ApiError::tls(
                    "cafile",
                    "verify_client is optional/required but no cafile is set to verify client certificates with",
                )
            })?;
            let mut roots = RootCertStore::empty();
            let anchors = certs("cafile", cafile)?;
            for c in anchors.clone() {
                roots
                    .add(c)
                    .map_err(|e| ApiError::tls("cafile", format!("{}: {e}", cafile.display())))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if verify == VerifyClient::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v
                .build()
                .map_err(|e| ApiError::tls("cafile", e.to_string()))?;
            builder.with_client_cert_verifier(Arc::new(TrustedOrChained { inner: v, anchors }))
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| ApiError::tls("keyfile", format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// Client certificates as OpenSSL (and so Patroni) accepts them: a certificate that is itself
/// in `cafile` is trusted as it is, even a self-signed one marked as a CA (Patroni's acceptance
/// harness uses one certificate as CA, server and client certificate, which webpki alone
/// refuses as "a CA used as an end entity"); any other goes through webpki's chain
/// verification. The handshake's signature checks are webpki's in both cases, so the client
/// must still hold the certificate's key.
#[derive(Debug)]
struct TrustedOrChained {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    anchors: Vec<CertificateDer<'static>>,
}

impl rustls::server::danger::ClientCertVerifier for TrustedOrChained {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if self
            .anchors
            .iter()
            .any(|a| a.as_ref() == end_entity.as_ref())
        {
            return Ok(rustls::server::danger::ClientCertVerified::assertion());
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
