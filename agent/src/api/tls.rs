//! TLS for the REST API with rustls (ring provider): the agent's server configuration from
//! `restapi.{certfile,keyfile,cafile,verify_client}`, and the client configuration `praetor ctl`
//! builds from `ctl.{cacert,certfile,keyfile,insecure}`.

use std::path::Path;
use std::sync::Arc;

use praetor_config::{RestApi, VerifyClient};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{key}: {}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn private_key(path: &Path, key: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{key}: {}: {e}", path.display()))
}

fn roots(path: &Path, key: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path, key)? {
        store
            .add(c)
            .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    }
    Ok(store)
}

/// The server configuration, or `None` when `restapi.certfile` is unset (plain HTTP). Errors name
/// the key and file.
pub fn server_config(r: &RestApi) -> Result<Option<Arc<ServerConfig>>, String> {
    let Some(certfile) = &r.certfile else {
        return Ok(None);
    };
    let chain = certs(certfile, "restapi.certfile")?;
    let key = match &r.keyfile {
        Some(k) => private_key(k, "restapi.keyfile")?,
        None => private_key(certfile, "restapi.certfile")?,
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = r.verify_client().map_err(|e| e.to_string())?;
    let builder = match verify {
        VerifyClient::None => builder.with_no_client_auth(),
        VerifyClient::Optional | VerifyClient::Required => {
            let ca = r.cafile.as_ref().ok_or_else(|| {
                "restapi.cafile: needed to verify client certificates (verify_client)".to_string()
            })?;
            let roots = Arc::new(roots(ca, "restapi.cafile")?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let v = if verify == VerifyClient::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
        }
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("restapi.certfile/keyfile: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// How a client trusts and identifies itself to agents.
#[derive(Debug, Clone, Default)]
pub struct ClientTls<'a> {
    /// CA of the agents' certificates; default: the system's bundle.
    pub cacert: Option<&'a Path>,
    /// Client certificate.
    pub certfile: Option<&'a Path>,
    /// Its key (default: in `certfile`).
    pub keyfile: Option<&'a Path>,
    /// Accept any server certificate.
    pub insecure: bool,
}

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client configuration. Errors name the key and file.
pub fn client_config(t: &ClientTls<'_>) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if t.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider())))
    } else {
        let store = match t.cacert {
            Some(ca) => roots(ca, "ctl.cacert")?,
            None if Path::new(SYSTEM_BUNDLE).exists() => {
                roots(Path::new(SYSTEM_BUNDLE), "system CA bundle")?
            }
            None => RootCertStore::empty(),
        };
        builder.with_root_certificates(store)
    };
    let mut cfg = match t.certfile {
        Some(cert) => {
            let chain = certs(cert, "ctl.certfile")?;
            let key = private_key(t.keyfile.unwrap_or(cert), "ctl.keyfile")?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("ctl.certfile/keyfile: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// `ctl.insecure`: any certificate is accepted (signatures are still checked).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
