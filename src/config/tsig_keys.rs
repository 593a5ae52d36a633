//! TSIG key files (`--transfer-key`), in the format BIND's `tsig-keygen` writes and NSD, Knot
//! and BIND administrators already hold:
//!
//! ```text
//! key "transfer" {
//!     algorithm hmac-sha256;
//!     secret "base64...";
//! };
//! ```
//!
//! One file may hold several keys. `#` and `//` start comments.

use std::path::Path;

use data_encoding::BASE64;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::{Name, TSigner};

use crate::bounded;

/// Largest key file read: a few keys take a few hundred bytes.
const MAX_FILE: u64 = 64 * 1024;

/// How far a signature's time may be from our clock (RFC 8945 §10 recommends 300 s).
const FUDGE: u16 = 300;

/// Reads every key in the file at `path`.
pub fn read_keys(path: &Path) -> Result<Vec<TSigner>, String> {
    let text = bounded::read_text(path, MAX_FILE).map_err(|e| e.to_string())?;
    parse(&text)
}

fn parse(text: &str) -> Result<Vec<TSigner>, String> {
    let tokens = tokens(text);
    let mut tokens = tokens.iter().map(String::as_str).peekable();
    let mut keys = Vec::new();
    while let Some(token) = tokens.next() {
        if token != "key" {
            return Err(format!("expected `key`, found {token:?}"));
        }
        let name = tokens.next().ok_or("`key` without a name")?;
        if tokens.next() != Some("{") {
            return Err(format!("key {name:?}: expected `{{`"));
        }
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match tokens.next() {
                Some("}") => break,
                Some("algorithm") => algorithm = tokens.next(),
                Some("secret") => secret = tokens.next(),
                other => return Err(format!("key {name:?}: unexpected {other:?}")),
            }
            if tokens.next() != Some(";") {
                return Err(format!("key {name:?}: expected `;`"));
            }
        }
        if tokens.peek() == Some(&";") {
            tokens.next();
        }
        let algorithm = algorithm.ok_or_else(|| format!("key {name:?} has no algorithm"))?;
        let algorithm = match algorithm.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(format!(
                    "key {name:?}: algorithm {other} is not supported (use hmac-sha256)"
                ));
            }
        };
        let secret = secret.ok_or_else(|| format!("key {name:?} has no secret"))?;
        let secret = BASE64
            .decode(secret.as_bytes())
            .map_err(|e| format!("key {name:?}: the secret is not base64: {e}"))?;
        let key_name = Name::from_ascii(name).map_err(|e| format!("key {name:?}: {e}"))?;
        let signer = TSigner::new(secret, algorithm, key_name, FUDGE)
            .map_err(|e| format!("key {name:?}: {e}"))?;
        keys.push(signer);
    }
    if keys.is_empty() {
        return Err("no `key` in the file".into());
    }
    Ok(keys)
}

/// Words, quoted strings (without their quotes) and the punctuation `{`, `}` and `;`.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let line = line.split("//").next().unwrap_or_default();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' | '}' | ';' => out.push(c.to_string()),
                '"' => out.push(chars.by_ref().take_while(|&c| c != '"').collect()),
                c if c.is_whitespace() => {}
                c => {
                    let mut word = c.to_string();
                    while let Some(&n) = chars.peek() {
                        if n.is_whitespace() || "{};\"".contains(n) {
                            break;
                        }
                        word.push(n);
                        chars.next();
                    }
                    out.push(word);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_tsig_keygen_writes() {
        let text = "# made by tsig-keygen\nkey \"transfer\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\nkey other { algorithm HMAC-SHA512; secret \"c2VjcmV0\"; };\n";
        let keys = parse(text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].signer_name().to_ascii(), "transfer.");
        assert_eq!(keys[0].key(), b"secret");
        assert_eq!(*keys[1].algorithm(), TsigAlgorithm::HmacSha512);
        for bad in [
            "",
            "key x { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
            "key x { algorithm hmac-sha256; };",
            "key x { algorithm hmac-sha256; secret \"not base64!\"; };",
            "zone x {};",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
