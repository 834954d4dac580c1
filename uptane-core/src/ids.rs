//! Identifiers that cross trust boundaries, as types: a VIN, an ECU serial and a hardware id
//! are all short strings, and a function taking three `&str` lets a caller swap them without
//! a compiler noticing. Each is 1 to 64 characters of `A-Z a-z 0-9 . _ : -`, checked once
//! when it is made (and when it is read from JSON); after that it is known good.
//!
//! ```
//! use uptane_core::ids::{EcuSerial, Vin};
//!
//! let vin: Vin = "WVWZZZ1JZXW000001".parse().unwrap();
//! assert_eq!(vin.as_str(), "WVWZZZ1JZXW000001");
//! assert!("ECU 1".parse::<EcuSerial>().is_err());
//! ```

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: 1-64 characters of A-Z a-z 0-9 . _ : -")]
pub struct IdError {
    /// Which kind of identifier.
    pub kind: &'static str,
    /// The refused text (cut to 80 characters).
    pub value: String,
}

fn check(kind: &'static str, text: &str) -> Result<(), IdError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdError {
            kind,
            value: text.chars().take(80).collect(),
        })
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `text` and wraps it.
            pub fn new(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                check($kind, &text)?;
                Ok(Self(text))
            }

            /// The identifier.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::new(text)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::new(text).map_err(serde::de::Error::custom)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

identifier!(
    /// A vehicle identification number (or any fleet-unique vehicle identifier).
    Vin,
    "VIN"
);
identifier!(
    /// An ECU serial, unique in the fleet.
    EcuSerial,
    "ECU serial"
);
identifier!(
    /// A hardware id: which images an ECU can run.
    HardwareId,
    "hardware id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_identifier_alphabet() {
        for good in ["A", "VIN-1.2_3:x", &"a".repeat(64)] {
            Vin::new(good).unwrap();
        }
        for bad in ["", "with space", "slash/", "ü", &"a".repeat(65), "a\0"] {
            let err = HardwareId::new(bad).unwrap_err();
            assert_eq!(err.kind, "hardware id");
        }
        assert!(serde_json::from_str::<EcuSerial>("\"../x\"").is_err());
        let serial: EcuSerial = serde_json::from_str("\"ECU-1\"").unwrap();
        assert_eq!(serde_json::to_string(&serial).unwrap(), "\"ECU-1\"");
    }
}

/// Why a target name is refused (Uptane G-4: names are compared byte for byte, so two
/// spellings of one name, or names hiding control characters, could make an operator, a
/// log or a file system see another image than the metadata names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetNameError {
    /// Empty, or longer than [`MAX_TARGET_NAME_BYTES`].
    #[error("target name of {0} bytes: 1 to 1024 allowed")]
    Length(usize),
    /// A control character (C0, DEL or C1), or an invisible one that changes what is shown
    /// (format characters such as bidirectional overrides and zero-width joiners, line and
    /// paragraph separators, private use, noncharacters).
    #[error("target name {0:?} contains a control or invisible character")]
    Control(String),
    /// A backslash, or an empty, `.` or `..` path segment.
    #[error(
        "target name {0:?} is not a plain relative path (no \\, and no empty, . or .. segment)"
    )]
    Path(String),
    /// Not in Unicode normalization form C, so another byte string spells the same name.
    #[error("target name {0:?} is not in Unicode normalization form C")]
    NotNfc(String),
    /// A path segment longer than a file name may be where the name is stored: 255 bytes
    /// for a directory, and for the file itself with the `<digest hex>.` prefix it is stored
    /// and fetched under for each digest listed (consistent snapshots). Not part of the rule
    /// every client applies (other repositories store names otherwise): the Image
    /// repository's, when it publishes.
    #[error("target name {0:?} has a segment longer than a file name may be ({1} bytes)")]
    SegmentLength(String, usize),
}

/// Characters a reader does not see but that change what is shown or compared: Unicode's
/// format characters (Cf: bidirectional controls, zero-width characters, the byte-order
/// mark, tags, ...), line and paragraph separators, private use, and noncharacters.
/// Whether `c` is a character that shows nothing or changes how what follows is shown
/// (format, bidirectional and private-use characters, noncharacters): refused in target
/// names, and never sent to an operator's terminal.
pub fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{FEFF}'
        | '\u{0600}'..='\u{0605}' | '\u{06DD}' | '\u{070F}' | '\u{08E2}'
        | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}'
        | '\u{FDD0}'..='\u{FDEF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E000}'..='\u{F8FF}'
        | '\u{110BD}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}'
        | '\u{F0000}'..='\u{10FFFF}')
        || (c as u32 & 0xFFFE) == 0xFFFE
}

/// The longest target name accepted, in bytes.
pub const MAX_TARGET_NAME_BYTES: usize = 1024;

/// Checks a target name: 1 to 1024 bytes, no control characters, a plain relative path,
/// in Unicode normalization form C. The one rule the Image repository applies when it
/// publishes and every client applies when it reads targets.
pub fn check_target_name(name: &str) -> Result<(), TargetNameError> {
    let shown = || name.chars().take(80).collect::<String>();
    if name.is_empty() || name.len() > MAX_TARGET_NAME_BYTES {
        return Err(TargetNameError::Length(name.len()));
    }
    if name.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(TargetNameError::Control(shown()));
    }
    if name.contains('\\')
        || name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(TargetNameError::Path(shown()));
    }
    if !unicode_normalization::is_nfc(name) {
        return Err(TargetNameError::NotNfc(shown()));
    }
    Ok(())
}

#[cfg(test)]
mod target_name_tests {
    use super::*;

    #[test]
    fn target_names_are_plain_visible_and_normalized() {
        for good in [
            "brake-2.bin",
            "acme/ctl-1.4.bin",
            "café/ü.bin",
            "日本/画像.bin",
        ] {
            assert_eq!(check_target_name(good), Ok(()), "{good}");
        }
        assert_eq!(check_target_name(""), Err(TargetNameError::Length(0)));
        assert!(matches!(
            check_target_name(&"a".repeat(1025)),
            Err(TargetNameError::Length(1025))
        ));
        for control in [
            "a\u{0}b",
            "bin\n",
            "x\u{1b}[31m.bin",
            "a\u{7f}",
            "a\u{85}b",
            // Shown as "fw-exe.bin".
            "fw-\u{202E}nib.exe",
            "a\u{200B}b",
            "\u{FEFF}a",
            "a\u{2028}b",
            "a\u{E000}",
            "a\u{FFFF}",
        ] {
            assert!(
                matches!(check_target_name(control), Err(TargetNameError::Control(_))),
                "{control:?}"
            );
        }
        for path in ["/abs.bin", "a//b", "a/./b", "../up.bin", "a\\b", "dir/"] {
            assert!(
                matches!(check_target_name(path), Err(TargetNameError::Path(_))),
                "{path:?}"
            );
        }
        // "é" as e + combining acute (NFD): the same name as "café" to a reader.
        assert!(matches!(
            check_target_name("cafe\u{301}.bin"),
            Err(TargetNameError::NotNfc(_))
        ));
    }
}
