//! A small HTTP/1.1 client for agents' REST APIs, over plain TCP or rustls, with basic auth:
//! what `praetor ctl` uses for restart/reload/reinit/switchover and what the API uses to ask
//! candidates how they are.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;

/// An answer: status code and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl ApiResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.body).map_err(|e| format!("not JSON ({e}): {}", self.body))
    }
}

/// How to call agents: TLS settings, credentials for unsafe methods, a timeout per request.
#[derive(Clone)]
pub struct ApiClient {
    tls: Option<Arc<rustls::ClientConfig>>,
    basic: Option<String>,
    timeout: Duration,
    source: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("tls", &self.tls.is_some())
            .field("basic_auth", &self.basic.as_ref().map(|_| "********"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ApiClient {
    /// Plain HTTP (https URLs fail), no credentials.
    pub fn plain(timeout: Duration) -> ApiClient {
        ApiClient {
            tls: None,
            basic: None,
            timeout,
            source: None,
        }
    }

    /// With TLS for `https://` URLs and basic-auth credentials sent on every request.
    pub fn new(
        tls: Option<Arc<rustls::ClientConfig>>,
        credentials: Option<(&str, &str)>,
        timeout: Duration,
    ) -> ApiClient {
        ApiClient {
            tls,
            basic: credentials.map(|(u, p)| super::access::basic_key(u, p)),
            timeout,
            source: None,
        }
    }

    /// The same client with another timeout.
    pub fn with_timeout(&self, timeout: Duration) -> ApiClient {
        ApiClient {
            timeout,
            ..self.clone()
        }
    }

    /// The same client connecting from `ip` (a local address).
    pub fn with_source_ip(&self, ip: std::net::IpAddr) -> ApiClient {
        ApiClient {
            source: Some(ip),
            ..self.clone()
        }
    }

    /// Sends `method url` with an optional JSON body.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, String> {
        tokio::time::timeout(self.timeout, self.request_inner(method, url, body))
            .await
            .map_err(|_| format!("{method} {url}: no answer within {:?}", self.timeout))?
    }

    async fn request_inner(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") | None => false,
            Some(other) => return Err(format!("{url}: unsupported scheme {other}")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url}: no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::USER_AGENT, "praetor");
        if let Some(b) = &self.basic {
            req = req.header(hyper::header::AUTHORIZATION, format!("Basic {b}"));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let tcp = self
            .connect(&host, port)
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let what = format!("{method} {url}");
        if https {
            let cfg = self
                .tls
                .clone()
                .ok_or_else(|| format!("{what}: no TLS configuration for https"))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{what}: bad server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("{what}: TLS: {e}"))?;
            send(tls, req, &what).await
        } else {
            send(tcp, req, &what).await
        }
    }
}

impl ApiClient {
    async fn connect(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let Some(source) = self.source else {
            return tokio::net::TcpStream::connect((host, port)).await;
        };
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .ok_or_else(|| std::io::Error::other(format!("{host}: no address")))?;
        let socket = if source.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        socket.connect(addr).await
    }
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>, what: &str) -> Result<ApiResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{what}: {e}"))?
            .to_bytes();
        Ok(ApiResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
    .await;
    driver.abort();
    result
}

/// The base URL of a member's API from its `api_url` (`http://h:8008/patroni` → `http://h:8008`).
pub fn api_base(api_url: &str) -> String {
    let (scheme, rest) = api_url.split_once("://").unwrap_or(("http", api_url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(
            api_base("http://10.0.0.1:8008/patroni"),
            "http://10.0.0.1:8008"
        );
        assert_eq!(api_base("https://h:1/"), "https://h:1");
        assert_eq!(api_base("h:1"), "http://h:1");
    }
}
