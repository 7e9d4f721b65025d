//! Credentials: user tokens (JWT, HS256, signed with the hub's secret) and publish keys
//! (opaque secrets compared in constant time).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use belfry_protocol::{ErrorBody, ErrorCode, TopicPatterns, validate_user_id};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted, in bytes; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated when checking `exp`, in seconds.
const LEEWAY_SECS: i64 = 30;

/// The claims of a user token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    /// The user id.
    pub sub: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Allowed topic patterns; absent means every topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<TopicPatterns>,
}

impl UserClaims {
    /// The topics this token allows.
    pub fn allowed_topics(&self) -> TopicPatterns {
        self.topics.clone().unwrap_or_else(TopicPatterns::any)
    }

    /// The Unix second from which the token is refused (its `exp` plus the clock-skew
    /// leeway).
    pub fn valid_until(&self) -> i64 {
        self.exp.saturating_add(LEEWAY_SECS)
    }

    /// How long from now the token stays valid (zero once it has expired).
    pub fn remaining(&self) -> std::time::Duration {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let secs = self.valid_until().saturating_sub(now).max(0);
        std::time::Duration::from_secs(secs.unsigned_abs())
    }
}

/// Why a token was refused. The message says why in plain words; the code is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("no token given")]
    Missing,
    /// Not a JWT, or its parts do not decode.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The algorithm is not HS256 (this includes `none`).
    #[error("token algorithm {0:?} is not accepted (only HS256)")]
    Algorithm(String),
    /// The signature does not match the hub's secret.
    #[error("token signature does not match this hub's secret")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired at {0}")]
    Expired(String),
    /// The claims are not valid (missing or bad `sub`, bad topic patterns).
    #[error("invalid token claims: {0}")]
    Claims(String),
}

impl From<TokenError> for ErrorBody {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Missing => ErrorCode::Unauthorized,
            TokenError::Malformed(_) | TokenError::Claims(_) => ErrorCode::TokenMalformed,
            TokenError::Algorithm(_) | TokenError::BadSignature => ErrorCode::TokenBadSignature,
            TokenError::Expired(_) => ErrorCode::TokenExpired,
        };
        ErrorBody::new(code, e.to_string())
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Signs and verifies user tokens with the hub's secret.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer for `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!())
    }

    /// Mints a token for `user`, valid for `ttl_secs`, allowing `topics` (all when `None`).
    pub fn mint(&self, user: &str, topics: Option<Vec<String>>, ttl_secs: u64) -> String {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = UserClaims {
            sub: user.to_owned(),
            exp: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2)),
            iat: Some(now),
            topics: topics.map(TopicPatterns::new),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (also used by tests to build expired tokens).
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    }

    /// Verifies a token: shape, algorithm (HS256 only), signature, expiry, claims.
    pub fn verify(&self, token: &str) -> Result<UserClaims, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "expected three dot-separated parts (is this a publish key?)".into(),
            ));
        };
        let header_bytes = B64
            .decode(h)
            .map_err(|_| TokenError::Malformed("header is not base64url".into()))?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|_| TokenError::Malformed("header is not a JSON object with alg".into()))?;
        if header.alg != "HS256" {
            return Err(TokenError::Algorithm(header.alg.chars().take(20).collect()));
        }
        let sig = B64
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url".into()))?;
        let mut mac = self.mac();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(p.as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = B64
            .decode(p)
            .map_err(|_| TokenError::Malformed("payload is not base64url".into()))?;
        let claims: UserClaims =
            serde_json::from_slice(&payload).map_err(|e| TokenError::Claims(format!("{e}")))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if claims.valid_until() <= now {
            let when = OffsetDateTime::from_unix_timestamp(claims.exp)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| claims.exp.to_string());
            return Err(TokenError::Expired(when));
        }
        validate_user_id(&claims.sub).map_err(|e| TokenError::Claims(format!("sub: {e}")))?;
        if let Some(t) = &claims.topics {
            t.validate().map_err(TokenError::Claims)?;
        }
        Ok(claims)
    }
}

/// The publish keys the hub accepts.
#[derive(Clone, Default)]
pub struct PublishKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PublishKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublishKeys({} keys)", self.keys.len())
    }
}

impl PublishKeys {
    /// The accepted keys.
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            keys: keys.into_iter().map(String::into_bytes).collect(),
        }
    }

    /// Which key matches (its index), comparing every key in constant time.
    pub fn check(&self, candidate: &str) -> Option<usize> {
        let candidate = candidate.trim().as_bytes();
        let mut found = None;
        for (i, key) in self.keys.iter().enumerate() {
            // ct_eq on slices of different lengths is false without comparing contents;
            // the length of a key is not the secret.
            if bool::from(key.as_slice().ct_eq(candidate)) && found.is_none() {
                found = Some(i);
            }
        }
        found
    }
}

/// Generates a random secret: `bytes` random bytes, base64url without padding.
pub fn random_secret(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    B64.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn signer() -> TokenSigner {
        TokenSigner::new("a-test-secret-that-is-long-enough")
    }

    #[test]
    fn minted_tokens_verify() {
        let s = signer();
        let t = s.mint("alice", Some(vec!["deploys".into(), "team.*".into()]), 60);
        let c = s.verify(&t).expect("valid");
        assert_eq!(c.sub, "alice");
        assert!(c.allowed_topics().allows("team.x"));
        assert!(!c.allowed_topics().allows("other"));
        let all = s.verify(&s.mint("bob", None, 60)).expect("valid");
        assert!(all.allowed_topics().allows("anything"));
    }

    #[test]
    fn refusals_say_why() {
        let s = signer();
        let other = TokenSigner::new("another-secret-entirely");
        assert_eq!(
            s.verify(&other.mint("alice", None, 60)),
            Err(TokenError::BadSignature)
        );
        let expired = s.sign(&json!({"sub": "alice", "exp": 1_000_000}));
        assert!(matches!(s.verify(&expired), Err(TokenError::Expired(_))));
        assert!(matches!(
            s.verify("bfk_abcdef"),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(s.verify(""), Err(TokenError::Missing));
        assert!(matches!(
            s.verify(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::Malformed(_))
        ));

        // alg: none, with and without a signature.
        let header = B64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = B64.encode(br#"{"sub":"alice","exp":99999999999}"#);
        assert!(matches!(
            s.verify(&format!("{header}.{payload}.")),
            Err(TokenError::Algorithm(_))
        ));
        // HS512 header with a valid HS256 signature over it is still refused.
        let header = B64.encode(br#"{"alg":"HS512"}"#);
        assert!(matches!(
            s.verify(&format!("{header}.{payload}.xx")),
            Err(TokenError::Algorithm(_))
        ));
        // A tampered payload breaks the signature.
        let good = s.mint("alice", None, 60);
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = B64.encode(br#"{"sub":"bob","exp":99999999999}"#);
        parts[1] = &forged;
        assert_eq!(s.verify(&parts.join(".")), Err(TokenError::BadSignature));

        let no_sub = s.sign(&json!({"exp": 99999999999i64}));
        assert!(matches!(s.verify(&no_sub), Err(TokenError::Claims(_))));
        let bad_sub = s.sign(&json!({"sub": "a b", "exp": 99999999999i64}));
        assert!(matches!(s.verify(&bad_sub), Err(TokenError::Claims(_))));
    }

    #[test]
    fn codes_for_token_errors() {
        let body: ErrorBody = TokenError::Expired("x".into()).into();
        assert_eq!(body.code, ErrorCode::TokenExpired);
        let body: ErrorBody = TokenError::Algorithm("none".into()).into();
        assert_eq!(body.code, ErrorCode::TokenBadSignature);
        assert!(body.message.contains("none"));
    }

    #[test]
    fn publish_keys_match_exactly() {
        let keys = PublishKeys::new(["k1-secret".to_owned(), "k2-secret".to_owned()]);
        assert_eq!(keys.check("k2-secret"), Some(1));
        assert_eq!(keys.check("k1-secre"), None);
        assert_eq!(keys.check("k1-secretX"), None);
        assert_eq!(keys.check(""), None);
        assert_eq!(PublishKeys::default().check("anything"), None);
        assert_eq!(random_secret(32).len(), 43);
    }
}
