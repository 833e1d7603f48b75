//! Client and server connections, plain or TLS, behind one type each, and the TLS configuration
//! they are made with.
//!
//! Clients: an SSLRequest is answered `S` and the connection upgraded with rustls when
//! `praetor.proxy.tls` names a certificate and key, `N` otherwise; `tls.required` refuses clients
//! that did not ask. Servers: `praetor.proxy.backend_tls.mode` `prefer` and `require` send an
//! SSLRequest first (`require` fails when the server answers `N`), `verify-full` also checks the
//! server's certificate and name against `cafile`; the default `disable` connects in clear text.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::ProxyError;

/// A client connection.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A server connection.
pub(crate) enum ServerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }
}

macro_rules! delegate_io {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $ty::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $ty::Plain(s) => s.is_write_vectored(),
                    $ty::Tls(s) => s.is_write_vectored(),
                }
            }
        }
    };
}

delegate_io!(ClientStream);
delegate_io!(ServerStream);

impl std::os::fd::AsRawFd for ServerStream {
    /// The TCP socket's descriptor (under TLS too): for a forced shutdown of a fenced connection.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            ServerStream::Plain(s) => s.as_raw_fd(),
            ServerStream::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

/// TLS towards clients: the acceptor, and whether clients must use it.
#[derive(Clone)]
pub(crate) struct ClientTls {
    pub acceptor: TlsAcceptor,
    pub required: bool,
}

/// Loads the certificate chain and key for client TLS.
pub(crate) fn client_tls(
    certfile: &Path,
    keyfile: &Path,
    required: bool,
) -> Result<ClientTls, ProxyError> {
    let tls_error = |key: &'static str, reason: String| ProxyError::Config { key, reason };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .map_err(|e| {
            tls_error(
                "praetor.proxy.tls.certfile",
                format!("{}: {e}", certfile.display()),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            tls_error(
                "praetor.proxy.tls.certfile",
                format!("{}: {e}", certfile.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(tls_error(
            "praetor.proxy.tls.certfile",
            format!("{}: no certificate in the file", certfile.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(keyfile).map_err(|e| {
        tls_error(
            "praetor.proxy.tls.keyfile",
            format!("{}: {e}", keyfile.display()),
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_error("praetor.proxy.tls", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| tls_error("praetor.proxy.tls", e.to_string()))?;
    Ok(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        required,
    })
}

/// How to reach servers: `praetor.proxy.backend_tls.mode`.
#[derive(Clone, Default)]
pub(crate) enum BackendTls {
    /// Clear text.
    #[default]
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer(TlsConnector),
    /// TLS always, unverified.
    Require(TlsConnector),
    /// TLS always, certificate and host name verified.
    VerifyFull(TlsConnector),
}

impl BackendTls {
    /// `disable`, `prefer`, `require`, `verify-full` (with `cafile`).
    pub fn from_config(
        mode: Option<&str>,
        cafile: Option<&Path>,
    ) -> Result<BackendTls, ProxyError> {
        let err = |reason: String| ProxyError::Config {
            key: "praetor.proxy.backend_tls",
            reason,
        };
        let builder = || {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))
        };
        let unverified = || -> Result<TlsConnector, ProxyError> {
            let config = builder()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification))
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(config)))
        };
        match mode.unwrap_or("disable") {
            "disable" => Ok(BackendTls::Disable),
            "prefer" => Ok(BackendTls::Prefer(unverified()?)),
            "require" => Ok(BackendTls::Require(unverified()?)),
            "verify-full" => {
                let cafile =
                    cafile.ok_or_else(|| err("verify-full needs backend_tls.cafile".into()))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(cafile)
                    .map_err(|e| err(format!("{}: {e}", cafile.display())))?
                {
                    let cert = cert.map_err(|e| err(format!("{}: {e}", cafile.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| err(format!("{}: {e}", cafile.display())))?;
                }
                let config = builder()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(BackendTls::VerifyFull(TlsConnector::from(Arc::new(config))))
            }
            other => Err(err(format!(
                "unknown mode {other:?}: use disable, prefer, require or verify-full"
            ))),
        }
    }

    /// Negotiates TLS on a fresh connection to `host` (SSLRequest first) as the mode says.
    pub async fn connect(&self, mut tcp: TcpStream, host: &str) -> io::Result<ServerStream> {
        let (connector, required) = match self {
            BackendTls::Disable => return Ok(ServerStream::Plain(tcp)),
            BackendTls::Prefer(c) => (c, false),
            BackendTls::Require(c) | BackendTls::VerifyFull(c) => (c, true),
        };
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let tls = connector.connect(name, tcp).await?;
                Ok(ServerStream::Tls(Box::new(tls)))
            }
            b'N' if !required => Ok(ServerStream::Plain(tcp)),
            b'N' => Err(io::Error::other("the server does not support TLS")),
            other => Err(io::Error::other(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            ))),
        }
    }
}

/// `require` and `prefer`: encrypt without verifying the server (libpq's `sslmode=require`).
#[derive(Debug)]
struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
