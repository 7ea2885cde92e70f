//! Getting a logged-in IMAP session: TCP, then implicit TLS or STARTTLS
//! (rustls, Mozilla roots plus an optional private CA), then LOGIN or
//! AUTHENTICATE XOAUTH2.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use async_imap::{Client, Session};
use omni_connector::{ConfigError, SecretRef};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::ImapError;
use crate::config::{ImapSettings, TlsMode};

/// The byte stream under a session: plain only for loopback servers.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

pub type ImapSession = Session<ImapStream>;

/// The TLS client configuration of a channel, built once when the channel
/// is (re)loaded so a bad `ca_file` is a config error, not a runtime one.
pub fn tls_config(settings: &ImapSettings) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| {
                ConfigError::new(
                    "imap.ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(ConfigError::new(
                "imap.ca_file",
                format!("no certificates in {}", path.display()),
            ));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                ConfigError::new("imap.ca_file", format!("invalid certificate: {e}"))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("imap.tls", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How to log in, resolved from the settings at each connection.
#[derive(Debug, Clone)]
pub enum Credentials {
    Password(SecretRef),
    OAuth2(SecretRef),
}

struct XOAuth2 {
    response: String,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;

    /// The initial response is the whole exchange; a second challenge is
    /// the server's JSON error, answered with an empty line so it sends
    /// the tagged NO (RFC 7628 style).
    fn process(&mut self, _challenge: &[u8]) -> Self::Response {
        std::mem::take(&mut self.response)
    }
}

/// Connects, secures and logs in, each step bounded by `timeout`.
pub async fn connect(
    settings: &ImapSettings,
    credentials: &Credentials,
    tls: &Arc<ClientConfig>,
    timeout: Duration,
) -> Result<ImapSession, ImapError> {
    let step = |what: &'static str| move |_| ImapError::Timeout(what);
    let host = settings.host.as_str();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, settings.port())))
        .await
        .map_err(step("connect"))?
        .map_err(ImapError::Connect)?;
    tcp.set_nodelay(true).map_err(ImapError::Connect)?;
    let server_name = || {
        ServerName::try_from(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        )
        .map_err(|e| ImapError::Tls(format!("invalid server name {host:?}: {e}")))
    };
    let handshake = |tcp: TcpStream| async {
        let name = server_name()?;
        let stream =
            tokio::time::timeout(timeout, TlsConnector::from(tls.clone()).connect(name, tcp))
                .await
                .map_err(step("tls handshake"))?
                .map_err(|e| ImapError::Tls(e.to_string()))?;
        Ok::<_, ImapError>(ImapStream::Tls(Box::new(stream)))
    };

    let client = match settings.tls {
        TlsMode::Tls => {
            let mut client = Client::new(handshake(tcp).await?);
            greeting(&mut client, timeout).await?;
            client
        }
        TlsMode::None => {
            let mut client = Client::new(ImapStream::Plain(tcp));
            greeting(&mut client, timeout).await?;
            client
        }
        TlsMode::Starttls => {
            let mut client = Client::new(ImapStream::Plain(tcp));
            greeting(&mut client, timeout).await?;
            tokio::time::timeout(timeout, client.run_command_and_check_ok("STARTTLS", None))
                .await
                .map_err(step("starttls"))?
                .map_err(|e| ImapError::Tls(format!("server refused STARTTLS: {e}")))?;
            let ImapStream::Plain(tcp) = client.into_inner() else {
                unreachable!("the stream is plain before STARTTLS");
            };
            // No greeting after STARTTLS: the server waits for a command.
            Client::new(handshake(tcp).await?)
        }
    };

    let login = async {
        match credentials {
            Credentials::Password(secret) => {
                let password = resolve(secret)?;
                client
                    .login(&settings.username, password)
                    .await
                    .map_err(|(e, _)| ImapError::Login(e.to_string()))
            }
            Credentials::OAuth2(secret) => {
                let token = resolve(secret)?;
                let auth = XOAuth2 {
                    response: format!("user={}\x01auth=Bearer {token}\x01\x01", settings.username),
                };
                client
                    .authenticate("XOAUTH2", auth)
                    .await
                    .map_err(|(e, _)| ImapError::Login(e.to_string()))
            }
        }
    };
    tokio::time::timeout(timeout, login)
        .await
        .map_err(step("login"))?
}

fn resolve(secret: &SecretRef) -> Result<String, ImapError> {
    let secret = secret
        .resolve()
        .map_err(|e| ImapError::Login(format!("credentials unavailable: {e}")))?;
    String::from_utf8(secret.expose().to_vec())
        .map_err(|_| ImapError::Login("credentials are not valid UTF-8".into()))
}

async fn greeting(client: &mut Client<ImapStream>, timeout: Duration) -> Result<(), ImapError> {
    let response = tokio::time::timeout(timeout, client.read_response())
        .await
        .map_err(|_| ImapError::Timeout("greeting"))?
        .map_err(ImapError::Connect)?;
    match response {
        Some(response) => match response.parsed() {
            async_imap::imap_proto::Response::Data {
                status: async_imap::imap_proto::Status::Bye,
                ..
            } => Err(ImapError::Protocol(
                "server said BYE in its greeting".into(),
            )),
            _ => Ok(()),
        },
        None => Err(ImapError::Protocol(
            "connection closed before the greeting".into(),
        )),
    }
}
