//! Build artifacts: the path rules a stored file's name obeys, the digests of its
//! manifest (MD5, SHA-256, SHA-512) fed in pieces, and the limits.

use md5::Md5;
use sha2_11::{Digest, Sha256, Sha512};

use crate::FieldError;

/// The longest artifact path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// The longest segment (file or directory name) of an artifact path, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;
/// The most files one build may hold.
pub const MAX_FILES_PER_BUILD: usize = 10_000;

/// A validated artifact path: relative, `/`-separated, no empty, `.` or `..` segment, no
/// NUL, backslash or other control character, within the length limits. Two files of one
/// build never share one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArtifactPath(String);

impl ArtifactPath {
    /// Checks `text`; the error names what is wrong, for a field `path`.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let refuse = |message: &str| Err(FieldError::new("path", message.to_owned()));
        if text.is_empty() {
            return refuse("must not be empty");
        }
        if text.len() > MAX_PATH_BYTES {
            return refuse(&format!("is longer than {MAX_PATH_BYTES} bytes"));
        }
        if text.starts_with('/') {
            return refuse("must be relative to the workspace, not absolute");
        }
        if text.contains('\0') {
            return refuse("must not contain NUL");
        }
        if text.contains('\\') {
            return refuse("must use '/' between directories, not '\\'");
        }
        if text.chars().any(char::is_control) {
            return refuse("must not contain control characters");
        }
        for segment in text.split('/') {
            match segment {
                "" => return refuse("must not contain an empty segment ('//' or a trailing '/')"),
                "." | ".." => return refuse("must not contain '.' or '..' segments"),
                _ if segment.len() > MAX_SEGMENT_BYTES => {
                    return refuse(&format!(
                        "has a segment longer than {MAX_SEGMENT_BYTES} bytes"
                    ));
                }
                _ => {}
            }
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name (last segment).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl std::fmt::Display for ArtifactPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `text` is a SHA-256 digest as Kiln writes it: 64 lowercase hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A file's digests, lowercase hex, with its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub md5: String,
    pub sha256: String,
    pub sha512: String,
}

/// MD5 and SHA-256 together: one of the two halves of a file's digests, hashed on two
/// threads (the other is [`Sha512Hasher`]).
#[derive(Clone, Default)]
pub struct Md5Sha256Hasher {
    md5: Md5,
    sha256: Sha256,
}

impl std::fmt::Debug for Md5Sha256Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5Sha256Hasher")
    }
}

impl Md5Sha256Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.md5.update(bytes);
        self.sha256.update(bytes);
    }

    /// (MD5, SHA-256), hex.
    pub fn finish(self) -> (String, String) {
        (
            hex::encode(self.md5.finalize()),
            hex::encode(self.sha256.finalize()),
        )
    }
}

/// SHA-512 alone (the other half).
#[derive(Clone, Default)]
pub struct Sha512Hasher(Sha512);

impl std::fmt::Debug for Sha512Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha512Hasher")
    }
}

impl Sha512Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// The SHA-256 a manifest records and the CRC-32 (the zlib/`gzip` one) a client may
/// confirm an upload with instead, in one pass.
#[derive(Clone, Default)]
pub struct Sha256Crc32Hasher {
    sha256: Sha256,
    crc32: crc32fast::Hasher,
}

impl std::fmt::Debug for Sha256Crc32Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256Crc32Hasher")
    }
}

impl Sha256Crc32Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        self.crc32.update(bytes);
    }

    /// (SHA-256 hex, CRC-32).
    pub fn finish(self) -> (String, u32) {
        (hex::encode(self.sha256.finalize()), self.crc32.finalize())
    }
}

/// A CRC-32 as the API writes it: 8 lowercase hex digits (`printf %08x`).
pub fn crc32_hex(crc32: u32) -> String {
    format!("{crc32:08x}")
}

/// A CRC-32 written as 8 hex digits (either case), or `None`.
pub fn parse_crc32_hex(text: &str) -> Option<u32> {
    (text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_and_plain() {
        for good in [
            "a",
            "dist/index.html",
            "node_modules/.bin/x",
            "a b/c-d_e.f",
            "ünï/çodé",
        ] {
            assert_eq!(ArtifactPath::parse(good).unwrap().as_str(), good);
        }
        for (bad, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a/./b", "'.'"),
            ("a//b", "empty segment"),
            ("dist/", "empty segment"),
            ("a\0b", "NUL"),
            ("a\\b", "'\\'"),
            ("a\nb", "control"),
        ] {
            let error = ArtifactPath::parse(bad).unwrap_err();
            assert_eq!(error.field, "path");
            assert!(error.message.contains(why), "{bad:?}: {}", error.message);
        }
        assert!(ArtifactPath::parse(&"a".repeat(256)).is_err());
        assert!(ArtifactPath::parse(&vec!["a".repeat(200); 6].join("/")).is_err());
        assert_eq!(
            ArtifactPath::parse("x/y/z.txt").unwrap().file_name(),
            "z.txt"
        );
    }

    #[test]
    fn the_crc32_is_the_zlib_one_and_reads_back() {
        // The check value of CRC-32/ISO-HDLC (zlib, gzip, `crc32`).
        let mut hasher = Sha256Crc32Hasher::default();
        hasher.update(b"1234");
        hasher.update(b"56789");
        let (sha256, crc32) = hasher.finish();
        assert_eq!(crc32, 0xcbf4_3926);
        assert_eq!(
            sha256,
            "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225"
        );
        assert_eq!(crc32_hex(crc32), "cbf43926");
        assert_eq!(crc32_hex(0x0000_00ff), "000000ff");
        assert_eq!(parse_crc32_hex("cbf43926"), Some(0xcbf4_3926));
        assert_eq!(parse_crc32_hex("CBF43926"), Some(0xcbf4_3926));
        for bad in [
            "",
            "cbf4392",
            "cbf439260",
            "xbf43926",
            "+bf43926",
            " cbf4392",
        ] {
            assert_eq!(parse_crc32_hex(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn digests_are_the_standard_ones_whatever_the_pieces() {
        // Known answers for "abc" (RFC 1321, FIPS 180-2).
        let mut half = Md5Sha256Hasher::default();
        half.update(b"a");
        half.update(b"");
        half.update(b"bc");
        let (md5, sha256) = half.finish();
        assert_eq!(md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut other = Sha512Hasher::default();
        other.update(b"ab");
        other.update(b"c");
        assert!(other.finish().starts_with("ddaf35a193617aba"));
        assert!(is_sha256_hex(&sha256));
        assert!(!is_sha256_hex(&sha256.to_uppercase()));
        assert!(!is_sha256_hex("abc"));
        let mut with_crc32 = Sha256Crc32Hasher::default();
        with_crc32.update(b"abc");
        assert_eq!(with_crc32.finish().0, sha256);
    }
}
