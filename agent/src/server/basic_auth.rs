//! HTTP basic authentication against `basic_auth_users` bcrypt hashes (RFC 7617), as
//! node_exporter's exporter-toolkit does it: every user costs one bcrypt verification,
//! known or not (so response time does not tell which user names exist), and a
//! verified password is remembered by its SHA-256, so a scrape every few seconds does not
//! pay bcrypt's deliberate slowness each time.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use base64::Engine as _;
use tokio::sync::Semaphore;

/// Stood in for an unknown user's hash, so that it costs as much as a known one.
/// (`htpasswd -nbBC 10 "" secret`; no user can match it: the user does not exist.)
const UNKNOWN_USER_HASH: &str = "$2y$10$fojiEgz.koJkuOEtMlHL7.FK0meEgc8ZrAb.6ir/rGujuSurqTY0m";
/// Verified credentials remembered; a full cache is emptied (users rarely exceed a few).
const REMEMBERED: usize = 64;
/// bcrypt verifications at once: a flood of wrong passwords gets one core, not all.
const CONCURRENT_VERIFICATIONS: usize = 1;

pub struct BasicAuth {
    users: BTreeMap<String, String>,
    remembered: Mutex<HashSet<[u8; 32]>>,
    verifying: Semaphore,
}

/// The user and password of an `Authorization: Basic ...` header value.
pub fn credentials(header: &[u8]) -> Option<(String, String)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> Self {
        BasicAuth {
            users,
            remembered: Mutex::new(HashSet::new()),
            verifying: Semaphore::new(CONCURRENT_VERIFICATIONS),
        }
    }

    /// Whether the `Authorization` header value names a user and their password.
    pub async fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some((user, password)) = header.and_then(credentials) else {
            return false;
        };
        let (hash, known) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (UNKNOWN_USER_HASH.to_owned(), false),
        };
        let key = fingerprint(&user, &password, &hash);
        if known && self.remembered.lock().expect("cache lock").contains(&key) {
            return true;
        }
        let Ok(_permit) = self.verifying.acquire().await else {
            return false;
        };
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        let allowed = verified && known;
        if allowed {
            let mut remembered = self.remembered.lock().expect("cache lock");
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
            remembered.insert(key);
        }
        allowed
    }
}

/// Never the password itself in memory longer than the request: its digest, bound to
/// the user and the hash in force.
fn fingerprint(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, password, hash] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
        .into_bytes()
    }

    #[test]
    fn credentials_from_rfc_7617_example() {
        // RFC 7617 §2: "Aladdin" / "open sesame".
        assert_eq!(
            credentials(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".into(), "open sesame".into()))
        );
        assert_eq!(
            credentials(b"basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".into(), "open sesame".into())),
            "the scheme is case-insensitive"
        );
        // A password may contain ':'; the user may not.
        assert_eq!(
            credentials(&header("u:a:b")),
            Some(("u".into(), "a:b".into()))
        );
        for bad in [
            &b"Bearer QWxhZGRpbjpvcGVuIHNlc2FtZQ=="[..],
            b"Basic !!!",
            b"Basic",
            b"Basic dXNlcg==", // "user", no colon
            b"\xff\xfe",
        ] {
            assert_eq!(credentials(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn right_password_only() {
        let auth = BasicAuth::new(BTreeMap::from([(
            "prometheus".to_owned(),
            UNKNOWN_USER_HASH.to_owned(),
        )]));
        assert!(auth.allows(Some(&header("prometheus:secret"))).await);
        // Remembered now; the cache must not let a wrong password through.
        assert!(auth.allows(Some(&header("prometheus:secret"))).await);
        assert!(!auth.allows(Some(&header("prometheus:Secret"))).await);
        assert!(!auth.allows(Some(&header("nobody:secret"))).await);
        assert!(!auth.allows(None).await);
    }
}
