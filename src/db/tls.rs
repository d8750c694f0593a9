//! TLS for PostgreSQL connections, with rustls, by libpq's `sslmode`.
//!
//! Security policy, as libpq defines the modes:
//! - `prefer`, `allow` and `require` encrypt but do not authenticate the server: the
//!   certificate is not checked, but the handshake's signatures are (so the session is keyed
//!   to the certificate the server showed, which is what channel binding builds on).
//! - `verify-ca` checks the chain against the roots (the system's store, or `sslrootcert`) and
//!   the validity dates; any host name.
//! - `verify-full` checks that as well as the host name (DNS name or IP address), through
//!   rustls' own WebPKI verifier; nothing here re-implements a certificate check.
//!
//! A verification failure is turned into a sentence naming the cause (untrusted CA, wrong host
//! name, expired), since that sentence is all an operator sees at start.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::url::{Identity, Roots, SslMode, TlsSettings};

/// Why TLS could not be set up or the server's certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {path}: {reason}")]
    File {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (never the file's content).
        reason: String,
    },
    /// The roots could not be loaded.
    #[error("no trusted root certificates: {0}")]
    Roots(String),
    /// rustls refused the configuration (e.g. a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider: ring, named explicitly since the build carries more than one.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a connection's TLS was, once made: the protocol version, or none for plaintext.
pub type Negotiated = Arc<Mutex<Option<&'static str>>>;

/// A `MakeTlsConnect` for tokio-postgres built from [`TlsSettings`].
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    negotiated: Negotiated,
    roots_label: String,
}

impl Connector {
    /// Builds the client configuration: reads roots, client certificate and key now, so that
    /// a file that cannot be read stops the start with its name.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let provider = provider();
        let versions: &[&rustls::SupportedProtocolVersion] = if settings.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = if settings.mode.verifies_chain() {
            let roots = Arc::new(load_roots(&settings.roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            Arc::new(Verifying {
                inner: webpki,
                check_name: settings.mode == SslMode::VerifyFull,
            })
        } else {
            Arc::new(Unverified { provider })
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match &settings.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                let (chain, key) = load_identity(identity)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Config(format!("client certificate and key: {e}")))?
            }
        };
        let roots_label = match &settings.roots {
            Roots::System => "the system's root certificates".to_owned(),
            Roots::File(path) => format!("sslrootcert {}", path.display()),
        };
        Ok(Self {
            config: Arc::new(config),
            negotiated: Negotiated::default(),
            roots_label,
        })
    }

    /// A connector for one connection, and where it records what that connection negotiated.
    pub fn for_connection(&self) -> (Self, Negotiated) {
        let negotiated = Negotiated::default();
        let connector = Self {
            negotiated: negotiated.clone(),
            ..self.clone()
        };
        (connector, negotiated)
    }
}

/// Reads the roots for the `verify-*` modes.
fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Roots(
                    "the system's store is empty (install ca-certificates, or give sslrootcert=PATH)"
                        .into(),
                ));
            }
        }
        Roots::File(path) => {
            let certs = read_certs(path, "sslrootcert")?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(file_error(
                    "sslrootcert",
                    path,
                    "no usable certificate in it",
                ));
            }
        }
    }
    Ok(store)
}

fn file_error(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Every certificate of a PEM file (a bundle such as RDS's `global-bundle.pem`).
fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(what, path, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(what, path, format!("not PEM certificates ({e})")))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// A client certificate chain and its key.
fn load_identity(
    identity: &Identity,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    match identity {
        Identity::Pem { cert, key } => {
            let chain = read_certs(cert, "sslcert")?;
            let bytes = std::fs::read(key).map_err(|e| file_error("sslkey", key, e))?;
            if bytes
                .windows(b"ENCRYPTED PRIVATE KEY".len())
                .any(|w| w == b"ENCRYPTED PRIVATE KEY")
            {
                return Err(file_error(
                    "sslkey",
                    key,
                    "the key is encrypted, which clerk-sync cannot open: give an unencrypted key, or a PKCS#12 bundle as sslidentity with sslpassword",
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
                file_error(
                    "sslkey",
                    key,
                    "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
                )
            })?;
            Ok((chain, key))
        }
        Identity::Pkcs12 { path, password } => {
            let bytes = std::fs::read(path).map_err(|e| file_error("sslidentity", path, e))?;
            let password = password.as_ref().map_or("", |p| p.expose());
            let store = p12_keystore::KeyStore::from_pkcs12(
                &bytes,
                password,
                p12_keystore::Pkcs12ImportPolicy::Relaxed,
            )
            .map_err(|_| {
                file_error(
                    "sslidentity",
                    path,
                    "not a PKCS#12 bundle this sslpassword opens",
                )
            })?;
            let chain = store
                .entries()
                .find_map(|(_, entry)| match entry {
                    p12_keystore::KeyStoreEntry::PrivateKeyChain(chain) => Some(chain),
                    _ => None,
                })
                .ok_or_else(|| file_error("sslidentity", path, "no private key in the bundle"))?;
            let certs: Vec<CertificateDer<'static>> = chain
                .certs()
                .iter()
                .map(|c| CertificateDer::from(c.as_der().to_vec()))
                .collect();
            if certs.is_empty() {
                return Err(file_error(
                    "sslidentity",
                    path,
                    "no certificate for its key",
                ));
            }
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
            Ok((certs, key))
        }
    }
}

/// `verify-ca` and `verify-full`: rustls' WebPKI verifier; for `verify-ca` a certificate for
/// another name is accepted (every other failure stands).
#[derive(Debug)]
struct Verifying {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verifying {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
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

/// `prefer`, `allow`, `require`: encrypted, the certificate not checked (libpq's and
/// Prisma's meaning); the handshake's signatures still are.
#[derive(Debug)]
struct Unverified {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} is not a host name TLS can verify"),
            )
        })?;
        Ok(Connect {
            connector: self.clone(),
            name,
            host: domain.to_owned(),
        })
    }
}

/// One connection's handshake.
pub struct Connect {
    connector: Connector,
    name: ServerName<'static>,
    host: String,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Connect {
                connector,
                name,
                host,
            } = self;
            let tls = tokio_rustls::TlsConnector::from(connector.config.clone());
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|e| explain(e, &host, &connector.roots_label))?;
            let version = match stream.get_ref().1.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                Some(_) => "TLS",
                None => "TLS",
            };
            if let Ok(mut slot) = connector.negotiated.lock() {
                *slot = Some(version);
            }
            Ok(Stream(stream))
        })
    }
}

/// Turns rustls' verdict on the server's certificate into a sentence naming the cause.
fn explain(error: io::Error, host: &str, roots: &str) -> io::Error {
    let Some(rustls_error) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    let sentence = match rustls_error {
        rustls::Error::InvalidCertificate(cause) => match cause {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the server's certificate is not signed by a trusted CA (checked against {roots}); \
                 give its CA with sslrootcert=PATH, or use sslmode=require to encrypt without verifying"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("the server's certificate is not valid for the host name {host:?} (sslmode=verify-full checks it against the certificate's subjectAltName entries, not its CN; connect by a name the certificate carries)")
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is not valid yet (check this machine's clock)".to_owned()
            }
            CertificateError::Revoked => "the server's certificate has been revoked".to_owned(),
            other => format!("the server's certificate was refused: {other:?}"),
        },
        rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::AccessDenied,
        ) => "the server refused the client certificate (sslcert/sslkey or sslidentity): it wants one it trusts".to_owned(),
        other => format!("TLS handshake failed: {other}"),
    };
    io::Error::new(io::ErrorKind::InvalidData, sentence)
}

/// An encrypted connection to the server.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for Stream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// SCRAM's `tls-server-end-point`: the server certificate's hash, by the hash its
    /// signature uses (SHA-256 for MD5 and SHA-1), RFC 5929 section 4.1.
    fn channel_binding(&self) -> ChannelBinding {
        let Some(cert) = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        else {
            return ChannelBinding::none();
        };
        match end_point_hash(cert.as_ref()) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The `tls-server-end-point` hash of a DER certificate, or none when its signature
/// algorithm names no hash (Ed25519) or the certificate cannot be read.
fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let oid = signature_algorithm(der)?;
    // Object identifiers' content bytes (DER), by hash.
    const SHA1_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
    const MD5_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
    const SHA256_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    const SHA384_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
    const SHA512_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
    const SHA1_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const SHA256_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    const SHA384_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    const SHA512_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
    const SHA224_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e];
    const SHA224_ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01];
    const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    // Hash algorithms, as RSA-PSS parameters name them.
    const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    const SHA224: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04];
    const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
    let hash = match oid {
        SHA1_RSA | MD5_RSA | SHA256_RSA | SHA1_ECDSA | SHA256_ECDSA => SHA256,
        SHA224_RSA | SHA224_ECDSA => SHA224,
        SHA384_RSA | SHA384_ECDSA => SHA384,
        SHA512_RSA | SHA512_ECDSA => SHA512,
        // RSASSA-PSS-params: the hash is named in the parameters, SHA-1 by default.
        RSA_PSS => match pss_hash(der) {
            Some(SHA1) | None => SHA256,
            Some(named) => named,
        },
        _ => return None,
    };
    match hash {
        SHA224 => Some(sha2::Sha224::digest(der).to_vec()),
        SHA256 => Some(sha2::Sha256::digest(der).to_vec()),
        SHA384 => Some(sha2::Sha384::digest(der).to_vec()),
        SHA512 => Some(sha2::Sha512::digest(der).to_vec()),
        _ => None,
    }
}

/// The hash an RSA-PSS signature algorithm's parameters name
/// (`RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, … }`);
/// none for the default.
fn pss_hash(der: &[u8]) -> Option<&[u8]> {
    let (_, certificate, _) = der_element(der)?;
    let (_, _, after_tbs) = der_element(certificate)?;
    let (_, algorithm, _) = der_element(after_tbs)?;
    let (_, _, params) = der_element(algorithm)?;
    let (tag, params, _) = der_element(params)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, hash_field, _) = der_element(params)?;
    if tag != 0xa0 {
        return None;
    }
    let (_, hash_algorithm, _) = der_element(hash_field)?;
    let (tag, oid, _) = der_element(hash_algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// The content bytes of a certificate's `signatureAlgorithm` object identifier:
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, … }`.
fn signature_algorithm(der: &[u8]) -> Option<&[u8]> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: its tag, its content, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_reader_refuses_truncated_input() {
        assert!(der_element(&[]).is_none());
        assert!(der_element(&[0x30]).is_none());
        assert!(der_element(&[0x30, 0x05, 0x01]).is_none());
        assert!(der_element(&[0x30, 0x85, 0, 0, 0, 0, 1]).is_none());
        assert_eq!(
            der_element(&[0x06, 0x01, 0x2a, 0xff]),
            Some((0x06, &[0x2a][..], &[0xff][..]))
        );
        assert!(end_point_hash(&[0x30, 0x00]).is_none());
    }
}
