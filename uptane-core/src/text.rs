//! Free text taken from a source that is not trusted (an attacker's nonce quoted in an
//! attack's detail, a server's answer, a refused manifest's reason), kept in a bounded form:
//! one rule for what an ECU reports in words and what the Director writes to its event log.

use std::borrow::Cow;

/// Whether a kept text may hold line breaks (the Director's event details do; an ECU's
/// one-line words do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineBreaks {
    /// `\n` stays.
    Keep,
    /// `\n` is replaced like every other control character.
    Replace,
}

/// `text` with every control character (but `\n` where `line_breaks` keeps it) made
/// `\u{FFFD}`, then, if that is longer than `max_bytes`, cut on a character boundary and
/// ended with a note of its full length, the whole at most `max_bytes` (which must leave room
/// for the note, about 30 bytes). A control character would let its sender forge log lines or
/// carry a NUL that PostgreSQL refuses; the bound keeps whatever quotes it bounded.
pub fn bounded(text: &str, max_bytes: usize, line_breaks: LineBreaks) -> Cow<'_, str> {
    let replaced = |c: char| c.is_control() && !(line_breaks == LineBreaks::Keep && c == '\n');
    if text.len() <= max_bytes && !text.chars().any(replaced) {
        return Cow::Borrowed(text);
    }
    let mut kept = String::with_capacity(max_bytes.min(text.len()));
    for c in text.chars() {
        let c = if replaced(c) { '\u{FFFD}' } else { c };
        if kept.len() + c.len_utf8() > max_bytes {
            let note = format!("… ({} bytes, cut)", text.len());
            while kept.len() + note.len() > max_bytes && kept.pop().is_some() {}
            kept.push_str(&note);
            return Cow::Owned(kept);
        }
        kept.push(c);
    }
    Cow::Owned(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn text_that_fits_and_holds_no_control_character_is_kept_as_it_is() {
        assert!(matches!(
            bounded("nonce \"ab\"", 64, LineBreaks::Replace),
            Cow::Borrowed("nonce \"ab\"")
        ));
        assert!(matches!(
            bounded("a\nb", 64, LineBreaks::Keep),
            Cow::Borrowed("a\nb")
        ));
    }

    #[test]
    fn control_characters_are_replaced_and_line_breaks_kept_only_when_asked() {
        let text = "a\u{0}b\u{1b}[31mc\nd";
        assert_eq!(
            bounded(text, 64, LineBreaks::Keep),
            "a\u{FFFD}b\u{FFFD}[31mc\nd"
        );
        assert_eq!(
            bounded(text, 64, LineBreaks::Replace),
            "a\u{FFFD}b\u{FFFD}[31mc\u{FFFD}d"
        );
    }

    #[test]
    fn a_long_text_is_cut_on_a_character_boundary_with_its_length() {
        let long = format!("{}é{}", "x".repeat(40), "y".repeat(4 << 20));
        let note = format!("… ({} bytes, cut)", long.len());
        let cut = bounded(&long, 41 + note.len(), LineBreaks::Replace);
        assert_eq!(cut, format!("{}{note}", "x".repeat(40)));
    }

    proptest! {
        /// Whatever the text (NULs, which grow to three bytes each, included), what is kept
        /// fits, holds no control character but the line breaks kept, and is the text itself
        /// when that already was so.
        #[test]
        fn what_is_kept_fits_and_holds_no_control_character(
            text in "(\\PC|[\u{0}-\u{1f}\u{7f}]){0,300}",
            max in 40usize..600,
            keep in any::<bool>(),
        ) {
            let line_breaks = if keep { LineBreaks::Keep } else { LineBreaks::Replace };
            let kept = bounded(&text, max, line_breaks);
            prop_assert!(kept.len() <= max, "{} > {max}", kept.len());
            prop_assert!(kept.chars().all(|c| !c.is_control() || (keep && c == '\n')));
            if text.len() <= max && text.chars().all(|c| !c.is_control() || (keep && c == '\n')) {
                prop_assert_eq!(kept.as_ref(), text.as_str());
            }
        }
    }
}
