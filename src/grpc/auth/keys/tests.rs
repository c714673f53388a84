//! Tests of the key file and the ring: validation and its messages, hashing and minting.

use super::*;
use crate::grpc::auth::AuthInterceptor;
use crate::grpc::auth::fixtures::{ADMIN_KEY, SERVICE_KEY, md, ring, ring_text};
use std::sync::Arc;

fn config_err(text: &str) -> (String, String) {
    match parse_keys(text).unwrap_err() {
        AuthConfigError::Invalid { path, reason, .. } => (path, reason),
        other => panic!("unexpected {other:?}"),
    }
}

fn entry(name: &str, team: &str, role: &str, sha256: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nteam = \"{team}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"\n"
    )
}

// ---- keys ----

#[test]
fn new_key_round_trip() {
    let (key, hash) = new_key();
    assert!(key.starts_with(KEY_PREFIX));
    assert_eq!(key.len(), KEY_PREFIX.len() + 43);
    let body = URL_SAFE_NO_PAD.decode(&key[KEY_PREFIX.len()..]).unwrap();
    assert_eq!(body.len(), 32);
    assert_eq!(hash, hash_key(&key));
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    let (other, _) = new_key();
    assert_ne!(key, other);

    let r = parse_keys(&entry("svc", "search", "service", &hash)).unwrap();
    let c = r.authenticate(&md(&format!("Bearer {key}"))).unwrap();
    assert_eq!(c.name, "svc");
    assert_eq!(c.team, "search");
    assert_eq!(c.role, Role::Service);
}

#[test]
fn hash_key_known_vector() {
    // printf %s abc | sha256sum
    assert_eq!(
        hash_key("abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn uppercase_hash_is_accepted() {
    let text = entry(
        "svc",
        "search",
        "service",
        &hash_key(SERVICE_KEY).to_uppercase(),
    );
    let r = parse_keys(&text).unwrap();
    assert_eq!(
        r.authenticate(&md(&format!("Bearer {SERVICE_KEY}")))
            .unwrap()
            .name,
        "svc"
    );
}

#[test]
fn debug_shows_no_key_material() {
    let r = ring();
    let d = format!("{r:?}");
    assert!(
        d.contains("search-prod") && d.contains("platform-ops"),
        "{d}"
    );
    assert!(d.contains("Service") && d.contains("Admin"), "{d}");
    for secret in [SERVICE_KEY, ADMIN_KEY] {
        let h = hash_key(secret);
        assert!(!d.contains(secret), "{d}");
        assert!(!d.contains(&h), "{d}");
        assert!(!d.contains(&h[..12]), "{d}");
    }
    let i = format!("{:?}", AuthInterceptor::new(Some(Arc::new(r))));
    assert!(!i.contains(&hash_key(SERVICE_KEY)[..12]), "{i}");
}

#[test]
fn ring_accessors() {
    let r = ring();
    assert_eq!(r.len(), 2);
    assert!(!r.is_empty());
    let names: Vec<&str> = r.callers().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["platform-ops", "search-prod"]);
}

// ---- config errors ----

#[test]
fn bad_hash_names_key_path() {
    let h1 = hash_key("a");
    let h2 = hash_key("b");
    let text = format!(
        "{}{}{}",
        entry("a", "t", "service", &h1),
        entry("b", "t", "service", &h2),
        entry("c", "t", "service", "abc123")
    );
    let (path, reason) = config_err(&text);
    assert_eq!(path, "keys[2].sha256");
    assert!(reason.starts_with("must be 64 hex characters"), "{reason}");
    let err = parse_keys(&text).unwrap_err().to_string();
    assert!(
        err.starts_with("keys[2].sha256: must be 64 hex characters"),
        "{err}"
    );
}

#[test]
fn non_hex_hash_is_rejected() {
    let bad = "g".repeat(64);
    let (path, reason) = config_err(&entry("a", "t", "service", &bad));
    assert_eq!(path, "keys[0].sha256");
    assert!(reason.contains("non-hex"), "{reason}");
    assert!(!reason.contains(&bad), "{reason}");
}

#[test]
fn hash_errors_are_exact() {
    // Pins the messages word for word: the decoder behind them may change, they may not.
    let hex64 = hash_key("k");
    assert_eq!(
        parse_sha256("abc123"),
        Err("must be 64 hex characters (the SHA-256 of the key), got 6 characters".into())
    );
    assert_eq!(
        parse_sha256(&hex64[..63]),
        Err("must be 64 hex characters (the SHA-256 of the key), got 63 characters".into())
    );
    assert_eq!(
        parse_sha256(&format!("{hex64}00")),
        Err("must be 64 hex characters (the SHA-256 of the key), got 66 characters".into())
    );
    assert_eq!(
        parse_sha256(""),
        Err("must be 64 hex characters (the SHA-256 of the key), got 0 characters".into())
    );
    let non_hex = "must be 64 hex characters (the SHA-256 of the key), got 64 characters \
                   including non-hex ones";
    assert_eq!(parse_sha256(&"g".repeat(64)), Err(non_hex.into()));
    assert_eq!(
        parse_sha256(&format!("{} ", &hex64[..63])),
        Err(non_hex.into())
    );
    // Multi-byte characters: counted as characters, and not hex.
    assert_eq!(
        parse_sha256(&format!("{}é", &hex64[..62])),
        Err(
            "must be 64 hex characters (the SHA-256 of the key), got 63 characters \
             including non-hex ones"
                .into()
        )
    );
    assert_eq!(
        parse_sha256(&format!("{}é", &hex64[..61])),
        Err(
            "must be 64 hex characters (the SHA-256 of the key), got 62 characters \
             including non-hex ones"
                .into()
        )
    );
    assert_eq!(
        parse_sha256("tw_abc"),
        Err(
            "looks like a key, not its hash: put the SHA-256 of the key here (`hash_key`, \
             or `printf %s \"$KEY\" | sha256sum`) and keep the key itself out of the file \
             (the 6-character value is not echoed)"
                .into()
        )
    );
    // Decodes both cases to the digest's bytes.
    let bytes: [u8; 32] = Sha256::digest(b"k").into();
    assert_eq!(parse_sha256(&hex64), Ok(bytes));
    assert_eq!(parse_sha256(&hex64.to_uppercase()), Ok(bytes));
}

#[test]
fn key_in_hash_field_is_rejected_without_echo() {
    let (key, _) = new_key();
    let (path, reason) = config_err(&entry("a", "t", "service", &key));
    assert_eq!(path, "keys[0].sha256");
    assert!(reason.contains("looks like a key"), "{reason}");
    assert!(!reason.contains(&key), "{reason}");
}

#[test]
fn duplicate_hash_is_rejected() {
    let h = hash_key("same");
    let text = format!(
        "{}{}",
        entry("a", "t", "service", &h),
        entry("b", "u", "admin", &h)
    );
    let (path, reason) = config_err(&text);
    assert_eq!(path, "keys[1].sha256");
    assert!(reason.contains("keys[0]"), "{reason}");
    // Same bytes, different case: still a duplicate.
    let text = format!(
        "{}{}",
        entry("a", "t", "service", &h),
        entry("b", "u", "admin", &h.to_uppercase())
    );
    assert_eq!(config_err(&text).0, "keys[1].sha256");
}

#[test]
fn duplicate_name_is_rejected() {
    let text = format!(
        "{}{}",
        entry("a", "t", "service", &hash_key("1")),
        entry("a", "u", "admin", &hash_key("2"))
    );
    let (path, reason) = config_err(&text);
    assert_eq!(path, "keys[1].name");
    assert!(reason.contains("keys[0]"), "{reason}");
}

#[test]
fn empty_team_and_name_are_rejected() {
    let h = hash_key("k");
    assert_eq!(config_err(&entry("a", "", "service", &h)).0, "keys[0].team");
    assert_eq!(
        config_err(&entry("a", "  ", "service", &h)).0,
        "keys[0].team"
    );
    assert_eq!(config_err(&entry("", "t", "service", &h)).0, "keys[0].name");
    let (path, reason) = config_err(&entry("a", " t", "service", &h));
    assert_eq!(path, "keys[0].team");
    assert!(reason.contains("whitespace"), "{reason}");
}

#[test]
fn bad_role_is_rejected() {
    let (path, reason) = config_err(&entry("a", "t", "Admin", &hash_key("k")));
    assert_eq!(path, "keys[0].role");
    assert!(
        reason.contains("\"service\" or \"admin\", got \"Admin\""),
        "{reason}"
    );
    let (path, reason) = config_err(&entry("a", "t", "tw_secret", &hash_key("k")));
    assert_eq!(path, "keys[0].role");
    assert!(!reason.contains("tw_secret"), "{reason}");
}

#[test]
fn unknown_field_is_rejected() {
    let text = format!(
        "{}key = \"tw_x\"\n",
        entry("a", "t", "service", &hash_key("k"))
    );
    let (path, reason) = config_err(&text);
    assert_eq!(path, "keys[0]");
    assert!(
        reason.contains("unknown field (its name is not shown"),
        "{reason}"
    );
    assert!(reason.contains("expected one of `name`"), "{reason}");
    // toml's Display would quote the source line, i.e. the key.
    assert!(reason.starts_with("line 6, column 1: "), "{reason}");
    assert!(!reason.contains("tw_x"), "{reason}");

    // A pasted key as a field name: shown neither in the path nor in the reason.
    let (path, reason) = config_err("tw_live_Zm9vYmFyYmF6 = true\n");
    assert_eq!(path, "<file>");
    assert!(
        !reason.contains("tw_live") && !path.contains("tw_live"),
        "{reason}"
    );
}

#[test]
fn missing_field_is_rejected() {
    let text = "[[keys]]\nname = \"a\"\nteam = \"t\"\nrole = \"service\"\n";
    let (path, reason) = config_err(text);
    assert_eq!(path, "keys[0]");
    assert!(reason.contains("missing field `sha256`"), "{reason}");
}

#[test]
fn empty_key_list_is_rejected() {
    for text in ["", "keys = []\n"] {
        let (path, reason) = config_err(text);
        assert_eq!(path, "keys", "{text:?}");
        assert!(reason.contains("at least one"), "{reason}");
    }
}

#[test]
fn toml_syntax_error_is_one_line() {
    let (path, reason) = config_err("[[keys]\nname = ");
    assert_eq!(path, "<file>");
    assert!(reason.starts_with("line 1, column 8: "), "{reason}");
    assert!(!reason.contains('\n'), "{reason}");
    // An unterminated string holding a key: the source line is not quoted.
    let text = "[[keys]]\nname = \"a\"\nsha256 = \"tw_secret\n";
    let (path, reason) = config_err(text);
    assert_eq!(path, "<file>");
    assert!(reason.starts_with("line 3, column "), "{reason}");
    assert!(!reason.contains("tw_secret"), "{reason}");
}

#[test]
fn type_errors_do_not_quote_string_values() {
    let (path, reason) = config_err("keys = \"tw_secret\"\n");
    assert_eq!(path, "keys");
    assert!(
        reason.contains("invalid type: string, expected"),
        "{reason}"
    );
    assert!(!reason.contains("tw_secret"), "{reason}");
    assert_eq!(
        redact_string_values(r#"invalid type: string "a\", b", expected x"#),
        "invalid type: string, expected x"
    );
    assert_eq!(redact_string_values("no strings here"), "no strings here");
}

#[test]
fn load_keys_reads_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("tokenwise-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("keys.toml");
    std::fs::write(&good, ring_text()).unwrap();
    assert_eq!(load_keys(&good).unwrap().len(), 2);

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, entry("a", "t", "root", &hash_key("k"))).unwrap();
    let e = load_keys(&bad).unwrap_err();
    assert_eq!(e.path(), Some("keys[0].role"));
    let msg = e.to_string();
    assert!(msg.contains("bad.toml: keys[0].role: "), "{msg}");

    let missing = dir.join("missing.toml");
    let e = load_keys(&missing).unwrap_err();
    assert!(matches!(e, AuthConfigError::Read { .. }), "{e:?}");
    assert_eq!(e.path(), None);
    assert!(e.to_string().contains("missing.toml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
