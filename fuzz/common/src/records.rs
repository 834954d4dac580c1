//! The input format of the targets that take a sequence (files in the order a refresh asks
//! for them, calls to a Secondary, responses of a server): records of a tag byte, a
//! little-endian `u16` length and that many bytes. A record cut short takes what is left.

/// At most this many records are read from one input: every sequence is bounded.
pub const MAX_RECORDS: usize = 64;

/// The records of `data`, at most [`MAX_RECORDS`].
pub fn parse(data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while let [tag, rest_after_tag @ ..] = rest {
        if out.len() == MAX_RECORDS {
            break;
        }
        let (len, body) = match rest_after_tag {
            [lo, hi, body @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), body),
            short => (short.len(), &short[short.len()..]),
        };
        let len = len.min(body.len());
        out.push((*tag, &body[..len]));
        rest = &body[len..];
    }
    out
}

/// `records` in the format [`parse`] reads (each body cut at `u16::MAX` bytes).
pub fn encode(records: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in records {
        let body = &body[..body.len().min(usize::from(u16::MAX))];
        out.push(*tag);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records: Vec<(u8, &[u8])> = vec![(1, b"abc"), (7, b""), (255, b"xyz")];
        assert_eq!(parse(&encode(&records)), records);
    }

    #[test]
    fn a_short_record_takes_what_is_left() {
        assert_eq!(parse(&[3, 10, 0, b'a']), vec![(3, &b"a"[..])]);
        assert_eq!(parse(&[3, 10]), vec![(3, &b""[..])]);
    }
}
