//! A line-oriented client over plain TCP or rustls, written independently
//! of the harness's own IMAP client so the tests check the servers, not
//! the harness against itself.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

pub(crate) type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Reads CRLF lines and writes commands on any stream.
#[derive(Debug)]
pub(crate) struct Conn<S: Read + Write> {
    stream: BufReader<S>,
}

impl<S: Read + Write> Conn<S> {
    pub(crate) fn new(stream: S) -> Self {
        Conn {
            stream: BufReader::new(stream),
        }
    }

    /// The next line without its CRLF; panics if the server closed.
    pub(crate) fn line(&mut self) -> String {
        self.try_line().expect("server closed the connection")
    }

    /// The next line, or `None` once the server closed the connection.
    pub(crate) fn try_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stream.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    pub(crate) fn send(&mut self, text: &str) {
        self.try_send(text).expect("write");
    }

    pub(crate) fn try_send(&mut self, text: &str) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(format!("{text}\r\n").as_bytes())?;
        stream.flush()
    }

    /// Sends an IMAP command with `tag` and returns all lines up to and
    /// including the tagged one.
    pub(crate) fn imap(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}"));
        let mut lines = Vec::new();
        loop {
            let Some(line) = self.try_line() else {
                panic!("connection closed after {lines:?}");
            };
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Reads one SMTP reply (all its continuation lines); returns the last.
    pub(crate) fn smtp_reply(&mut self) -> String {
        loop {
            let line = self.line();
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line;
            }
        }
    }

    pub(crate) fn into_inner(self) -> S {
        assert!(self.stream.buffer().is_empty(), "unread data before TLS");
        self.stream.into_inner()
    }
}

pub(crate) fn connect(port: u16) -> TcpStream {
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp
}

/// A client config trusting exactly the PEM CA given (none if empty).
pub(crate) fn tls_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Completes a TLS handshake as `name` over `tcp`, verifying the server.
pub(crate) fn handshake(
    config: Arc<ClientConfig>,
    name: &str,
    tcp: TcpStream,
) -> Result<Tls, String> {
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(tls)
}
