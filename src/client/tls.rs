//! rustls client configuration from [`TlsOptions`], and TLS failures explained.
//!
//! A configuration is built once per distinct set of options and shared (`Arc`) by every
//! connection that uses it, so each side reads its files once and its connections share
//! one session cache (resumption). The cache holds as many entries as there are distinct
//! option sets in the configuration (one or two), so it is bounded.
//!
//! Verification is rustls' WebPKI verifier: the chain must lead to a root of `ca_file` (or
//! of the system's store) and the certificate must name `server_name` (or the URL's host; an
//! IP host is matched against the certificate's IP SANs). `insecure` replaces the verifier
//! with one that accepts any certificate but still checks the handshake signatures, so the
//! connection is encrypted but not authenticated.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore,
};

use super::endpoint::Endpoint;
use crate::config::TlsOptions;

/// The configurations built so far, one per distinct option set.
static CONFIGS: Mutex<Vec<(TlsOptions, Arc<ClientConfig>)>> = Mutex::new(Vec::new());

/// ring's provider (aws-lc-rs, rustls' default, needs cmake; ring's lack of post-quantum key
/// exchange is why rustls marks this function deprecated).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The shared client configuration for `options` (built on first use; `endpoint` names the
/// server in the warning of `insecure`). The error says which file is wrong and how.
pub fn client_config(options: &TlsOptions, endpoint: &str) -> Result<Arc<ClientConfig>, String> {
    let mut configs = CONFIGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = configs.iter().find(|(o, _)| o == options) {
        return Ok(c.clone());
    }
    let config = Arc::new(build(options)?);
    if options.insecure {
        tracing::warn!(
            %endpoint,
            "TLS certificate verification is OFF (insecure = true): the connection is encrypted but the server is not authenticated"
        );
    }
    configs.push((options.clone(), config.clone()));
    Ok(config)
}

fn build(options: &TlsOptions) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        builder.with_root_certificates(roots(options.ca_file.as_deref())?)
    };
    match (&options.cert_file, &options.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read cert_file {cert}: {e}"))?;
            if chain.is_empty() {
                return Err(format!("cert_file {cert} holds no PEM certificate"));
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read key_file {key}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("cert_file and key_file do not make a client identity: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("cert_file and key_file go together (mutual TLS needs both)".into()),
    }
}

/// The trust anchors: `ca_file`, or the system's store.
fn roots(ca_file: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read ca_file {path}: {e}"))?;
            for c in certs {
                store
                    .add(c)
                    .map_err(|e| format!("ca_file {path} holds an unusable certificate: {e}"))?;
            }
            if store.is_empty() {
                return Err(format!("ca_file {path} holds no PEM certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(
                    "the system has no CA certificates (install ca-certificates, or set ca_file)"
                        .into(),
                );
            }
        }
    }
    Ok(store)
}

/// `insecure = true`: any certificate is accepted; handshake signatures are still checked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The SNI / verification name of `endpoint`.
pub fn server_name(endpoint: &Endpoint) -> Result<ServerName<'static>, String> {
    ServerName::try_from(endpoint.server_name().to_string())
        .map_err(|_| format!("{:?} is not a valid server_name", endpoint.server_name()))
}

/// The rustls error inside an I/O error, if any.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// What a TLS failure means for the user, and what to change.
pub fn explain(endpoint: &Endpoint, e: &rustls::Error) -> String {
    use rustls::Error as E;
    let name = endpoint.server_name();
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is signed by an unknown CA (not in {}): set ca_file to the CA that signed it",
                endpoint
                    .url()
                    .tls
                    .as_ref()
                    .and_then(|t| t.ca_file.as_deref())
                    .map_or("the system's roots".to_string(), |f| format!("ca_file {f}"))
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                let holds = match c {
                    CertificateError::NotValidForNameContext { presented, .. }
                        if !presented.is_empty() =>
                    {
                        // rustls shows them as `DnsName("a.b")` / `IpAddress(1.2.3.4)`.
                        let names: Vec<&str> = presented
                            .iter()
                            .map(|p| {
                                p.trim_start_matches("DnsName(\"")
                                    .trim_start_matches("IpAddress(")
                                    .trim_end_matches(['"', ')'])
                            })
                            .collect();
                        format!(" (it holds {})", names.join(", "))
                    }
                    _ => String::new(),
                };
                if endpoint.has_server_name() {
                    format!(
                        "name mismatch: the server's certificate is not valid for server_name {name:?}{holds}: set server_name to a name the certificate holds"
                    )
                } else {
                    format!(
                        "name mismatch: the server's certificate is not valid for {name:?}{holds}: set server_name to the name in the certificate (clouds often reach nodes by IP)"
                    )
                }
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired: renew it on the server".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check the clocks)".into()
            }
            other => format!("the server's certificate was rejected: {other:?}"),
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate: set cert_file and key_file".into()
        }
        E::AlertReceived(
            AlertDescription::HandshakeFailure | AlertDescription::BadCertificate,
        ) if endpoint
            .url()
            .tls
            .as_ref()
            .is_some_and(|t| t.cert_file.is_none()) =>
        {
            "the server ended the handshake: it probably requires a client certificate (set cert_file and key_file)".into()
        }
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired,
        ) => format!("the server rejected our client certificate ({e})"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            format!(
                "the server does not speak TLS ({e}): is this a plain port? use redis:// or the server's tls-port"
            )
        }
        other => other.to_string(),
    }
}
