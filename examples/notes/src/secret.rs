//! Passphrase hashing (PBKDF2-HMAC-SHA256, random salt) and random bytes.
//!
//! A hash is stored as `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`. Hashing
//! is deliberately slow: call it off the async threads
//! (`tokio::task::spawn_blocking`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// PBKDF2 rounds for new hashes.
pub const ITERATIONS: u32 = 100_000;

const SCHEME: &str = "pbkdf2-sha256";

/// `N` random bytes from the operating system.
pub fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|error| std::io::Error::other(error.to_string()))?;
    Ok(bytes)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// PBKDF2-HMAC-SHA256 with one 32-byte output block (RFC 8018).
fn pbkdf2(passphrase: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = Hmac::<Sha256>::new_from_slice(passphrase)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    let mut mac = prf.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// A new hash of `passphrase` with a random salt.
pub fn hash(passphrase: &str) -> std::io::Result<String> {
    let salt = random::<16>()?;
    let derived = pbkdf2(passphrase.as_bytes(), &salt, ITERATIONS);
    Ok(format!(
        "{SCHEME}${ITERATIONS}${}${}",
        to_hex(&salt),
        to_hex(&derived)
    ))
}

/// Whether `passphrase` matches `stored` (constant-time comparison; a
/// malformed hash matches nothing).
pub fn verify(passphrase: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iterations), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Some(salt), Some(expected)) = (
        iterations.parse::<u32>(),
        from_hex(salt),
        from_hex(expected),
    ) else {
        return false;
    };
    if iterations == 0 || iterations > 10_000_000 || expected.len() != 32 {
        return false;
    }
    let derived = pbkdf2(passphrase.as_bytes(), &salt, iterations);
    derived
        .iter()
        .zip(&expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_matches_the_rfc_7914_vector() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256, P="passwd", S="salt", c=1.
        assert_eq!(
            to_hex(&pbkdf2(b"passwd", b"salt", 1)),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
        // A well-known vector: P="password", S="salt", c=2.
        assert_eq!(
            to_hex(&pbkdf2(b"password", b"salt", 2)),
            "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
        );
    }

    #[test]
    fn a_hash_verifies_its_passphrase_only() {
        let stored = hash("correct horse").unwrap();
        assert!(stored.starts_with("pbkdf2-sha256$100000$"));
        assert!(verify("correct horse", &stored));
        assert!(!verify("correct horsE", &stored));
        assert_ne!(stored, hash("correct horse").unwrap(), "salted");
        for junk in [
            "",
            "pbkdf2-sha256$1$zz$00",
            "md5$1$00$00",
            "pbkdf2-sha256$0$00$00",
        ] {
            assert!(!verify("x", junk), "{junk}");
        }
    }
}
