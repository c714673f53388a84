//! Whether a decision secret is strong enough to sign ids: the same rule for the current secret
//! and for the one being rotated out.
//!
//! Length and distinct bytes are not enough (`01234567890123456789012345678901` has 32 bytes of
//! 10 kinds). The estimate here is a description length: the secret is read left to right, and
//! each stretch costs the bits an attacker who tries the obvious patterns first would need to
//! name it: a repeat of something earlier (`Password1Password1…`, 40 spaces), a run that steps
//! by a constant (`0123456789`, `abcdef`), a word (`production`, `Staple`: 13 bits, a
//! diceware-size list), or, failing all, a character from the alphabet classes the secret uses
//! (digits, lower, upper, punctuation, other bytes).

use anyhow::bail;

/// Bits a secret must be worth. `openssl rand -base64 32` gives ~250 by this estimate, `-hex 16`
/// ~165; a 32-character English phrase or a repeated word stays well below.
pub const MIN_SECRET_BITS: f64 = 128.0;

/// Shortest repeat or stepped run worth naming as one (shorter ones cost as literals).
const MIN_PATTERN: usize = 3;

/// Shortest letter run read as a word (`secret`, `Production`).
const MIN_WORD: usize = 4;

/// What naming one word costs: a word list the size of diceware's (7,776 words, ~13 bits),
/// which is what passphrases are drawn from.
const WORD_BITS: f64 = 13.0;

/// Refuses a decision secret anyone could guess: shorter than 32 bytes, a placeholder from an
/// example file, or worth fewer than [`MIN_SECRET_BITS`] by [`estimated_bits`]. `which` names
/// the secret in the error (the current or the previous one).
pub fn check_secret(which: &str, secret: &[u8]) -> anyhow::Result<()> {
    let lower = String::from_utf8_lossy(secret).to_lowercase();
    if secret.len() < 32 {
        bail!(
            "the {which} is {} bytes: use at least 32 random bytes (`openssl rand -base64 32`)",
            secret.len()
        );
    }
    if ["replace", "change-me", "changeme", "example", "placeholder"]
        .iter()
        .any(|p| lower.contains(p))
    {
        bail!("the {which} is an example placeholder: generate one with `openssl rand -base64 32`");
    }
    let bits = estimated_bits(secret);
    if bits < MIN_SECRET_BITS {
        bail!(
            "the {which} is guessable (about {bits:.0} bits: repeats, sequences, words or a small \
             alphabet; {MIN_SECRET_BITS:.0} needed): generate one with `openssl rand -base64 32`"
        );
    }
    Ok(())
}

/// Bits needed to describe `s` when repeats and stepped runs are named instead of spelled out.
pub fn estimated_bits(s: &[u8]) -> f64 {
    let alphabet = alphabet_size(s).log2();
    let position_bits = (s.len().max(2) as f64).log2();
    let mut bits = 0.0;
    let mut i = 0;
    while i < s.len() {
        let repeat = longest_repeat(s, i);
        let run = stepped_run(s, i);
        let word = word_at(s, i);
        if repeat >= MIN_PATTERN && repeat >= run {
            // Where it starts and how long it is.
            bits += 2.0 * position_bits;
            i += repeat;
        } else if word >= MIN_WORD && WORD_BITS < word as f64 * alphabet {
            bits += WORD_BITS;
            i += word;
        } else if run >= MIN_PATTERN {
            // Its first character, its step (a few choices) and its length.
            bits += alphabet + 3.0 + position_bits;
            i += run;
        } else {
            bits += alphabet;
            i += 1;
        }
    }
    bits
}

/// How many values a character of `s` could take, from the classes it uses.
fn alphabet_size(s: &[u8]) -> f64 {
    let has = |f: fn(&u8) -> bool| s.iter().any(f);
    let mut n = 0.0;
    if has(u8::is_ascii_digit) {
        n += 10.0;
    }
    if has(u8::is_ascii_lowercase) {
        n += 26.0;
    }
    if has(u8::is_ascii_uppercase) {
        n += 26.0;
    }
    if has(|b| b.is_ascii_punctuation() || *b == b' ') {
        n += 33.0;
    }
    if has(|b| !b.is_ascii_graphic() && *b != b' ') {
        n += 161.0;
    }
    f64::max(n, 2.0)
}

/// Length of the longest match of `s[i..]` with a stretch starting earlier (it may overlap
/// `i`, so one character repeated is a repeat).
fn longest_repeat(s: &[u8], i: usize) -> usize {
    (0..i)
        .map(|j| {
            s[i..]
                .iter()
                .zip(&s[j..])
                .take_while(|(a, b)| a == b)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Length of the word at `i`: a letter, then lowercase letters (`staple`, `Password`); a mix of
/// cases inside (`yBvQwLr`, random base64) is no word.
fn word_at(s: &[u8], i: usize) -> usize {
    match s.get(i) {
        Some(b) if b.is_ascii_alphabetic() => {
            1 + s[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_lowercase())
                .count()
        }
        _ => 0,
    }
}

/// Length of the run from `i` whose bytes step by one constant of at most 3 (`1234`, `aceg`,
/// `9876`); a repeated character is a repeat, not a run.
fn stepped_run(s: &[u8], i: usize) -> usize {
    let Some(step) = s.get(i + 1).map(|b| i16::from(*b) - i16::from(s[i])) else {
        return 1;
    };
    if step == 0 || step.abs() > 3 {
        return 1;
    }
    1 + s[i..]
        .windows(2)
        .take_while(|w| i16::from(w[1]) - i16::from(w[0]) == step)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guessable_secrets_are_refused_whatever_their_length() {
        let spaces = format!("{}x1234567", " ".repeat(40));
        for bad in [
            "short",
            "change-me-shared-by-all-replicas",
            "replace-me-with-32-random-bytes-please",
            &"a".repeat(64),
            "abababababababababababababababababab",
            // The probes of the hardening issue: long enough, distinct enough, still guessable.
            "01234567890123456789012345678901",
            "0123456789abcdef0123456789abcdef",
            "Password1Password1Password1Password1",
            &spaces,
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
            // Words: long and of several classes, but a dictionary attack names them.
            "tokenwise-production-secret-2024!",
            "correct horse battery staple now",
            "Correct-Horse-Battery-Staple-Mountain-River",
        ] {
            assert!(
                check_secret("decision secret", bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn random_secrets_pass() {
        for good in [
            "q7Vv1mZ3xKp0sT9wNcR2yLbH5uJdE8aG",
            // openssl rand -base64 32
            "3mI9kq1Fh0Zx2c8yBvQwLr7NtPa5sUeDgJ4oXnKiW6E=",
            // openssl rand -hex 16
            "9f2c4e1ab7d0835c6e21f49a0db7c358",
        ] {
            assert!(
                check_secret("decision secret", good.as_bytes()).is_ok(),
                "{good}"
            );
        }
        // Raw random bytes from a secret file.
        let raw: Vec<u8> = (0..32u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        assert!(
            estimated_bits(&raw) >= MIN_SECRET_BITS,
            "{}",
            estimated_bits(&raw)
        );
    }

    #[test]
    fn the_error_names_which_secret() {
        let e = check_secret(
            "previous decision secret",
            b"0123456789abcdef0123456789abcdef",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("the previous decision secret is guessable"),
            "{e}"
        );
    }
}
