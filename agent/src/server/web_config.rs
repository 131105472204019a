//! `--web.config.file`: node_exporter's web configuration format (Prometheus
//! exporter-toolkit, <https://prometheus.io/docs/prometheus/latest/configuration/https/>),
//! so a scrape job written for node_exporter's TLS and basic auth works unchanged.
//!
//! Supported: `tls_server_config` (`cert_file`/`key_file` or inline `cert`/`key`,
//! `client_auth_type`, `client_ca_file`/`client_ca`, `min_version`/`max_version`),
//! `basic_auth_users` (bcrypt hashes) and `http_server_config.headers`. Keys that would
//! change security and that this agent does not implement (`cipher_suites`,
//! `curve_preferences`, `client_allowed_sans`, TLS 1.0/1.1) are refused at start-up rather
//! than ignored: a config must never silently buy less protection than it says.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// The file as written (exporter-toolkit's `Config`). Unknown keys are errors, as there.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfigFile {
    pub tls_server_config: Option<TlsServerConfig>,
    pub http_server_config: HttpServerConfig,
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_auth_type: Option<String>,
    pub client_ca_file: Option<PathBuf>,
    pub client_ca: Option<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
    pub cipher_suites: Vec<String>,
    pub curve_preferences: Vec<String>,
    pub prefer_server_cipher_suites: Option<bool>,
    pub client_allowed_sans: Vec<String>,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServerConfig {
    /// HTTP/2 is exporter-toolkit's default; this endpoint speaks HTTP/1.1 (Prometheus
    /// scrapes over HTTP/1.1), so the key is accepted and has no effect.
    pub http2: Option<bool>,
    pub headers: BTreeMap<String, String>,
}

/// A PEM source: a file (re-read on every TLS handshake, so a renewed certificate is
/// picked up without a restart, as node_exporter does) or inline text.
#[derive(Clone, Debug, PartialEq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl Pem {
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Pem::File(path) => std::fs::read(path),
            Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (default): no client certificate is asked for.
    None,
    /// `VerifyClientCertIfGiven`: a certificate, if sent, must chain to the client CA.
    VerifyIfGiven,
    /// `RequireAndVerifyClientCert`: mutual TLS.
    RequireAndVerify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// TLS as configured, checked; files are read when the listener is built.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// The web configuration in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WebConfig {
    /// `None`: plain HTTP.
    pub tls: Option<TlsSettings>,
    /// User name to bcrypt hash; empty: no authentication.
    pub users: BTreeMap<String, String>,
    /// Extra response headers (e.g. `Strict-Transport-Security`).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bad web config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("web config: {0}")]
    Invalid(String),
}

impl WebConfig {
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            WebConfigError::Parse { source, .. } => WebConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses the file's text; relative paths in it are relative to `base` (the file's
    /// directory), as exporter-toolkit resolves them.
    pub fn parse(text: &str, base: &Path) -> Result<Self, WebConfigError> {
        // An empty file is a valid "no TLS, no auth" config, as in exporter-toolkit.
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|source| WebConfigError::Parse {
                path: PathBuf::new(),
                source,
            })?
        };
        let tls = match file.tls_server_config {
            Some(tls) if !tls.is_empty() => Some(tls.check(base)?),
            _ => None,
        };
        for (user, hash) in &file.basic_auth_users {
            if user.contains(':') {
                return Err(invalid(format!(
                    "basic_auth_users: user name {user:?} contains ':'"
                )));
            }
            // Parsed here so that a typo fails at start-up, not at the first scrape.
            hash.parse::<bcrypt::HashParts>().map_err(|_| {
                invalid(format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash \
                     (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                ))
            })?;
        }
        for name in file.http_server_config.headers.keys() {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(format!(
                    "http_server_config.headers: {name:?} is not a header name"
                )));
            }
        }
        for (name, value) in &file.http_server_config.headers {
            if axum::http::HeaderValue::from_str(value).is_err() {
                return Err(invalid(format!(
                    "http_server_config.headers: the value of {name:?} is not a header value"
                )));
            }
        }
        Ok(WebConfig {
            tls,
            users: file.basic_auth_users,
            headers: file.http_server_config.headers.into_iter().collect(),
        })
    }
}

fn invalid(message: String) -> WebConfigError {
    WebConfigError::Invalid(message)
}

impl TlsServerConfig {
    fn is_empty(&self) -> bool {
        *self == TlsServerConfig::default()
    }

    fn check(self, base: &Path) -> Result<TlsSettings, WebConfigError> {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let pem = |file: Option<PathBuf>, inline: Option<String>, what: &str| match (file, inline) {
            (Some(_), Some(_)) => Err(invalid(format!(
                "tls_server_config: set {what}_file or {what}, not both"
            ))),
            (Some(path), None) => Ok(Some(Pem::File(resolve(path)))),
            (None, Some(text)) => Ok(Some(Pem::Inline(text))),
            (None, None) => Ok(None),
        };
        let cert = pem(self.cert_file, self.cert, "cert")?;
        let key = pem(self.key_file, self.key, "key")?;
        let (cert, key) = match (cert, key) {
            (Some(c), Some(k)) => (c, k),
            (None, _) => return Err(invalid("tls_server_config: missing cert_file".into())),
            (_, None) => return Err(invalid("tls_server_config: missing key_file".into())),
        };
        let client_ca = match (self.client_ca_file, self.client_ca) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "tls_server_config: set client_ca_file or client_ca, not both".into(),
                ))
            }
            (Some(path), None) => Some(Pem::File(resolve(path))),
            (None, Some(text)) => Some(Pem::Inline(text)),
            (None, None) => None,
        };
        let client_auth = match self.client_auth_type.as_deref() {
            None | Some("") | Some("NoClientCert") => ClientAuth::None,
            Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven,
            Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerify,
            Some(other @ ("RequestClientCert" | "RequireAnyClientCert")) => {
                return Err(invalid(format!(
                    "tls_server_config: client_auth_type {other} accepts unverified client \
                     certificates, which nodetap does not; use VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert"
                )))
            }
            Some(other) => {
                return Err(invalid(format!(
                    "tls_server_config: unknown client_auth_type {other:?}"
                )))
            }
        };
        if client_auth != ClientAuth::None && client_ca.is_none() {
            return Err(invalid(
                "tls_server_config: client_auth_type needs client_ca_file".into(),
            ));
        }
        if client_auth == ClientAuth::None && client_ca.is_some() {
            // exporter-toolkit refuses this too: a CA that is never asked for is a mistake.
            return Err(invalid(
                "tls_server_config: client_ca_file is set but client_auth_type does not \
                 verify client certificates"
                    .into(),
            ));
        }
        let min_version = tls_version(self.min_version.as_deref(), TlsVersion::Tls12)?;
        let max_version = tls_version(self.max_version.as_deref(), TlsVersion::Tls13)?;
        if min_version > max_version {
            return Err(invalid(
                "tls_server_config: min_version is above max_version".into(),
            ));
        }
        for (key, set) in [
            ("cipher_suites", !self.cipher_suites.is_empty()),
            ("curve_preferences", !self.curve_preferences.is_empty()),
            ("client_allowed_sans", !self.client_allowed_sans.is_empty()),
        ] {
            if set {
                return Err(invalid(format!(
                    "tls_server_config: {key} is not supported by nodetap (its TLS library \
                     offers only modern AEAD suites and curves); remove the key"
                )));
            }
        }
        Ok(TlsSettings {
            cert,
            key,
            client_auth,
            client_ca,
            min_version,
            max_version,
        })
    }
}

fn tls_version(value: Option<&str>, default: TlsVersion) -> Result<TlsVersion, WebConfigError> {
    match value {
        None | Some("") => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(invalid(format!(
            "tls_server_config: {v} is not supported (TLS 1.2 is the oldest version nodetap speaks)"
        ))),
        Some(other) => Err(invalid(format!(
            "tls_server_config: unknown TLS version {other:?} (TLS12 or TLS13)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `htpasswd -nbBC 10 "" secret`: a hash made by another tool than the one verifying.
    const SECRET_HASH: &str = "$2y$10$fojiEgz.koJkuOEtMlHL7.FK0meEgc8ZrAb.6ir/rGujuSurqTY0m";

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, Path::new("/etc/nodetap")).map_err(|e| crate::error_chain(&e))
    }

    #[test]
    fn node_exporter_example_parses() {
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /keys/server.key\n\
             basic_auth_users:\n  prometheus: {SECRET_HASH}\n"
        ))
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(
            tls.cert,
            Pem::File(PathBuf::from("/etc/nodetap/server.crt")),
            "relative paths are relative to the file's directory"
        );
        assert_eq!(tls.key, Pem::File(PathBuf::from("/keys/server.key")));
        assert_eq!(tls.client_auth, ClientAuth::None);
        assert_eq!(
            (tls.min_version, tls.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert_eq!(c.users.get("prometheus").unwrap(), SECRET_HASH);
    }

    #[test]
    fn empty_file_and_empty_tls_mean_plain_http() {
        assert_eq!(parse("").unwrap(), WebConfig::default());
        assert_eq!(parse("tls_server_config: {}\n").unwrap().tls, None);
    }

    #[test]
    fn mutual_tls_needs_a_ca() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let e = parse(&format!(
            "{base}  client_auth_type: RequireAndVerifyClientCert\n"
        ))
        .unwrap_err();
        assert!(e.contains("needs client_ca_file"), "{e}");
        let c = parse(&format!(
            "{base}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
        ))
        .unwrap();
        assert_eq!(c.tls.unwrap().client_auth, ClientAuth::RequireAndVerify);
    }

    #[test]
    fn mistakes_fail_at_start_up_with_the_key_named() {
        for (text, expected) in [
            ("tls_server_config:\n  cert_file: a\n", "missing key_file"),
            ("tls_server_config:\n  key_file: a\n", "missing cert_file"),
            ("basic_auth_users:\n  u: secret\n", "not a bcrypt hash"),
            ("basic_auth_users:\n  'a:b': x\n", "contains ':'"),
            ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", "TLS10"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
                "cipher_suites is not supported",
            ),
            ("tls_config:\n  cert_file: a\n", "unknown field `tls_config`"),
            ("http_server_config:\n  headers:\n    'bad name': x\n", "not a header name"),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_hash_made_elsewhere_verifies() {
        // The check the request path relies on, against a hash bcrypt did not make.
        assert!(bcrypt::verify("secret", SECRET_HASH).unwrap());
        assert!(!bcrypt::verify("Secret", SECRET_HASH).unwrap());
    }
}
