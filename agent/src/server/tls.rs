//! TLS for the endpoint: a listener that hands axum only connections whose handshake
//! finished. Certificates are read again for every connection, as node_exporter does, so
//! a renewed certificate (cert-manager, certbot) is served without a restart.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{
    rustls::{
        self,
        crypto::CryptoProvider,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore, ServerConfig,
    },
    server::TlsStream,
    TlsAcceptor,
};

use super::web_config::{ClientAuth, Pem, TlsSettings, TlsVersion};

/// A client that opens a connection and sends nothing holds no more than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for axum to take them.
const READY_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what}")]
    Read {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} has no usable PEM block")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("bad TLS configuration")]
    Rustls(#[source] rustls::Error),
    #[error("bad client CA")]
    ClientCa(#[source] rustls::server::VerifierBuilderError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(pem: &Pem, what: &'static str) -> Result<Vec<u8>, TlsError> {
    pem.read().map_err(|source| TlsError::Read { what, source })
}

fn certificates(pem: &Pem, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(pem, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            source: rustls::pki_types::pem::Error::NoItemsFound,
        });
    }
    Ok(certs)
}

/// Reads the files and builds the rustls configuration.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = certificates(&settings.cert, "cert_file")?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&settings.key, "key_file")?).map_err(|source| {
            TlsError::Pem {
                what: "key_file",
                source,
            }
        })?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (settings.min_version..=settings.max_version).contains(v))
    .map(|(_, p)| p)
    .collect();
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(TlsError::Rustls)?;
    let builder = match (&settings.client_auth, &settings.client_ca) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client_ca_file")? {
                roots.add(cert).map_err(TlsError::Rustls)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if *auth == ClientAuth::VerifyIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(TlsError::ClientCa)?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(TlsError::Rustls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections, shakes hands off the accept loop (one slow client cannot
/// hold up the others), and yields the finished ones to `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// `settings` must have built a configuration once already (start-up checks it).
    pub fn new(listener: TcpListener, settings: TlsSettings) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(listener, Arc::new(settings), tx));
        Ok(TlsListener { ready, local_addr })
    }
}

async fn accept_loop(
    listener: TcpListener,
    settings: Arc<TlsSettings>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning, as axum's own loop does.
                log::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let settings = settings.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let config = match server_config(&settings) {
                Ok(c) => c,
                Err(e) => {
                    log::error!(
                        "metrics endpoint: TLS configuration unusable, connection from {peer} \
                         dropped: {}",
                        crate::error_chain(&e)
                    );
                    return;
                }
            };
            let handshake = async {
                if !starts_with_tls_record(&stream).await? {
                    refuse_plain_http(stream).await;
                    return Err(io::Error::other("plain HTTP on the TLS port"));
                }
                TlsAcceptor::from(config).accept(stream).await
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                // Plain HTTP to a TLS port, scanners, wrong CA: the client's problem.
                Ok(Err(e)) => log::debug!("metrics endpoint: TLS handshake with {peer}: {e}"),
                Err(_) => log::debug!("metrics endpoint: TLS handshake with {peer} timed out"),
            }
        });
    }
}

/// A TLS connection starts with a handshake record (content type 22, RFC 8446 §5.1).
async fn starts_with_tls_record(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0] == 0x16)
}

/// What Go's server (so node_exporter) answers plain HTTP on a TLS port: a 400 that
/// tells the user what is wrong, rather than a reset they have to guess about.
async fn refuse_plain_http(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let _ = stream
        .write_all(
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
              Client sent an HTTP request to an HTTPS server.\n",
        )
        .await;
    let _ = stream.shutdown().await;
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only stops when this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
