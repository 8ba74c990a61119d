//! Warren signs and checks its JWTs with one algorithm, EdDSA (Ed25519).
//! jsonwebtoken's RustCrypto backend brought 26 crates into every build for
//! it (RSA, P-256, P-384, a second Ed25519 and their big-integer stacks);
//! this provider does the same with ring, which rustls and quinn already
//! link. Every other algorithm is refused here too, so an `alg` other than
//! EdDSA can never reach a key, whatever a caller's `Validation` says.
//!
//! Call [`install`] before `jsonwebtoken::encode` or `decode`; it is cheap
//! and idempotent: control calls it where it makes its issuer, the relay
//! where it checks a token.
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // Only used to derive a JWK from a private key, which Warren never
    // does (control publishes `x` itself): an error, never a panic.
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        rsa_pub_components_from_public_key: |_| Err(ErrorKind::InvalidAlgorithm.into()),
        ec_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        ed_pub_components_from_private_key: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
        compute_digest: |_, _| Err(ErrorKind::InvalidAlgorithm.into()),
    },
};

/// Makes this provider jsonwebtoken's for the process (once; later calls
/// do nothing).
pub fn install() {
    // Err means a provider is installed already: it must be this one. Any
    // other (jsonwebtoken's fallback, fixed by a use before this call)
    // would panic on the first token, so say where instead.
    if let Err(p) = PROVIDER.install_default() {
        assert!(
            std::ptr::eq(p, &PROVIDER),
            "warren_jwt::install ran after jsonwebtoken chose another provider"
        );
    }
}

fn signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *alg != Algorithm::EdDSA {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    if key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    // `from_ed_pem` keeps the PKCS#8 document; v1 documents carry no
    // public key to check against, hence "maybe unchecked".
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(key.as_bytes())
        .map_err(|_| ErrorKind::InvalidEddsaKey)?;
    Ok(Box::new(EdSigner(pair)))
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if *alg != Algorithm::EdDSA {
        return Err(ErrorKind::InvalidAlgorithm.into());
    }
    if key.family() != AlgorithmFamily::Ed {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let raw = key.try_get_as_bytes()?;
    if raw.len() != 32 {
        return Err(ErrorKind::InvalidEddsaKey.into());
    }
    Ok(Box::new(EdVerifier(raw.to_vec())))
}

struct EdSigner(Ed25519KeyPair);

impl Signer<Vec<u8>> for EdSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        Ok(self.0.sign(msg).as_ref().to_vec())
    }
}

impl JwtSigner for EdSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

impl EdSigner {
    /// The raw public key (for tests).
    #[cfg(test)]
    fn public(&self) -> &[u8] {
        ring::signature::KeyPair::public_key(&self.0).as_ref()
    }
}

struct EdVerifier(Vec<u8>);

impl Verifier<Vec<u8>> for EdVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, sig)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for EdVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use jsonwebtoken::{Header, Validation, decode, encode};

    fn pair() -> (EncodingKey, DecodingKey, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let enc = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        (enc, DecodingKey::from_ed_components(&x).unwrap(), x)
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"sub": "u", "aud": "warren", "exp": jsonwebtoken::get_current_timestamp() + 60})
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["warren"]);
        v
    }

    #[test]
    fn a_token_signed_here_verifies_and_a_changed_one_does_not() {
        install();
        install(); // idempotent
        let (enc, dec, _) = pair();
        let t = encode(&Header::new(Algorithm::EdDSA), &claims(), &enc).unwrap();
        let got = decode::<serde_json::Value>(&t, &dec, &validation()).unwrap();
        assert_eq!(got.claims["sub"], "u");

        // One byte of the signature changed.
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 5;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        let e = decode::<serde_json::Value>(&bad, &dec, &validation()).unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::InvalidSignature);

        // Another key's token.
        let (other, _, _) = pair();
        let t2 = encode(&Header::new(Algorithm::EdDSA), &claims(), &other).unwrap();
        let e = decode::<serde_json::Value>(&t2, &dec, &validation()).unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::InvalidSignature);
    }

    #[test]
    fn every_other_algorithm_is_refused_by_the_provider_itself() {
        install();
        let secret = EncodingKey::from_secret(b"public key as a secret");
        let e = encode(&Header::new(Algorithm::HS256), &claims(), &secret).unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::InvalidAlgorithm);
        let (enc, dec, _) = pair();
        // Each algorithm check on its own: the right family, the wrong alg.
        assert!(signer(&Algorithm::HS256, &enc).is_err());
        assert!(signer(&Algorithm::EdDSA, &enc).is_ok());
        assert!(verifier(&Algorithm::HS256, &dec).is_err());
        assert!(verifier(&Algorithm::RS256, &dec).is_err());
        assert!(signer(&Algorithm::ES256, &secret).is_err());
        // An EdDSA verifier with a key of the wrong length or family.
        let short = DecodingKey::from_ed_components("AAAA").unwrap();
        assert!(verifier(&Algorithm::EdDSA, &short).is_err());
        let oct = DecodingKey::from_secret(&[0; 32]);
        assert!(verifier(&Algorithm::EdDSA, &oct).is_err());
        assert!(verifier(&Algorithm::EdDSA, &dec).is_ok());
    }

    #[test]
    fn the_signer_uses_the_key_it_was_given() {
        let (enc, dec, x) = pair();
        let s = signer(&Algorithm::EdDSA, &enc).unwrap();
        let sig = s.try_sign(b"message").unwrap();
        let v = verifier(&Algorithm::EdDSA, &dec).unwrap();
        assert!(v.verify(b"message", &sig).is_ok());
        assert!(v.verify(b"messagE", &sig).is_err());
        assert!(v.verify(b"message", &sig[..63].to_vec()).is_err());
        // The pair's public half is the one published as `x`.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(enc.as_bytes()).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .unwrap();
        assert_eq!(EdSigner(pair).public(), &raw[..]);
    }
}
