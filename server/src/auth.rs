//! Credentials: user tokens (JWT, HS256, signed with the hub's secret, by jsonwebtoken)
//! and publish keys (opaque secrets compared in constant time).

use belfry_protocol::{ErrorBody, ErrorCode, TopicPatterns, validate_user_id};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;

/// Longest token accepted, in bytes; anything longer is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated when checking `exp` (and `nbf`), in seconds.
const LEEWAY_SECS: u64 = 30;

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
        self.exp.saturating_add(LEEWAY_SECS as i64)
    }

    /// Whether the token is still valid now.
    pub fn is_valid_now(&self) -> bool {
        OffsetDateTime::now_utc().unix_timestamp() < self.valid_until()
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

/// The `alg` of a token's header, read only to say which algorithm was refused (the
/// header of a token jsonwebtoken would not take: `none`, or a name it does not know).
fn named_algorithm(token: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(Deserialize)]
    struct Named {
        alg: String,
    }
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    let named: Named = serde_json::from_slice(&bytes).ok()?;
    Some(named.alg.chars().take(20).collect())
}

/// A Unix second as RFC 3339 (the number itself if it is out of range).
fn rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Signs and verifies user tokens with the hub's secret.
#[derive(Clone)]
pub struct TokenSigner {
    /// `None` for an empty secret: nothing is signed and nothing verifies (the hub
    /// refuses to start without a secret; see `secrets.rs`).
    keys: Option<(EncodingKey, DecodingKey)>,
    validation: Validation,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    /// A signer for `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        let secret = secret.into();
        let keys = EncodingKey::from_secret(&secret)
            .and_then(|e| Ok((e, DecodingKey::from_secret(&secret)?)))
            .ok();
        // HS256 and nothing else; `exp` required, `nbf` checked when present, both with
        // the same leeway; no audience (Belfry's tokens have none).
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { keys, validation }
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

    /// Signs arbitrary claims (also used by tests to build expired tokens). Empty when
    /// the claims do not serialize or the secret is empty (an empty token is refused).
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let Some((key, _)) = &self.keys else {
            return String::new();
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key).unwrap_or_default()
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
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed(
                "expected three dot-separated parts (is this a publish key?)".into(),
            ));
        }
        let Some((_, key)) = &self.keys else {
            return Err(TokenError::BadSignature);
        };
        match jsonwebtoken::decode::<UserClaims>(token, key, &self.validation) {
            Ok(data) => {
                let claims = data.claims;
                // jsonwebtoken still takes a token in the very second its leeway ends;
                // the socket's expiry timer (`remaining`) closes it at that second.
                if !claims.is_valid_now() {
                    return Err(TokenError::Expired(rfc3339(claims.exp)));
                }
                validate_user_id(&claims.sub)
                    .map_err(|e| TokenError::Claims(format!("sub: {e}")))?;
                if let Some(t) = &claims.topics {
                    t.validate().map_err(TokenError::Claims)?;
                }
                Ok(claims)
            }
            Err(e) => Err(self.refusal(token, e)),
        }
    }

    /// Why jsonwebtoken refused a token, in Belfry's words.
    fn refusal(&self, token: &str, e: jsonwebtoken::errors::Error) -> TokenError {
        let header = jsonwebtoken::decode_header(token);
        match (e.kind(), header) {
            (_, Ok(h)) if h.alg != Algorithm::HS256 => {
                TokenError::Algorithm(format!("{:?}", h.alg))
            }
            (_, Err(_)) => match named_algorithm(token) {
                Some(alg) if alg != "HS256" => TokenError::Algorithm(alg),
                _ => TokenError::Malformed("the header is not base64url JSON with alg".into()),
            },
            (ErrorKind::InvalidSignature | ErrorKind::InvalidKeyFormat, _) => {
                TokenError::BadSignature
            }
            (ErrorKind::ExpiredSignature, _) => {
                // The signature was checked before the expiry: these claims are the hub's.
                let exp = jsonwebtoken::dangerous::insecure_decode::<UserClaims>(token)
                    .map(|d| d.claims.exp)
                    .unwrap_or_default();
                TokenError::Expired(rfc3339(exp))
            }
            (ErrorKind::ImmatureSignature, _) => {
                TokenError::Claims("the token is not valid yet (nbf)".into())
            }
            (ErrorKind::Base64(_) | ErrorKind::Utf8(_), _) => {
                TokenError::Malformed("a part is not base64url".into())
            }
            (ErrorKind::InvalidToken, _) => TokenError::Malformed("not a JWT".into()),
            (ErrorKind::MissingRequiredClaim(c), _) => TokenError::Claims(format!("missing {c}")),
            _ => TokenError::Claims(e.to_string()),
        }
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
    use base64::Engine as _;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
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
        // `deploys*` would allow `deploys-admin` too: a token that says so is refused.
        let loose = s.sign(&json!({"sub": "ann", "exp": 99999999999i64, "topics": ["deploys*"]}));
        match s.verify(&loose) {
            Err(TokenError::Claims(why)) => assert!(why.contains("deploys.*"), "{why}"),
            other => panic!("accepted or refused for another reason: {other:?}"),
        }
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
