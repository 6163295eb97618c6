//! Lossless text fields.
//!
//! Paths and arguments on Linux are bytes, not UTF-8. A field whose bytes are
//! valid UTF-8 is written as that string. Otherwise the field contains a readable
//! form in which each invalid byte appears as `\xHH`, and a sibling field named
//! `<FIELD>_B64` contains the exact bytes in standard base64 (RFC 4648, padded).
//! Consumers that need the bytes read `<FIELD>_B64` when it is present.
//!
//! Control characters need no treatment here: JSON escapes them, so one record
//! stays one line. Text output for people escapes them with [`escape_control`].

use base64::Engine;
use serde_json::{Map, Value};

/// Suffix of the sibling field that carries the raw bytes of a non-UTF-8 value.
pub const RAW_SUFFIX: &str = "_B64";

/// Stores `bytes` under `key`, adding `<key>_B64` when they are not UTF-8.
pub fn put_bytes(map: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            map.insert(key.to_owned(), Value::String(text.to_owned()));
        }
        Err(_) => {
            map.insert(key.to_owned(), Value::String(readable(bytes)));
            let raw = base64::engine::general_purpose::STANDARD.encode(bytes);
            map.insert(format!("{key}{RAW_SUFFIX}"), Value::String(raw));
        }
    }
}

/// Decodes a field written by [`put_bytes`] back to its exact bytes.
pub fn get_bytes(map: &Map<String, Value>, key: &str) -> Option<Vec<u8>> {
    if let Some(Value::String(raw)) = map.get(&format!("{key}{RAW_SUFFIX}")) {
        return base64::engine::general_purpose::STANDARD.decode(raw).ok();
    }
    match map.get(key) {
        Some(Value::String(text)) => Some(text.as_bytes().to_vec()),
        _ => None,
    }
}

/// Readable form of possibly invalid UTF-8: valid runs as they are, each
/// invalid byte as `\xHH`.
pub fn readable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// Escapes control characters (C0, DEL and C1) for terminal and table output,
/// so a hostile argument cannot move the cursor or start a new line.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_value_is_plain_string() {
        let mut map = Map::new();
        put_bytes(&mut map, "FILE_PATH", "/usr/bin/é".as_bytes());
        assert_eq!(map["FILE_PATH"], "/usr/bin/é");
        assert!(!map.contains_key("FILE_PATH_B64"));
    }

    #[test]
    fn invalid_utf8_round_trips() {
        let raw = b"/tmp/a\xff\xfeb";
        let mut map = Map::new();
        put_bytes(&mut map, "FILE_PATH", raw);
        assert_eq!(map["FILE_PATH"], "/tmp/a\\xff\\xfeb");
        assert_eq!(get_bytes(&map, "FILE_PATH").unwrap(), raw.to_vec());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
    }

    #[test]
    fn json_line_stays_one_line() {
        let mut map = Map::new();
        put_bytes(&mut map, "COMMAND_LINE", b"echo \"x\"\n\r\x1b");
        let line = serde_json::to_string(&map).unwrap();
        assert!(!line.contains('\n'));
        assert!(!line.contains('\r'));
        assert!(!line.contains('\x1b'));
    }
}
