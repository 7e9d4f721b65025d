//! User tokens: verification never panics, refuses whatever the hub did not sign, and a
//! token the hub mints verifies.
#![no_main]

use belfry_server::auth::TokenSigner;
use libfuzzer_sys::fuzz_target;

/// The secret the seed tokens in the corpus were signed with.
const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123";

fuzz_target!(|data: &[u8]| {
    let signer = TokenSigner::new(SECRET.to_vec());
    let text = String::from_utf8_lossy(data);
    if let Ok(claims) = signer.verify(&text) {
        // Accepted (a seed, or a seed with whitespace around it): the same token verifies
        // the same way again, and changing any byte of its signature is refused.
        assert_eq!(signer.verify(&text).ok(), Some(claims));
        let token = text.trim();
        let sig_start = token.rfind('.').expect("three parts") + 1;
        for i in sig_start..token.len() {
            let mut forged = token.as_bytes().to_vec();
            forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(forged).expect("ascii");
            assert!(signer.verify(&forged).is_err(), "forged signature accepted");
        }
        // Another secret refuses it.
        assert!(
            TokenSigner::new(b"another-secret".to_vec())
                .verify(token)
                .is_err()
        );
    }
    // The same bytes as a user id: minting never panics and what it mints verifies.
    if let Ok(user) = std::str::from_utf8(data)
        && belfry_protocol::validate_user_id(user).is_ok()
    {
        let token = signer.mint(user, None, 60);
        let claims = signer.verify(&token).expect("a minted token verifies");
        assert_eq!(claims.sub, user);
    }
});
