//! Randomness for secrets and ids: always the operating system's CSPRNG (`getrandom`), never a
//! seeded generator. Session-signing keys, agent and API tokens and every stored id come from
//! here; `fastrand` stays for shuffles and sampling, where predictability harms nobody.

/// `N` random bytes from the operating system.
///
/// The OS generator does not fail on a booted Linux system (the `getrandom` syscall blocks only
/// until the kernel's pool is first seeded). If it ever does, there is no safe fallback for a
/// secret, so this stops the caller loudly instead of returning predictable bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if let Err(e) = getrandom::fill(&mut b) {
        panic!("the operating system's random number generator failed: {e}");
    }
    b
}

/// A random token of `N` bytes, hex-encoded.
pub fn token_hex<const N: usize>() -> String {
    hex::encode(random_bytes::<N>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_have_the_asked_length() {
        let a = token_hex::<32>();
        let b = token_hex::<32>();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        // Not all zero bytes (a buffer left unfilled).
        assert!(random_bytes::<32>().iter().any(|&x| x != 0));
    }
}
