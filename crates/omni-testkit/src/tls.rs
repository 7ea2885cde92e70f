//! A throwaway CA and a server certificate for `localhost` and 127.0.0.1.
//!
//! Each server gets its own CA rather than a certificate shipped in the
//! repository: nothing to expire, and a test can only trust the server it
//! started. The certificates follow what webpki (rustls) insists on — a v3
//! CA with `keyCertSign`, a leaf with subjectAltNames and `serverAuth` — so
//! clients verify them for real.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The PEM files written for one server.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    /// The CA certificate, PEM, as clients should trust it.
    pub ca_pem: String,
    pub ca_path: PathBuf,
    /// The server's certificate chain (leaf only), PEM.
    pub cert_path: PathBuf,
    /// The server's private key, PKCS#8 PEM.
    pub key_path: PathBuf,
}

/// Generates the CA and the server certificate and writes them into `dir`
/// as `ca.pem`, `server.pem` and `server.key`.
pub(crate) fn write_certificates(dir: &Path) -> TlsFiles {
    let ca_key = KeyPair::generate().expect("generate CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "omni-testkit CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().expect("generate server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).expect("sign server cert");

    let files = TlsFiles {
        ca_pem: ca_cert.pem(),
        ca_path: dir.join("ca.pem"),
        cert_path: dir.join("server.pem"),
        key_path: dir.join("server.key"),
    };
    fs::write(&files.ca_path, &files.ca_pem).expect("write ca.pem");
    fs::write(&files.cert_path, cert.pem()).expect("write server.pem");
    fs::write(&files.key_path, key.serialize_pem()).expect("write server.key");
    files
}
